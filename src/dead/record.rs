//! The export format of `warren dead purge --export` (and `show --json`):
//! one JSON object per message with its queue, every property, every header
//! and its body, byte for byte; `warren dead import` reads it back.
//!
//! The body is embedded as JSON when it is a JSON document on one line
//! (kept verbatim, so the bytes survive), else as standard base64 in
//! `body_base64`. Header values map to JSON as strings, integers, floats,
//! booleans, `null`, arrays and objects; the AMQP types JSON lacks are
//! one-key objects: `{"$timestamp": secs}`, `{"$bytes": base64}` (a byte
//! array), `{"$binary": base64}` (a string that is not UTF-8),
//! `{"$decimal": [scale, value]}`, `{"$float": f}`. Integers come back as 64-bit (`l`) whatever their width.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::parked::Parked;
use crate::event::headers::without_expiration;

/// One exported message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The `.dead` queue it was taken from (and goes back to on import).
    pub queue: String,
    /// The summary `list` shows, for people reading the file (ignored on import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
    pub properties: Properties,
    #[serde(default)]
    pub headers: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// The AMQP basic properties but headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// A line of an export that cannot be imported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(String);

impl Record {
    /// The record of a message of `queue` (without `x-delivery-count`).
    #[must_use]
    pub fn of(queue: &str, props: &BasicProperties, body: &[u8]) -> Self {
        // The broker's delivery count is its bookkeeping, not the message's.
        let props = &super::rotate::copy_properties(props);
        let headers = props.headers().as_ref().map(table_to_json).unwrap_or_default();
        let (body_json, body_base64) = match one_line_json(body) {
            Some(raw) => (Some(raw), None),
            None => (None, Some(STANDARD.encode(body))),
        };
        Self {
            queue: queue.to_owned(),
            summary: serde_json::to_value(Parked::read(queue, props, body)).ok(),
            properties: Properties::of(props),
            headers,
            body: body_json,
            body_base64,
        }
    }

    /// The body bytes and properties to publish back, without `expiration`
    /// (its value goes to the `x-warren-original-expiration` header).
    ///
    /// # Errors
    ///
    /// [`RecordError`] naming what is wrong (no body, both bodies, bad base64,
    /// a header value of no AMQP type).
    pub fn to_message(&self) -> Result<(Vec<u8>, BasicProperties), RecordError> {
        let body = match (&self.body, &self.body_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(b64)) => STANDARD
                .decode(b64)
                .map_err(|e| RecordError(format!("body_base64 is not base64: {e}")))?,
            _ => return Err(RecordError("needs exactly one of `body` and `body_base64`".into())),
        };
        let headers = json_to_table(&self.headers)?;
        // An imported message is a parked copy: it must not expire.
        let props = without_expiration(&self.properties.to_amqp().with_headers(headers));
        Ok((body, props))
    }
}

/// The body as raw JSON when it is one JSON document without a line break
/// (a line break would split the JSON line).
fn one_line_json(body: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(body).ok()?;
    if text.contains(['\n', '\r']) {
        return None;
    }
    let raw: Box<RawValue> = serde_json::from_str(text).ok()?;
    // RawValue trims surrounding whitespace: only exact bodies qualify.
    (raw.get().len() == text.len()).then_some(raw)
}

impl Properties {
    fn of(p: &BasicProperties) -> Self {
        let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        Self {
            content_type: s(p.content_type()),
            content_encoding: s(p.content_encoding()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            correlation_id: s(p.correlation_id()),
            reply_to: s(p.reply_to()),
            expiration: s(p.expiration()),
            message_id: s(p.message_id()),
            timestamp: *p.timestamp(),
            kind: s(p.kind()),
            user_id: s(p.user_id()),
            app_id: s(p.app_id()),
            cluster_id: s(p.cluster_id()),
        }
    }

    fn to_amqp(&self) -> BasicProperties {
        let mut p = BasicProperties::default();
        let s = |v: &str| ShortString::from(v);
        if let Some(v) = &self.content_type {
            p = p.with_content_type(s(v));
        }
        if let Some(v) = &self.content_encoding {
            p = p.with_content_encoding(s(v));
        }
        if let Some(v) = self.delivery_mode {
            p = p.with_delivery_mode(v);
        }
        if let Some(v) = self.priority {
            p = p.with_priority(v);
        }
        if let Some(v) = &self.correlation_id {
            p = p.with_correlation_id(s(v));
        }
        if let Some(v) = &self.reply_to {
            p = p.with_reply_to(s(v));
        }
        if let Some(v) = &self.expiration {
            p = p.with_expiration(s(v));
        }
        if let Some(v) = &self.message_id {
            p = p.with_message_id(s(v));
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        if let Some(v) = &self.kind {
            p = p.with_type(s(v));
        }
        if let Some(v) = &self.user_id {
            p = p.with_user_id(s(v));
        }
        if let Some(v) = &self.app_id {
            p = p.with_app_id(s(v));
        }
        if let Some(v) = &self.cluster_id {
            p = p.with_cluster_id(s(v));
        }
        p
    }
}

/// Headers as a JSON object (see the module docs for the mapping).
#[must_use]
pub fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect()
}

fn bytes_to_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "$binary": STANDARD.encode(b) }),
    }
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(f) => json!({ "$float": f }),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!({ "$decimal": [d.scale, d.value] }),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => json!({ "$timestamp": t }),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => json!({ "$bytes": STANDARD.encode(b.as_slice()) }),
        AMQPValue::Void => Value::Null,
    }
}

fn json_to_table(m: &Map<String, Value>) -> Result<FieldTable, RecordError> {
    let mut t = FieldTable::default();
    for (k, v) in m {
        // AMQP field names are short strings: at most 255 bytes.
        if k.len() > 255 {
            let start = crate::event::truncate(k, 40);
            return Err(RecordError(format!("header name {start:?}… is over 255 bytes")));
        }
        let name = ShortString::from(k.as_str());
        t.insert(
            name,
            json_to_value(v).map_err(|e| RecordError(format!("header {k:?}: {}", e.0)))?,
        );
    }
    Ok(t)
}

fn json_to_value(v: &Value) -> Result<AMQPValue, RecordError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) if n.is_f64() => AMQPValue::Double(f),
            _ => return Err(RecordError(format!("{n} does not fit a signed 64-bit integer"))),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_value).collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(o) => tagged(o)?.map_or_else(|| json_to_table(o).map(AMQPValue::FieldTable), Ok)?,
    })
}

/// The value of a one-key `{"$type": …}` object, `None` for a plain table.
fn tagged(o: &Map<String, Value>) -> Result<Option<AMQPValue>, RecordError> {
    let mut it = o.iter();
    let (Some((k, v)), None) = (it.next(), it.next()) else {
        return Ok(None);
    };
    let bad = || RecordError(format!("{k}: {v} is not a valid value"));
    Ok(Some(match k.as_str() {
        "$timestamp" => AMQPValue::Timestamp(v.as_u64().ok_or_else(bad)?),
        "$bytes" => {
            let b = STANDARD.decode(v.as_str().ok_or_else(bad)?).map_err(|_| bad())?;
            AMQPValue::ByteArray(b.into())
        }
        #[allow(clippy::cast_possible_truncation)]
        "$binary" => {
            let b = STANDARD.decode(v.as_str().ok_or_else(bad)?).map_err(|_| bad())?;
            AMQPValue::LongString(b.into())
        }
        "$float" => AMQPValue::Float(v.as_f64().ok_or_else(bad)? as f32),
        "$decimal" => {
            let (scale, value) = serde_json::from_value::<(u8, u32)>(v.clone()).map_err(|_| bad())?;
            AMQPValue::DecimalValue(DecimalValue { scale, value })
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_headers() -> FieldTable {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        death.insert("queue".into(), AMQPValue::LongString("s.user.login".into()));
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        h.insert("x-warren-reason".into(), AMQPValue::LongString("exhausted".into()));
        h.insert("raw".into(), AMQPValue::LongString(b"\xff\x00".to_vec().into()));
        h.insert("flag".into(), AMQPValue::Boolean(true));
        h.insert("ratio".into(), AMQPValue::Double(0.5));
        h.insert("none".into(), AMQPValue::Void);
        h.insert("bytes".into(), AMQPValue::ByteArray(b"ab".to_vec().into()));
        h.insert(
            "dec".into(),
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1234 }),
        );
        h
    }

    fn roundtrip(props: &BasicProperties, body: &[u8]) -> (Vec<u8>, BasicProperties, String) {
        let line = serde_json::to_string(&Record::of("s.user.login.dead", props, body)).unwrap();
        assert!(!line.contains('\n'));
        let back: Record = serde_json::from_str(&line).unwrap();
        let (b, p) = back.to_message().unwrap();
        (b, p, line)
    }

    #[test]
    fn a_json_body_and_every_header_survive_byte_for_byte() {
        let props = BasicProperties::default()
            .with_headers(sample_headers())
            .with_message_id("id-1".into())
            .with_type("user.login".into())
            .with_timestamp(1_700_000_000)
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_app_id("django".into());
        let body = br#"{"b": 1,  "a":[1, 2]}"#;
        let (b, p, line) = roundtrip(&props, body);
        assert_eq!(b, body);
        assert_eq!(p, props);
        assert!(line.contains(r#""body":{"b": 1,  "a":[1, 2]}"#), "{line}");
        assert!(line.contains(r#""x-warren-reason":"exhausted""#), "{line}");
    }

    #[test]
    fn other_bodies_go_as_base64() {
        for body in [&b"\xff\xfe not utf-8"[..], b"{\"a\":\n1}", b" {} ", b"not json", b""] {
            let (b, _, line) = roundtrip(&BasicProperties::default(), body);
            assert_eq!(b, body);
            assert!(line.contains("body_base64"), "{line}");
        }
    }

    #[test]
    fn an_imported_record_carries_no_expiration() {
        let line = r#"{"queue":"q.dead","properties":{"expiration":"4000","message_id":"m"},"body":{}}"#;
        let (_, p) = serde_json::from_str::<Record>(line).unwrap().to_message().unwrap();
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("m"));
        let original = crate::event::headers::text(&p, crate::event::headers::ORIGINAL_EXPIRATION);
        assert_eq!(original.as_deref(), Some("4000"));
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let no_body = r#"{"queue":"q.dead","properties":{}}"#;
        let r: Record = serde_json::from_str(no_body).unwrap();
        assert!(r.to_message().unwrap_err().to_string().contains("exactly one"));
        let bad_b64 = r#"{"queue":"q.dead","properties":{},"body_base64":"%%"}"#;
        let r: Record = serde_json::from_str(bad_b64).unwrap();
        assert!(r.to_message().unwrap_err().to_string().contains("base64"));
        let huge = r#"{"queue":"q.dead","properties":{},"body":{},"headers":{"n":18446744073709551615}}"#;
        let r: Record = serde_json::from_str(huge).unwrap();
        assert!(r.to_message().unwrap_err().to_string().contains("\"n\""));
        assert!(serde_json::from_str::<Record>(r#"{"queue":"q","properties":{},"extra":1}"#).is_err());
    }
}
