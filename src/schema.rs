//! JSON Schema (draft-07) of the wire contract: the generator, and the
//! patterns through which the event types say what they check beyond JSON
//! types.
//!
//! The schemas are derived from the Rust types ([`crate::event`] derives
//! `JsonSchema` next to `Deserialize`), so they cannot drift from what warren
//! accepts. What the types check by parsing or in `validate()` is written
//! here as patterns that mean the same thing in ECMA-262 (what JSON Schema
//! specifies) and in Python's `re` (what the `jsonschema` package runs):
//! explicit character classes, no `\d` or `\s` (Unicode-wide in Python,
//! ASCII-only or different in JavaScript). `format` is added as well, for
//! tools that check formats but not patterns. What no keyword can say (that
//! `data.user_id` equals `user_id`) is in the descriptions.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// The meta-schema URI the generated schemas declare.
pub const DRAFT_07: &str = "http://json-schema.org/draft-07/schema#";

/// The characters Rust's `char::is_whitespace` accepts (Unicode `White_Space`),
/// as the inside of a character class.
const WHITESPACE: &str = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Not blank: at least one character that is not whitespace (as
/// `is_blank` in [`crate::event`] decides).
#[must_use]
pub fn not_blank_pattern() -> String {
    format!("[^{WHITESPACE}]")
}

/// An e-mail address as `looks_like_email` checks it: one `@`, something
/// before it, a domain with a dot that neither starts nor ends it, no
/// whitespace or control characters.
#[must_use]
pub fn email_pattern() -> String {
    // Any character but '@', whitespace and ASCII controls; then the same without '.'.
    let c = format!(r"[^@\x00-\x1f\x7f{WHITESPACE}]");
    let n = format!(r"[^@.\x00-\x1f\x7f{WHITESPACE}]");
    format!(r"^{c}+@{n}{c}*\.{c}*{n}$")
}

/// A dotted-quad IPv4 address without leading zeros (RFC 3986 `IPv4address`),
/// what Rust's `Ipv4Addr` parses.
fn ipv4() -> &'static str {
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
}

/// An IPv6 address in the text forms of RFC 3986's `IPv6address` (`::`
/// compression, an IPv4 tail), what Rust's `Ipv6Addr` parses; no zone id.
fn ipv6() -> String {
    let h16 = "[0-9A-Fa-f]{1,4}";
    let ls32 = format!("(?:{h16}:{h16}|{})", ipv4());
    // The ABNF's nine forms: n groups before "::" (at most `max_head`), then
    // `tail` groups and the last 32 bits after it.
    let mut forms = vec![format!("(?:{h16}:){{6}}{ls32}"), format!("::(?:{h16}:){{5}}{ls32}")];
    for (max_head, tail) in [
        (0, "(?:H:){4}L"),
        (1, "(?:H:){3}L"),
        (2, "(?:H:){2}L"),
        (3, "H:L"),
        (4, "L"),
        (5, "H"),
        (6, ""),
    ] {
        let head = if max_head == 0 {
            h16.to_owned()
        } else {
            format!("(?:{h16}:){{0,{max_head}}}{h16}")
        };
        let tail = tail.replace('H', h16).replace('L', &ls32);
        forms.push(format!("(?:{head})?::{tail}"));
    }
    forms.join("|")
}

/// The patterns of the IP address forms: `(ipv4, ipv6)`, anchored.
#[must_use]
pub fn ip_patterns() -> (String, String) {
    (format!("^{}$", ipv4()), format!("^(?:{})$", ipv6()))
}

/// An RFC 3339 date-time as warren takes it (`event::timestamp`): year
/// 0001 to 9999, a capital `T`, seconds 00 to 59, a fraction of 1 to 9
/// digits, and an offset (`Z` or `+hh:mm`). One rule is beyond a pattern:
/// the year must stay within 0001 to 9999 once converted to UTC.
#[must_use]
pub fn date_time_pattern() -> &'static str {
    concat!(
        "^(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])",
        "T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?",
        "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
    )
}

/// The forms of a UUID the `uuid` crate parses: hyphenated, simple (32 hex
/// digits), braced and URN; never the nil UUID.
#[must_use]
pub fn uuid_pattern() -> &'static str {
    concat!(
        "^(?![{]?(?:urn:uuid:)?0{8}-?0{4}-?0{4}-?0{4}-?0{12}[}]?$)",
        "(?:[0-9A-Fa-f]{32}",
        "|(?:urn:uuid:)?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
        "|\\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\\})$"
    )
}

/// `schema_with` for an `IpAddr`: IPv4 or IPv6, by format and by pattern.
#[must_use]
pub fn ip_address(_: &mut SchemaGenerator) -> Schema {
    let (v4, v6) = ip_patterns();
    json_schema!({
        "type": "string",
        "anyOf": [
            {"format": "ipv4", "pattern": v4},
            {"format": "ipv6", "pattern": v6},
        ]
    })
}

/// `schema_with` for an e-mail address.
#[must_use]
pub fn email(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        // idn-email, not email: warren takes non-ASCII addresses.
        "format": "idn-email",
        "maxLength": 254,
        "pattern": email_pattern(),
    })
}

/// `schema_with` for a string that must not be blank.
#[must_use]
pub fn not_blank(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "minLength": 1, "pattern": not_blank_pattern()})
}

/// `schema_with` for an RFC 3339 timestamp.
#[must_use]
pub fn date_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time", "pattern": date_time_pattern()})
}

/// `schema_with` for a UUID.
#[must_use]
pub fn uuid(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "uuid", "pattern": uuid_pattern()})
}

/// `skip_serializing_if` for fields whose serde default is made on parse
/// (a fresh id, the current time): there is no fixed default to show, and
/// a generated one would change the schema on every run.
#[must_use]
pub fn made_on_parse<T>(_: &T) -> bool {
    true
}

/// The draft-07 schema of one envelope type, self-contained (no `$ref`),
/// with `event_type` pinned to `event_type`.
#[must_use]
pub fn envelope<T: JsonSchema>(event_type: &str, title: &str) -> Value {
    let settings = SchemaSettings::draft07().with(|s| s.inline_subschemas = true);
    let mut schema = settings.into_generator().into_root_schema_for::<T>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(title));
        if let Some(prop) = obj.get_mut("properties").and_then(|p| p.get_mut("event_type")) {
            *prop = json!({
                "description": "The event type, also the AMQP routing key.",
                "type": "string",
                "const": event_type,
            });
        }
    }
    schema
}

/// One schema for a body of any of `types` (`(event_type, schema)`): the
/// envelope schemas under `definitions`, and `oneOf` them (their
/// `event_type` constants make exactly one match).
#[must_use]
pub fn any_of_envelopes(types: &[(&str, Value)]) -> Value {
    let mut definitions = serde_json::Map::new();
    let mut one_of = Vec::new();
    for (name, schema) in types {
        let mut schema = schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("$schema");
        }
        definitions.insert((*name).to_owned(), schema);
        one_of.push(json!({"$ref": format!("#/definitions/{name}")}));
    }
    json!({
        "$schema": DRAFT_07,
        "title": "warren event",
        "description": "The body of any event warren knows: its `event_type` says which envelope schema applies.",
        "oneOf": one_of,
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_pattern_has_the_nine_forms_of_rfc_3986() {
        let (v4, v6) = ip_patterns();
        assert_eq!(v6.matches("::").count(), 8, "every form but the first has `::`");
        assert!(v6.contains(ipv4()), "an IPv4 tail is allowed");
        assert!(v4.starts_with('^') && v4.ends_with('$'));
    }

    #[test]
    fn patterns_use_no_class_shorthands_whose_meaning_differs_by_dialect() {
        let (v4, v6) = ip_patterns();
        for p in [
            email_pattern(),
            not_blank_pattern(),
            v4,
            v6,
            date_time_pattern().to_owned(),
            uuid_pattern().to_owned(),
        ] {
            for shorthand in [r"\d", r"\s", r"\S", r"\w", r"\b"] {
                assert!(!p.contains(shorthand), "{p} uses {shorthand}");
            }
        }
    }

    #[test]
    fn any_of_envelopes_refers_to_each_definition() {
        let doc = any_of_envelopes(&[("a.b", json!({"$schema": DRAFT_07, "type": "object"}))]);
        assert_eq!(doc["oneOf"][0]["$ref"], "#/definitions/a.b");
        assert_eq!(doc["definitions"]["a.b"], json!({"type": "object"}));
        assert_eq!(doc["$schema"], DRAFT_07);
    }
}
