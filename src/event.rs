//! Typed `user.*` events and the JSON envelope they travel in (the wire contract).
//!
//! Every message body is an [`Envelope`]: `event_id`, `event_type`, `timestamp`,
//! `source`, `user_id` and the event's `data`. `event_id` and `timestamp` are
//! optional on input (payloads written before warren have neither) and filled
//! in on parse. Unknown fields are ignored.
//!
//! What is accepted, every language can read the same way: the envelope and
//! `data` are JSON objects (serde alone would take positional arrays),
//! timestamps are strict RFC 3339 ([`timestamp`]), the nil UUID is no
//! `event_id`, and the body is checked for what other JSON parsers refuse or
//! change ([`portable`]: nesting, lone surrogates, numbers, UTF-8).
//!
//! The rest of what a message looks like on the wire lives here too: the
//! AMQP properties every event carries ([`properties`]), the `x-warren-*`
//! headers warren puts on retried and parked copies and reads back
//! ([`headers`]), and the reasons a message is parked.
//!
//! # Adding an event type
//!
//! One struct and one line. Define the payload and implement [`Event`]:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use warren::event::{Event, ValidationError};
//! use warren::schemars::JsonSchema;
//!
//! /// A password reset was asked for.
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! #[schemars(crate = "warren::schemars")]
//! pub struct UserPasswordReset {
//!     pub user_id: i64,
//!     // Strict RFC 3339, as other languages read it (and written fast).
//!     #[serde(
//!         serialize_with = "warren::event::timestamp::serialize",
//!         deserialize_with = "warren::event::timestamp::deserialize"
//!     )]
//!     pub requested_at: chrono::DateTime<chrono::Utc>,
//! }
//!
//! impl Event for UserPasswordReset {
//!     const TYPE: &'static str = "user.password_reset";
//!     fn user_id(&self) -> i64 { self.user_id }
//! }
//! ```
//!
//! then add `$crate::event::UserPasswordReset` to the list in
//! [`for_each_event_type!`](crate::for_each_event_type) so the CLI, the
//! ingress, the topology and the built-in handlers know it. Consumers handle
//! it with `.on(|e: Envelope<UserPasswordReset>, ctx| …)`.
//!
//! The derived `JsonSchema` is the type's published contract (`warren
//! schema`, `warren asyncapi`): doc comments become its descriptions, and
//! checks made in `validate()` are declared with `#[schemars(schema_with =
//! …)]` using [`crate::schema`]'s patterns where JSON Schema can say them.

pub mod headers;
mod object;
pub mod portable;
pub mod properties;
mod reason;
pub mod timestamp;

pub(crate) use reason::DeadReason;

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, SubsecRound, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A typed event payload: the `data` object of an [`Envelope`].
pub trait Event: Serialize + DeserializeOwned + JsonSchema + fmt::Debug + Clone + Send + Sync + 'static {
    /// The event type, also the routing key: `user.registered`.
    const TYPE: &'static str;

    /// The `user_id` inside `data`, which must equal the envelope's.
    fn user_id(&self) -> i64;

    /// Checks beyond what the types enforce.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the offending field.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

/// `user.registered`: a new account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistered {
    /// Equal to the envelope's `user_id`.
    pub user_id: i64,
    /// Not blank.
    #[schemars(schema_with = "crate::schema::not_blank")]
    pub username: String,
    #[schemars(schema_with = "crate::schema::email")]
    pub email: String,
    /// RFC 3339.
    #[serde(serialize_with = "timestamp::serialize", deserialize_with = "timestamp::deserialize")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub registration_timestamp: DateTime<Utc>,
}

impl Event for UserRegistered {
    const TYPE: &'static str = "user.registered";

    fn user_id(&self) -> i64 {
        self.user_id
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if is_blank(&self.username) {
            return Err(ValidationError::new("data.username", "must not be empty"));
        }
        if !looks_like_email(&self.email) {
            return Err(ValidationError::new(
                "data.email",
                format!("{:?} is not an e-mail address", truncate(&self.email, 64)),
            ));
        }
        Ok(())
    }
}

/// `user.login`: a successful sign-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserLogin {
    /// Equal to the envelope's `user_id`.
    pub user_id: i64,
    pub username: String,
    #[schemars(schema_with = "crate::schema::email")]
    pub email: String,
    /// RFC 3339.
    #[serde(serialize_with = "timestamp::serialize", deserialize_with = "timestamp::deserialize")]
    #[schemars(schema_with = "crate::schema::date_time")]
    pub login_timestamp: DateTime<Utc>,
    /// IPv4 or IPv6; anything else fails to parse.
    #[serde(deserialize_with = "ip_address")]
    #[schemars(schema_with = "crate::schema::ip_address")]
    pub ip_address: IpAddr,
}

/// An IP address from a string; the error quotes the value (shortened), as
/// those of the e-mail and timestamp fields do.
fn ip_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = IpAddr;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an IPv4 or IPv6 address as a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IpAddr, E> {
            v.parse()
                .map_err(|_| E::custom(format!("{:?} is not an IPv4 or IPv6 address", truncate(v, 64))))
        }
    }
    d.deserialize_str(Visitor)
}

impl Event for UserLogin {
    const TYPE: &'static str = "user.login";

    fn user_id(&self) -> i64 {
        self.user_id
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if !looks_like_email(&self.email) {
            return Err(ValidationError::new(
                "data.email",
                format!("{:?} is not an e-mail address", truncate(&self.email, 64)),
            ));
        }
        Ok(())
    }
}

/// The one list of event types warren knows. It calls `$callback!` with
/// every type; [`EVENT_TYPES`] and the consumer's built-in handlers are made
/// from it. A new type is one more entry here.
#[macro_export]
macro_rules! for_each_event_type {
    ($callback:ident) => {
        $callback!($crate::event::UserRegistered, $crate::event::UserLogin)
    };
}

macro_rules! event_type_list {
    ($($t:ty),*) => { &[$(EventType::of::<$t>()),*] };
}

/// The HTTP header warren's webhook handler puts on every request it sends
/// (value: the `event_id`). A warren ingress answers a request that carries
/// it with 508 and publishes nothing: the event was forwarded by warren and
/// came back, so publishing it again would start a loop.
pub const FORWARDED_HEADER: &str = "warren-forwarded";

/// The event types warren knows, in one place: the CLI, the ingress, the
/// topology and the consumer all read this list.
pub const EVENT_TYPES: &[EventType] = for_each_event_type!(event_type_list);

/// A known event type, usable without knowing its Rust type.
#[derive(Clone, Copy)]
pub struct EventType {
    /// `event_type` / routing key.
    pub name: &'static str,
    check: fn(&RawValue) -> Result<i64, ValidationError>,
    schema: fn() -> serde_json::Value,
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl EventType {
    /// The dynamic handle of a typed event.
    #[must_use]
    pub const fn of<E: Event>() -> Self {
        Self {
            name: E::TYPE,
            check: check_data::<E>,
            schema: envelope_schema::<E>,
        }
    }

    /// The JSON Schema (draft-07) of this type's envelope, self-contained.
    #[must_use]
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)()
    }

    /// One JSON Schema for a body of any known type (`oneOf` the envelopes).
    #[must_use]
    pub fn all_schemas() -> serde_json::Value {
        let types: Vec<_> = EVENT_TYPES.iter().map(|t| (t.name, t.schema())).collect();
        crate::schema::any_of_envelopes(&types)
    }

    /// Looks up a known event type by name.
    #[must_use]
    pub fn find(name: &str) -> Option<Self> {
        EVENT_TYPES.iter().copied().find(|t| t.name == name)
    }

    /// The names of every known type, comma separated (for error messages).
    #[must_use]
    pub fn known_names() -> String {
        EVENT_TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
    }

    /// Validates `data` as this type, returning its `user_id`.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the field that is missing, mistyped or invalid.
    pub fn check(&self, data: &RawValue) -> Result<i64, ValidationError> {
        (self.check)(data)
    }
}

fn envelope_schema<E: Event>() -> serde_json::Value {
    crate::schema::envelope::<Envelope<E>>(E::TYPE, &format!("{} event", E::TYPE))
}

fn check_data<E: Event>(data: &RawValue) -> Result<i64, ValidationError> {
    let typed: E = parse_data(data)?;
    typed.validate()?;
    Ok(typed.user_id())
}

/// `data` as an `E`: a JSON object (serde would also take the fields as a
/// positional array, which other languages cannot read as the event).
fn parse_data<E: Event>(data: &RawValue) -> Result<E, ValidationError> {
    if !data.get().starts_with('{') {
        return Err(ValidationError::new("data", "must be a JSON object"));
    }
    // Fast path; only data that does not fit pays for tracking the path.
    if let Ok(typed) = serde_json::from_str(data.get()) {
        return Ok(typed);
    }
    let mut de = serde_json::Deserializer::from_str(data.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ValidationError::from_serde("data", &path, e.inner())
    })
}

/// The message body: metadata plus the typed payload. Unknown fields are
/// ignored. `data.user_id` must equal `user_id` (a rule JSON Schema cannot
/// express: warren rejects a mismatch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<E> {
    /// Idempotency key; a UUIDv7 is made when the input has none. Never the
    /// nil UUID.
    #[serde(default = "Uuid::now_v7", deserialize_with = "event_id")]
    #[schemars(
        schema_with = "crate::schema::uuid",
        skip_serializing_if = "crate::schema::made_on_parse"
    )]
    pub event_id: Uuid,
    pub event_type: String,
    /// When the event happened (RFC 3339); now when the input has none.
    #[serde(
        default = "now",
        serialize_with = "timestamp::serialize",
        deserialize_with = "timestamp::deserialize"
    )]
    #[schemars(
        schema_with = "crate::schema::date_time",
        skip_serializing_if = "crate::schema::made_on_parse"
    )]
    pub timestamp: DateTime<Utc>,
    /// The publishing service (AMQP `app_id`); not blank.
    #[schemars(schema_with = "crate::schema::not_blank")]
    pub source: String,
    /// The user the event is about; `data.user_id` must be equal.
    pub user_id: i64,
    pub data: E,
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// A UUID that is not the nil one: all zeros is what a missing value
/// defaults to in many languages, and as the key consumers deduplicate on it
/// would merge unrelated events.
fn event_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
    let id = Uuid::deserialize(d)?;
    if id.is_nil() {
        return Err(serde::de::Error::custom(
            "is the nil UUID, which is no event id: leave event_id out to have one made",
        ));
    }
    Ok(id)
}

impl<E: Event> Envelope<E> {
    /// A new envelope with a fresh UUIDv7 and the current time.
    #[must_use]
    pub fn new(source: impl Into<String>, data: E) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            timestamp: now(),
            source: source.into(),
            user_id: data.user_id(),
            data,
        }
    }

    /// Parses and validates a body as this event type.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Malformed`] when the body is not JSON, [`DecodeError::Invalid`]
    /// when it is JSON but not a valid `E` envelope.
    pub fn from_slice(body: &[u8]) -> Result<Self, DecodeError> {
        if let Some(env) = Self::from_slice_fast(body) {
            env.validate()?;
            return Ok(env);
        }
        // `data` is checked apart, as the ingress does: it must be an object.
        let raw: Envelope<&RawValue> = decode(body)?;
        if raw.event_type != E::TYPE {
            return Err(wrong_type(&raw.event_type, E::TYPE).into());
        }
        let env = Envelope {
            data: parse_data::<E>(raw.data)?,
            event_id: raw.event_id,
            event_type: raw.event_type,
            timestamp: raw.timestamp,
            source: raw.source,
            user_id: raw.user_id,
        };
        env.validate()?;
        Ok(env)
    }

    /// The usual body in one pass: portable JSON, an object, this event
    /// type, `data` an object of `E`. `None` for anything else, which
    /// [`Envelope::from_slice`] reads again, apart, to say what is wrong.
    fn from_slice_fast(body: &[u8]) -> Option<Self> {
        let text = portable::check_text(body).ok()?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let env: Envelope<object::Object<E>> = serde_json::from_str(text).ok()?;
        (env.event_type == E::TYPE).then(|| Envelope {
            data: env.data.0,
            event_id: env.event_id,
            event_type: env.event_type,
            timestamp: env.timestamp,
            source: env.source,
            user_id: env.user_id,
        })
    }

    /// Checks the envelope beyond its types.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.event_type != E::TYPE {
            return Err(wrong_type(&self.event_type, E::TYPE));
        }
        check_common(&self.source, self.user_id, self.data.user_id())?;
        self.data.validate()
    }
}

fn wrong_type(given: &str, expected: &str) -> ValidationError {
    ValidationError::new(
        "event_type",
        format!("is {:?}, expected {expected:?}", truncate(given, 64)),
    )
}

fn check_common(source: &str, user_id: i64, data_user_id: i64) -> Result<(), ValidationError> {
    if is_blank(source) {
        return Err(ValidationError::new("source", "must not be empty"));
    }
    if user_id != data_user_id {
        return Err(ValidationError::new(
            "data.user_id",
            format!("is {data_user_id} but the envelope's user_id is {user_id}"),
        ));
    }
    Ok(())
}

/// An envelope whose `data` is not yet typed: what the ingress and the CLI
/// receive before they know which [`EventType`] it is. `data` stays the
/// JSON text it came as (checked against its type, published as is), so the
/// ingress neither builds a `serde_json::Value` nor serialises one again.
pub type RawEnvelope = Envelope<Box<RawValue>>;

impl RawEnvelope {
    /// A new untyped envelope with a fresh UUIDv7 and the current time;
    /// call [`RawEnvelope::check_known`] before publishing it.
    #[must_use]
    pub fn new_raw(event_type: String, source: String, user_id: i64, data: &serde_json::Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type,
            timestamp: now(),
            source,
            user_id,
            data: serde_json::value::to_raw_value(data).expect("a JSON value serializes"),
        }
    }

    /// Parses a body of any known event type and validates it as that type.
    ///
    /// # Errors
    ///
    /// Malformed JSON, an unknown `event_type`, or a field that fails validation.
    pub fn parse_known(body: &[u8]) -> Result<(Self, EventType), DecodeError> {
        let env: Self = decode(body)?;
        let kind = env.check_fields()?;
        Ok((env, kind))
    }

    /// Validates `data` as the type `event_type` names, and as JSON other
    /// languages read the same way ([`portable::check_data`]).
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownType`], [`DecodeError::Invalid`], or
    /// [`DecodeError::Malformed`] for data that is not [`portable`].
    pub fn check_known(&self) -> Result<EventType, DecodeError> {
        portable::check_data(self.data.get().as_bytes()).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        self.check_fields()
    }

    /// [`RawEnvelope::check_known`] but for the portability of `data`, which
    /// [`RawEnvelope::parse_known`] checked with the whole body.
    fn check_fields(&self) -> Result<EventType, DecodeError> {
        let kind = EventType::find(&self.event_type)
            .ok_or_else(|| DecodeError::UnknownType(truncate(&self.event_type, 128).to_owned()))?;
        let data_user_id = kind.check(&self.data)?;
        check_common(&self.source, self.user_id, data_user_id)?;
        Ok(kind)
    }
}

/// Deserializes a whole body (trailing bytes are malformed), naming the
/// field that does not fit. The body must be [`portable`] and an object.
fn decode<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, DecodeError> {
    // Checked as UTF-8 here, so serde_json need not check each string again.
    let text = portable::check_text(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(not_an_object(body));
    }
    // Fast path; only a body that fails pays for tracking the path.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            DecodeError::Malformed(inner.to_string())
        } else {
            DecodeError::Invalid(ValidationError::from_serde("", &path, &inner))
        }
    })?;
    de.end().map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(value)
}

/// The error of a body that opens with `[`: serde would read the envelope's
/// fields from a positional array, which no other language does.
fn not_an_object(body: &[u8]) -> DecodeError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) => DecodeError::Malformed(e.to_string()),
        Ok(_) => DecodeError::Invalid(ValidationError::new(
            ".",
            "the envelope must be a JSON object, not an array",
        )),
    }
}

/// Why a body could not become a typed event. All of these are permanent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON (or not UTF-8, or trailing garbage).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but a field is missing, mistyped or invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// An `event_type` warren has no type for.
    #[error("unknown event_type {0:?} (known: {known})", known = EventType::known_names())]
    UnknownType(String),
}

/// A field that failed validation, named by its JSON path (`data.email`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct ValidationError {
    /// JSON path of the field, e.g. `data.ip_address`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// A validation error for `field`.
    #[must_use]
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn from_serde(prefix: &str, path: &str, err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        // serde names a missing or repeated field in its message, not in the path.
        let named = |prefix: &str| {
            msg.strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_owned)
        };
        let missing = named("missing field `");
        let twice = named("duplicate field `");
        let mut field = String::from(prefix);
        for part in [path, missing.as_deref().or(twice.as_deref()).unwrap_or("")] {
            if !part.is_empty() && part != "." {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(part);
            }
        }
        if field.is_empty() {
            field.push('.');
        }
        // Drop serde's " at line 1 column 12": the field is named already.
        let reason = if missing.is_some() {
            "is required".to_owned()
        } else if twice.is_some() {
            "is given more than once".to_owned()
        } else {
            msg.find(" at line ").map_or(msg.clone(), |i| msg[..i].to_owned())
        };
        Self { field, reason }
    }
}

/// A deliberately small check: one `@`, something before it, a dotted domain
/// after it, no spaces. Deliverability is the mail server's business.
#[must_use]
pub fn looks_like_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    // One pass: exactly one '@' with something before it, a '.' after it
    // that neither starts nor ends the domain, no whitespace or controls.
    let bytes = s.as_bytes();
    let mut at = None;
    let mut dot_after_at = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'@' if at.is_some() => return false,
            b'@' => at = Some(i),
            b'.' if at.is_some() => dot_after_at = true,
            _ if b.is_ascii_whitespace() || b.is_ascii_control() => return false,
            _ => {}
        }
    }
    let Some(at) = at else { return false };
    let domain = &bytes[at + 1..];
    at > 0
        && dot_after_at
        && domain.first() != Some(&b'.')
        && domain.last() != Some(&b'.')
        && (s.is_ascii() || !s.chars().any(char::is_whitespace))
}

/// Whether `s` is empty or only whitespace; stops at the first other character.
fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
#[must_use]
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payloads the Django service sends today, byte for byte (no event_id).
    pub(crate) const SEED_REGISTERED: &str = include_str!("../tests/fixtures/seed_user_registered.json");
    pub(crate) const SEED_LOGIN: &str = include_str!("../tests/fixtures/seed_user_login.json");

    #[test]
    fn seed_payloads_parse_as_they_are() {
        let reg = Envelope::<UserRegistered>::from_slice(SEED_REGISTERED.as_bytes()).unwrap();
        assert_eq!(reg.data.username, "john_doe");
        assert_eq!(reg.timestamp.to_rfc3339(), "2025-01-20T10:30:00+00:00");
        assert_eq!(
            reg.event_id.get_version_num(),
            7,
            "a missing event_id is filled with a v7"
        );
        let login = Envelope::<UserLogin>::from_slice(SEED_LOGIN.as_bytes()).unwrap();
        assert_eq!(login.data.ip_address, "192.168.1.100".parse::<IpAddr>().unwrap());
        let (raw, kind) = RawEnvelope::parse_known(SEED_LOGIN.as_bytes()).unwrap();
        assert_eq!(kind.name, "user.login");
        assert_eq!(raw.user_id, 123);
    }

    #[test]
    fn raw_data_is_kept_as_sent_and_checked_as_its_type() {
        let data = r#"{ "user_id": 5, "username": "ann", "email": "ann@example.com",
            "registration_timestamp": "2025-01-20T10:30:00Z", "plan": "pro" }"#;
        let body = format!(r#"{{"event_type":"user.registered","source":"s","user_id":5,"data":{data}}}"#);
        let (raw, _) = RawEnvelope::parse_known(body.as_bytes()).unwrap();
        assert_eq!(raw.data.get(), data, "published as it came, unknown fields included");
        let published = serde_json::to_string(&raw).unwrap();
        assert!(published.contains(data), "{published}");
        let data_value: serde_json::Value = serde_json::from_str(raw.data.get()).unwrap();
        assert_eq!(data_value["plan"], "pro");
        // A field given twice is ambiguous: rejected, naming it.
        let twice = body.replace(r#""plan": "pro""#, r#""email": "bob@example.com""#);
        match RawEnvelope::parse_known(twice.as_bytes()) {
            Err(DecodeError::Invalid(v)) => {
                assert_eq!(v.field, "data.email", "{v}");
                assert_eq!(v.reason, "is given more than once", "{v}");
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        let cli = RawEnvelope::new_raw("user.registered".into(), "cli".into(), 5, &data_value);
        assert_eq!(cli.check_known().unwrap().name, "user.registered");
    }

    #[test]
    fn event_id_given_is_kept_and_round_trips() {
        let body = SEED_REGISTERED.replacen('{', r#"{"event_id":"01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a","#, 1);
        let env = Envelope::<UserRegistered>::from_slice(body.as_bytes()).unwrap();
        assert_eq!(env.event_id.to_string(), "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a");
        let again = Envelope::<UserRegistered>::from_slice(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = SEED_LOGIN.replace(r#""ip_address""#, r#""device": {"os": "x"}, "ip_address""#);
        assert!(Envelope::<UserLogin>::from_slice(body.as_bytes()).is_ok());
    }

    fn invalid_field(body: &str) -> String {
        match RawEnvelope::parse_known(body.as_bytes()) {
            Err(DecodeError::Invalid(v)) => v.field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            invalid_field(&SEED_REGISTERED.replace("john@example.com", "nope")),
            "data.email"
        );
        assert_eq!(
            invalid_field(&SEED_LOGIN.replace("192.168.1.100", "300.1.1.1")),
            "data.ip_address"
        );
        let long = "9".repeat(300);
        for (bad, shown) in [
            ("300.1.1.1", "\"300.1.1.1\""),
            (long.as_str(), &format!("\"{}\"", &long[..64])),
        ] {
            let body = SEED_LOGIN.replace("192.168.1.100", bad);
            let Err(DecodeError::Invalid(e)) = RawEnvelope::parse_known(body.as_bytes()) else {
                panic!("{bad} is refused");
            };
            assert!(
                e.reason.starts_with(&format!("{shown} is not an IPv4 or IPv6 address")),
                "{}",
                e.reason
            );
        }
        assert_eq!(
            invalid_field(&SEED_LOGIN.replace(
                "\"user_id\": 123,\n    \"username\"",
                "\"user_id\": 124,\n    \"username\""
            )),
            "data.user_id"
        );
        assert_eq!(
            invalid_field(&SEED_REGISTERED.replace("\"username\": \"john_doe\",", "")),
            "data.username"
        );
        assert_eq!(
            invalid_field(&SEED_REGISTERED.replace("\"user_id\": 123,\n  \"data\"", "\"user_id\": \"x\",\n  \"data\"")),
            "user_id"
        );
        assert_eq!(
            invalid_field(&SEED_REGISTERED.replace("\"2025-01-20T10:30:00Z\"\n  }", "12\n  }")),
            "data.registration_timestamp"
        );
    }

    #[test]
    fn what_other_languages_cannot_read_is_refused_naming_the_field() {
        let nil = SEED_REGISTERED.replacen('{', r#"{"event_id":"00000000-0000-0000-0000-000000000000","#, 1);
        let naive = SEED_LOGIN.replacen("10:35:00Z", "10:35:00.123456", 1);
        let year = SEED_LOGIN.replace("2025-01-20T10:35:00Z", "+10000-01-20T10:35:00Z");
        let data_array = SEED_LOGIN.replace(
            r#"{
    "user_id": 123,
    "username": "john_doe",
    "email": "john@example.com",
    "login_timestamp": "2025-01-20T10:35:00Z",
    "ip_address": "192.168.1.100"
  }"#,
            r#"[123, "john_doe", "john@example.com", "2025-01-20T10:35:00Z", "192.168.1.100"]"#,
        );
        for (body, field) in [
            (nil.as_str(), "event_id"),
            (naive.as_str(), "timestamp"),
            (year.as_str(), "timestamp"),
            (data_array.as_str(), "data"),
        ] {
            assert_eq!(invalid_field(body), field, "{body}");
            if field != "event_id" {
                let typed = Envelope::<UserLogin>::from_slice(body.as_bytes()).unwrap_err();
                assert!(
                    matches!(&typed, DecodeError::Invalid(v) if v.field == field),
                    "{typed:?}"
                );
            }
        }
        let typed = Envelope::<UserRegistered>::from_slice(nil.as_bytes()).unwrap_err();
        assert!(
            matches!(&typed, DecodeError::Invalid(v) if v.field == "event_id"),
            "{typed:?}"
        );
        let wrapped = format!("[{SEED_LOGIN}]");
        assert_eq!(invalid_field(&wrapped), ".");
        assert!(matches!(
            RawEnvelope::parse_known(b"[1, 2"),
            Err(DecodeError::Malformed(_))
        ));
        let surrogate = SEED_LOGIN.replace("john_doe", r"john\ud800");
        let err = Envelope::<UserLogin>::from_slice(surrogate.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Malformed(m) if m.contains("data.username")),
            "{err:?}"
        );
    }

    #[test]
    fn check_known_checks_data_built_in_code_too() {
        let deep = serde_json::from_str::<serde_json::Value>(&format!(
            r#"{{"user_id": 5, "x": {}{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        ))
        .unwrap();
        let env = RawEnvelope::new_raw("user.registered".into(), "cli".into(), 5, &deep);
        assert!(matches!(env.check_known(), Err(DecodeError::Malformed(m)) if m.contains("nested deeper")));
        let array = RawEnvelope::new_raw("user.registered".into(), "cli".into(), 5, &serde_json::json!([5]));
        assert!(matches!(array.check_known(), Err(DecodeError::Invalid(v)) if v.field == "data"));
    }

    #[test]
    fn ipv6_is_accepted() {
        let body = SEED_LOGIN.replace("192.168.1.100", "2001:db8::1");
        assert!(Envelope::<UserLogin>::from_slice(body.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_and_unknown_are_distinct() {
        assert!(matches!(
            RawEnvelope::parse_known(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            RawEnvelope::parse_known(b"\xff\xfe"),
            Err(DecodeError::Malformed(_))
        ));
        let other = SEED_LOGIN.replace("\"user.login\"", "\"user.deleted\"");
        let err = RawEnvelope::parse_known(other.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType(ref t) if t == "user.deleted"));
        assert!(err.to_string().contains("user.registered, user.login"), "{err}");
    }

    #[test]
    fn typed_parse_rejects_other_type() {
        let err = Envelope::<UserRegistered>::from_slice(SEED_LOGIN.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid(_)), "{err:?}");
    }

    #[test]
    fn email_check() {
        for ok in ["a@b.co", "john.doe+x@mail.example.com"] {
            assert!(looks_like_email(ok), "{ok}");
        }
        for bad in [
            "nope",
            "@b.co",
            "a@b",
            "a@@b.co",
            "a@b@c.co",
            "a b@c.de",
            "a\tb@c.de",
            "a\u{7f}@b.co",
            "a@.com",
            "a@com.",
            "a@b.co\u{2003}",
            "",
        ] {
            assert!(!looks_like_email(bad), "{bad:?}");
        }
        assert!(looks_like_email("jösé@exämple.de"), "non-ASCII without whitespace");
        assert!(
            !looks_like_email(&format!("{}@b.co", "a".repeat(250))),
            "longer than 254 bytes"
        );
    }

    #[test]
    fn blank_is_empty_or_only_whitespace() {
        for blank in ["", " ", "\t\n", "\u{2003}"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for text in ["a", " a ", "\u{2003}x"] {
            assert!(!is_blank(text), "{text:?}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
