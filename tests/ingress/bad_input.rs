//! A few hundred bad inputs against `POST /events`: every answer is a 202 or
//! a 4xx JSON error with nothing published, the inputs of the hardening
//! issue get the documented errors, and whatever the ingress stores (every
//! accepted body) parses with Python's `json` and by Go's `encoding/json`
//! rules into the documented envelope.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;

use super::common::*;

/// A JSON object from members given as raw JSON text (so that the text can
/// hold what no JSON library would write: lone surrogates, deep nesting).
fn object(members: &[(&str, String)]) -> String {
    let inner: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The seed's `user.login`, member by member, with `envelope` and `data`
/// members replaced or added (a `data` given in `envelope` replaces it whole).
fn login(envelope: &[(&str, String)], data: &[(&str, String)]) -> String {
    let mut d = vec![
        ("user_id", "123".to_owned()),
        ("username", quoted("john_doe")),
        ("email", quoted("john@example.com")),
        ("login_timestamp", quoted("2025-01-20T10:35:00Z")),
        ("ip_address", quoted("192.168.1.100")),
    ];
    let mut e = vec![
        ("event_type", quoted("user.login")),
        ("timestamp", quoted("2025-01-20T10:35:00Z")),
        ("source", quoted("django-backend")),
        ("user_id", "123".to_owned()),
    ];
    for (members, changes) in [(&mut d, data), (&mut e, envelope)] {
        for (k, v) in changes {
            match members.iter_mut().find(|(name, _)| name == k) {
                Some(m) => m.1 = v.clone(),
                None => members.push((k, v.clone())),
            }
        }
    }
    if !e.iter().any(|(k, _)| *k == "data") {
        e.push(("data", object(&d)));
    }
    object(&e)
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Values no field should trip the ingress over.
fn odd_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "null",
        "true",
        "0",
        "-1",
        "1.5",
        "1e400",
        "12345678901234567890123",
        "[]",
        "{}",
        "[1,2,3]",
        r#""""#,
        r#"" ""#,
        r#""\u0000""#,
        r#""\ud800""#,
        r#""\udc00x""#,
        r#""\ud83d\ude00""#,
        r#""jösé""#,
        r#""2025-01-20T10:30:00""#,
        r#""2025-01-20T10:30:00.123456""#,
        r#""+10000-01-01T00:00:00Z""#,
        r#""0000-01-01T00:00:00Z""#,
        r#""9999-12-31T23:00:00-05:00""#,
        r#""2025-02-30T00:00:00Z""#,
        r#""2025-01-20T10:30:60Z""#,
        r#""2025-01-20t10:30:00z""#,
        r#""2025-01-20 10:30:00Z""#,
        r#""2025-01-20T10:30:00+05:30""#,
        r#""2025-01-20T10:30:00.123456789Z""#,
        r#""00000000-0000-0000-0000-000000000000""#,
        r#""01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a""#,
    ]
    .map(str::to_owned)
    .into();
    values.push(nested(31));
    values.push(nested(40));
    values.push("9".repeat(5000));
    values.push("9".repeat(100));
    values.push(quoted(&"x".repeat(10_000)));
    values
}

/// What the ingress answered, and the body it stored when it took the event.
struct Outcome {
    status: StatusCode,
    body: Value,
    stored: Option<Vec<u8>>,
}

async fn send(body: impl Into<Body>, encoding: Option<&str>) -> Outcome {
    let fake = Arc::new(Fake::default());
    let mut req = Request::post("/events").header(header::CONTENT_TYPE, "application/json");
    if let Some(e) = encoding {
        req = req.header(header::CONTENT_ENCODING, e);
    }
    let a = call(app(&fake), req.body(body.into()).unwrap()).await;
    let published = fake.published();
    assert!(published.len() <= 1);
    if a.status != StatusCode::ACCEPTED {
        assert!(published.is_empty(), "published with {}: {}", a.status, a.body);
        assert!(a.body["error"]["code"].is_string(), "{}", a.body);
    }
    Outcome {
        status: a.status,
        body: a.body,
        // What the publisher sends to the broker: the envelope, serialized.
        stored: published.first().map(|e| serde_json::to_vec(e).unwrap()),
    }
}

/// Asserts an error answer: status, code, and the field when given.
fn assert_refused(o: &Outcome, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(o.status, status, "{}", o.body);
    assert_eq!(o.body["error"]["code"], code, "{}", o.body);
    if let Some(field) = field {
        let got = o.body["error"]["field"].as_str().unwrap_or_default();
        assert!(got.starts_with(field), "field {got:?}, expected {field:?}: {}", o.body);
    }
}

#[tokio::test]
async fn the_inputs_of_the_issue_get_documented_errors() {
    let data_as_array = login(
        &[(
            "data",
            r#"[123, "john_doe", "john@example.com", "2025-01-20T10:35:00Z", "192.168.1.100"]"#.into(),
        )],
        &[],
    );
    assert_refused(
        &send(data_as_array, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("data"),
    );
    let deep = send(login(&[], &[("extra", nested(10_000))]), None).await;
    assert_refused(&deep, StatusCode::BAD_REQUEST, "too_deep", Some("data.extra"));
    assert_eq!(deep.body["error"]["limit"], 32, "{}", deep.body);
    for (data, field) in [
        (("note", r#""\ud800""#), "data.note"),
        (("username", r#""ab\udfffc""#), "data.username"),
    ] {
        let o = send(login(&[], &[(data.0, data.1.into())]), None).await;
        assert_refused(&o, StatusCode::BAD_REQUEST, "lone_surrogate", Some(field));
    }
    let year = send(login(&[("timestamp", quoted("+10000-01-01T00:00:00Z"))], &[]), None).await;
    assert_refused(
        &year,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("timestamp"),
    );
    assert!(
        year.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("four-digit year")
    );
    let nil = quoted("00000000-0000-0000-0000-000000000000");
    assert_refused(
        &send(login(&[("event_id", nil)], &[]), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("event_id"),
    );
    let wrapped = send(format!("[{}]", login(&[], &[])), None).await;
    assert_refused(&wrapped, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", None);
    let positional = r#"["01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a", "user.login", "2025-01-20T10:35:00Z",
        "django-backend", 123, {"user_id": 123, "username": "john_doe", "email": "john@example.com",
        "login_timestamp": "2025-01-20T10:35:00Z", "ip_address": "192.168.1.100"}]"#;
    let o = send(positional, None).await;
    assert_refused(&o, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", None);
    assert!(
        o.body["error"]["message"].as_str().unwrap().contains("JSON object"),
        "{}",
        o.body
    );
}

#[tokio::test]
async fn a_timestamp_without_offset_is_422_saying_an_offset_is_required() {
    // What Django sends with USE_TZ=False.
    let naive = quoted("2025-01-20T10:30:00.123456");
    for (envelope, data, field) in [
        (vec![("timestamp", naive.clone())], vec![], "timestamp"),
        (vec![], vec![("login_timestamp", naive.clone())], "data.login_timestamp"),
    ] {
        let o = send(login(&envelope, &data), None).await;
        assert_refused(&o, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some(field));
        let msg = o.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("an offset (`Z` or `+hh:mm`) is required"), "{msg}");
    }
}

#[tokio::test]
async fn an_encoding_warren_does_not_decode_is_415_naming_it() {
    for encoding in ["gzip", "br", "deflate, gzip"] {
        let o = send(login(&[], &[]), Some(encoding)).await;
        assert_refused(&o, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", None);
        let msg = o.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(encoding), "{msg}");
    }
    assert_eq!(
        send(login(&[], &[]), Some("identity")).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn bytes_that_are_not_utf8_are_400_even_where_ignored() {
    for (envelope, data) in [
        (vec![("extra", quoted("x"))], vec![]),
        (vec![], vec![("extra", quoted("x"))]),
    ] {
        let mut body = login(&envelope, &data).into_bytes();
        let at = body.windows(3).position(|w| w == b"\"x\"").unwrap() + 1;
        body[at] = 0xff;
        let o = send(body, None).await;
        assert_refused(&o, StatusCode::BAD_REQUEST, "malformed_json", None);
    }
}

/// Every body of the suite: the seed, then each field of the envelope and
/// of `data` (and an unknown one at each level) set to each odd value.
fn suite() -> Vec<String> {
    let mut bodies = vec![login(&[], &[]), SEED_LOGIN.to_owned()];
    let envelope_fields = ["event_id", "event_type", "timestamp", "source", "user_id", "extra"];
    let data_fields = ["user_id", "username", "email", "login_timestamp", "ip_address", "extra"];
    for value in odd_values() {
        for f in envelope_fields {
            bodies.push(login(&[(f, value.clone())], &[]));
        }
        for f in data_fields {
            bodies.push(login(&[], &[(f, value.clone())]));
        }
    }
    bodies
}

#[tokio::test]
async fn every_answer_is_202_or_a_4xx_and_every_stored_body_reads_in_python_and_go() {
    let mut stored = Vec::new();
    let bodies = suite();
    assert!(bodies.len() > 300, "{}", bodies.len());
    for body in &bodies {
        let o = send(body.clone(), None).await;
        assert!(
            o.status == StatusCode::ACCEPTED || o.status.is_client_error(),
            "{}: {}\n{}",
            o.status,
            o.body,
            warren::event::truncate(body, 300)
        );
        if let Some(s) = o.stored {
            if let Err(why) = go_reads(&s) {
                panic!("Go would not read {}: {why}", String::from_utf8_lossy(&s));
            }
            stored.push(s);
        }
    }
    assert!(stored.len() > 20, "the suite has accepted bodies: {}", stored.len());
    python_reads(&stored);
}

/// Python's rule: `json.loads` of each stored body gives the documented
/// envelope, and every string in it can be encoded as UTF-8 (a lone
/// surrogate survives `json.loads`, then breaks the first `.encode()`, as in
/// a database driver).
fn python_reads(bodies: &[Vec<u8>]) {
    const SCRIPT: &str = r#"
import json, sys, uuid
from datetime import datetime

def strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from strings(x)

def aware(s):
    assert isinstance(s, str), s
    t = datetime.fromisoformat(s)
    assert t.tzinfo is not None, s

def check(body):
    e = json.loads(body)
    assert isinstance(e, dict), "envelope is not an object"
    assert uuid.UUID(e["event_id"]).int != 0, "nil event_id"
    assert e["event_type"] in ("user.registered", "user.login")
    aware(e["timestamp"])
    assert isinstance(e["source"], str) and e["source"].strip()
    assert type(e["user_id"]) is int
    d = e["data"]
    assert isinstance(d, dict), "data is not an object"
    assert type(d["user_id"]) is int and d["user_id"] == e["user_id"]
    aware(d.get("registration_timestamp") or d["login_timestamp"])
    for s in strings(e):
        s.encode("utf-8")

failed = 0
bodies = open(sys.argv[1], "rb").read().split(b"\0")
for n, body in enumerate(bodies):
    try:
        check(body)
    except Exception as x:
        failed += 1
        print(f"body {n}: {type(x).__name__}: {str(x)[:200]}: {body[:300]!r}")
print(f"{len(bodies)} bodies, {failed} unreadable")
sys.exit(1 if failed else 0)
"#;
    // NUL separates the bodies: valid JSON never holds a raw one.
    let path = std::env::temp_dir().join(crate::support::unique("stored"));
    std::fs::write(&path, bodies.join(&b'\0')).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&path)
        .output()
        .expect("this test needs python3 on the PATH");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "Python cannot read what the ingress stored:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Go's rule, written out here since Go is not on the test machine: Go's
/// `encoding/json` replaces invalid UTF-8 and lone surrogate escapes with
/// U+FFFD without an error, so the stored body must have neither (serde_json
/// parsing it into a `Value` refuses both); the envelope and `data` must be
/// objects; `event_id` a UUID; `user_id` an int64; and each timestamp one
/// that Go's `time.Time` reads (`time.RFC3339`: four-digit year, `T`, seconds
/// 00–59, then `Z` or `±hh:mm` with hh ≤ 23 and mm ≤ 59).
fn go_reads(stored: &[u8]) -> Result<(), String> {
    std::str::from_utf8(stored).map_err(|e| format!("not UTF-8: {e}"))?;
    let e: Value = serde_json::from_slice(stored).map_err(|e| format!("lone surrogate or bad JSON: {e}"))?;
    let e = e.as_object().ok_or("envelope is not an object")?;
    let id = e["event_id"].as_str().ok_or("event_id is not a string")?;
    uuid::Uuid::parse_str(id).map_err(|x| format!("event_id {id}: {x}"))?;
    e["user_id"].as_i64().ok_or("user_id is not an int64")?;
    go_time(&e["timestamp"])?;
    let d = e["data"].as_object().ok_or("data is not an object")?;
    d["user_id"].as_i64().ok_or("data.user_id is not an int64")?;
    let t = d.get("registration_timestamp").or_else(|| d.get("login_timestamp"));
    go_time(t.ok_or("no data timestamp")?)
}

/// Go's `time.Time.UnmarshalJSON` rule for a timestamp.
fn go_time(v: &Value) -> Result<(), String> {
    let s = v.as_str().ok_or("timestamp is not a string")?;
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>, max: u32| {
        let t = s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?;
        t.parse::<u32>().ok().filter(|n| *n <= max)
    };
    let bad = || format!("Go cannot read the timestamp {s:?}");
    let shape = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    let fields = [
        num(0..4, 9999),
        num(5..7, 12),
        num(8..10, 31),
        num(11..13, 23),
        num(14..16, 59),
        num(17..19, 59),
    ];
    if !shape || fields.iter().any(Option::is_none) {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset_ok = rest == "Z"
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && num(s.len() - 5..s.len() - 3, 23).is_some()
            && num(s.len() - 2..s.len(), 59).is_some());
    if offset_ok { Ok(()) } else { Err(bad()) }
}
