//! `warren schema` against Python's `jsonschema`: the seed payloads, the
//! suite's invalid bodies and batteries of e-mails, IP addresses, timestamps
//! and ids, each judged by warren's own parsing and by the schema; they must
//! agree, except for the one rule JSON Schema cannot state.

use serde_json::{Value, json};
use warren::event::RawEnvelope;

use super::{repo, run_tool, temp_file, text, warren};

const SEED_REGISTERED: &str = include_str!("../fixtures/seed_user_registered.json");
const SEED_LOGIN: &str = include_str!("../fixtures/seed_user_login.json");
const INSTALL: &str = "install it with `pip install jsonschema` (.ci/run does)";

/// One body to judge, and whether warren and the schema may disagree on it.
struct Case {
    name: String,
    body: Value,
    /// Only `data.user_id` = `user_id` is wrong: the schema describes that
    /// rule but cannot check it.
    cross_field: bool,
}

fn case(name: impl Into<String>, body: Value) -> Case {
    Case {
        name: name.into(),
        body,
        cross_field: false,
    }
}

fn seed(text: &str) -> Value {
    serde_json::from_str(text).expect("seed fixture is JSON")
}

/// `base` with `path` set to `value` (or removed when `None`).
fn with(base: &str, path: &[&str], value: Option<Value>) -> Value {
    let mut body = seed(base);
    let (last, parents) = path.split_last().expect("a path");
    let mut at = &mut body;
    for p in parents {
        at = &mut at[*p];
    }
    let obj = at.as_object_mut().expect("an object");
    match value {
        Some(v) => obj.insert((*last).to_owned(), v),
        None => obj.remove(*last),
    };
    body
}

/// The seeds and the invalid bodies of the suite (event.rs and tests/ingress/).
fn suite_cases() -> Vec<Case> {
    let r = SEED_REGISTERED;
    let l = SEED_LOGIN;
    let mut cases = vec![
        case("seed user.registered", seed(r)),
        case("seed user.login", seed(l)),
        case(
            "event_id given",
            with(r, &["event_id"], Some(json!("01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a"))),
        ),
        case(
            "unknown field ignored",
            with(l, &["data", "device"], Some(json!({"os": "x"}))),
        ),
        case("e-mail nope", with(r, &["data", "email"], Some(json!("nope")))),
        case("e-mail john", with(r, &["data", "email"], Some(json!("john")))),
        case(
            "ip 300.1.1.1",
            with(l, &["data", "ip_address"], Some(json!("300.1.1.1"))),
        ),
        case("username missing", with(r, &["data", "username"], None)),
        case("username blank", with(r, &["data", "username"], Some(json!(" \t")))),
        case("user_id a string", with(r, &["user_id"], Some(json!("x")))),
        case(
            "timestamp a number",
            with(r, &["data", "registration_timestamp"], Some(json!(12))),
        ),
        case("source missing", with(r, &["source"], None)),
        case("source empty", with(r, &["source"], Some(json!("")))),
        case("source em space", with(r, &["source"], Some(json!("\u{2003}")))),
        case(
            "event_type unknown",
            with(l, &["event_type"], Some(json!("user.deleted"))),
        ),
        case(
            "login data as registered",
            with(l, &["event_type"], Some(json!("user.registered"))),
        ),
        case("data missing", with(l, &["data"], None)),
        case("an array", json!([1, 2])),
    ];
    cases.push(Case {
        cross_field: true,
        ..case("data.user_id differs", with(l, &["data", "user_id"], Some(json!(124))))
    });
    cases
}

fn battery(name: &str, base: &str, path: &[&str], values: &[&str]) -> Vec<Case> {
    values
        .iter()
        .map(|v| case(format!("{name} {v:?}"), with(base, path, Some(json!(v)))))
        .collect()
}

/// Values on both sides of each pattern's edges.
fn battery_cases() -> Vec<Case> {
    let long = format!("{}@b.co", "a".repeat(250));
    let emails = [
        "a@b.co",
        "john.doe+x@mail.example.com",
        "jösé@exämple.de",
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
        "a@b..c",
        "",
        &long,
    ];
    let ips = [
        "192.168.1.100",
        "0.0.0.0",
        "255.255.255.255",
        "2001:db8::1",
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "::ffff:192.0.2.1",
        "1:2:3:4:5:6:1.2.3.4",
        "ABCD:ef01::9",
        "300.1.1.1",
        "1.2.3",
        "01.2.3.4",
        "1.2.3.4.5",
        "1.2.3.04",
        "",
        " 1.2.3.4",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
        "12345::",
        "fe80::1%eth0",
        "::ffff:1.2.3",
        "1.2.3.4::",
        "localhost",
        "1:2:3:4:5:6:7:1.2.3.4",
        ":1:2::",
        "1:2:3:4:5:6:7:8::",
    ];
    let times = [
        "2025-01-20T10:30:00Z",
        "2025-01-20T10:30:00.123456Z",
        "2025-01-20T10:30:00+05:30",
        "2025-01-20t10:30:00z",
        "2025-01-20T10:30:00-00:00",
        "2025-13-20T10:30:00Z",
        "2025-01-20T24:00:00Z",
        "2025-01-20",
        "yesterday",
        "2025-01-20T10:30Z",
        "2025-01-20T10:30:00",
    ];
    let ids = [
        "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a",
        "01938F5E7C7A7B3E9A516F0E2C1D4B7A",
        "{01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a}",
        "urn:uuid:01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a",
        "nope",
        "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7",
        "{01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a",
        "01938f5e7c7a-7b3e-9a51-6f0e2c1d4b7a",
    ];
    let mut cases = battery("e-mail", SEED_REGISTERED, &["data", "email"], &emails);
    cases.extend(battery("ip", SEED_LOGIN, &["data", "ip_address"], &ips));
    cases.extend(battery("timestamp", SEED_LOGIN, &["timestamp"], &times));
    cases.extend(battery(
        "login_timestamp",
        SEED_LOGIN,
        &["data", "login_timestamp"],
        &times,
    ));
    cases.extend(battery("event_id", SEED_LOGIN, &["event_id"], &ids));
    cases
}

/// Python's verdicts on `cases` under `schema`: (patterns and types, with formats too).
fn python_verdicts(schema: &str, cases: &[Case]) -> Vec<(bool, bool, String)> {
    let path = temp_file("schema.json", schema);
    let bodies: Vec<&Value> = cases.iter().map(|c| &c.body).collect();
    let script = repo("scripts/jsonschema-check.py");
    let out = run_tool(
        "python3",
        &[script.to_str().unwrap(), path.to_str().unwrap()],
        &serde_json::to_string(&bodies).unwrap(),
        INSTALL,
    );
    assert!(
        out.status.success(),
        "jsonschema-check.py: {} ({INSTALL})",
        text(&out.stderr)
    );
    let verdicts: Vec<_> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            let err = v["error"].as_str().unwrap_or_default().to_owned();
            (v["valid"] == true, v["valid_with_formats"] == true, err)
        })
        .collect();
    assert_eq!(verdicts.len(), cases.len(), "one verdict per case");
    verdicts
}

/// warren's verdict on a body, as the ingress decides it; with `only`, also
/// that the body is of that type (what `Envelope::<E>::from_slice` accepts).
fn warren_accepts(body: &Value, only: Option<&str>) -> bool {
    let bytes = serde_json::to_vec(body).unwrap();
    RawEnvelope::parse_known(&bytes).is_ok_and(|(_, kind)| only.is_none_or(|t| kind.name == t))
}

fn check_agreement(schema_args: &[&str], only: Option<&str>) {
    let schema = warren(schema_args);
    let mut cases = suite_cases();
    cases.extend(battery_cases());
    let verdicts = python_verdicts(&schema, &cases);
    let mut disagreements = Vec::new();
    for (c, (plain, formats, err)) in cases.iter().zip(verdicts) {
        let ours = warren_accepts(&c.body, only);
        let of_this_type = only.is_none_or(|t| c.body["event_type"] == t);
        if c.cross_field && of_this_type {
            assert!(!ours, "{}: warren must reject it", c.name);
            assert!(plain && formats, "{}: JSON Schema cannot see this rule", c.name);
            continue;
        }
        if ours != plain || ours != formats {
            disagreements.push(format!(
                "{}: warren {ours}, jsonschema {plain} / with formats {formats} ({err})",
                c.name
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "warren schema {schema_args:?} and warren disagree:\n{}",
        disagreements.join("\n")
    );
}

#[test]
fn the_schema_of_any_event_agrees_with_warren() {
    check_agreement(&["schema"], None);
}

#[test]
fn each_type_schema_agrees_with_warren_on_that_type() {
    for t in ["user.registered", "user.login"] {
        check_agreement(&["schema", t], Some(t));
    }
}

#[test]
fn the_rule_it_cannot_check_is_described() {
    let schema: Value = serde_json::from_str(&warren(&["schema", "user.login"])).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let description = schema["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("`data.user_id` must equal `user_id`"),
        "{description}"
    );
    assert_eq!(schema["properties"]["event_type"]["const"], "user.login");
    assert_eq!(
        schema["properties"]["data"]["properties"]["email"]["format"],
        "idn-email"
    );
    assert!(
        !schema.to_string().contains("\"default\""),
        "no default made at generation time"
    );
}
