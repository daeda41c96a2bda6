//! A small YAML emitter for JSON values: block style, keys in a chosen
//! order, strings plain only when YAML cannot read them as anything else.
//!
//! serde_yaml is unmaintained and its forks are young; a JSON value needs
//! little of YAML. Anything not obviously plain is written as a JSON string,
//! which YAML reads as a double-quoted scalar with the same escapes.

use std::fmt::Write;

use serde_json::Value;

/// `value` as a YAML document. Map keys are ordered by `rank` (lower first),
/// ties by name.
#[must_use]
pub fn to_string(value: &Value, rank: &dyn Fn(&str) -> usize) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => map(&mut out, value, 0, rank),
        Value::Array(a) if !a.is_empty() => seq(&mut out, value, 0, rank),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn map(out: &mut String, value: &Value, indent: usize, rank: &dyn Fn(&str) -> usize) {
    let Value::Object(m) = value else { return };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    for (i, key) in keys.into_iter().enumerate() {
        // The first entry of a map inside a sequence goes on the dash's line.
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str(&string(key));
        out.push(':');
        entry(out, &m[key], indent, rank);
    }
}

fn seq(out: &mut String, value: &Value, indent: usize, rank: &dyn Fn(&str) -> usize) {
    let Value::Array(items) = value else { return };
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => map(out, item, indent + 2, rank),
            Value::Array(a) if !a.is_empty() => seq(out, item, indent + 2, rank),
            other => {
                out.push_str(&block_or_scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`: a nested block on the next lines, or a scalar.
fn entry(out: &mut String, value: &Value, indent: usize, rank: &dyn Fn(&str) -> usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            map(out, value, indent + 2, rank);
        }
        // Sequences sit at their key's indentation, the common style.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            seq(out, value, indent, rank);
        }
        other => {
            out.push(' ');
            out.push_str(&block_or_scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    let _ = write!(out, "{:indent$}", "");
}

/// A multi-line string as a literal block (`|-`), anything else as a scalar.
fn block_or_scalar(value: &Value, indent: usize) -> String {
    if let Value::String(s) = value
        && s.contains('\n')
        && !s.ends_with('\n')
        && !s.starts_with([' ', '\n'])
        && s.chars().all(|c| c == '\n' || !c.is_control())
    {
        let mut block = String::from("|-");
        for line in s.split('\n') {
            block.push('\n');
            if !line.is_empty() {
                pad(&mut block, indent);
                block.push_str(line);
            }
        }
        return block;
    }
    scalar(value)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => string(s),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

/// Words YAML 1.1 or 1.2 reads as booleans or null.
const RESERVED: &[&str] = &["true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"];

/// A string plain when it cannot be read as another type or as YAML syntax,
/// else JSON-quoted.
fn string(s: &str) -> String {
    let mut chars = s.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || " _./()+,=-".contains(c))
        && !s.ends_with(' ')
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn alphabetical(_: &str) -> usize {
        0
    }

    #[test]
    fn nested_maps_sequences_and_scalars() {
        let v = json!({"b": [1, {"x": "w", "z": [true]}, []], "a": {"k": null, "e": {}}, "c": "two\nlines"});
        let text = to_string(&v, &alphabetical);
        assert_eq!(
            text,
            "a:\n  e: {}\n  k: null\nb:\n- 1\n- x: w\n  z:\n  - true\n- []\nc: |-\n  two\n  lines\n"
        );
    }

    #[test]
    fn keys_follow_the_rank_then_the_name() {
        let v = json!({"b": 1, "a": 2, "first": 3});
        let text = to_string(&v, &|k| usize::from(k != "first"));
        assert_eq!(text, "first: 3\na: 2\nb: 1\n");
    }

    #[test]
    fn strings_that_yaml_would_read_otherwise_are_quoted() {
        for (s, yaml) in [
            ("user.login", "user.login"),
            ("$ref", "$ref"),
            ("", "\"\""),
            ("10", "\"10\""),
            ("true", "\"true\""),
            ("No", "\"No\""),
            ("#/channels/a", "\"#/channels/a\""),
            ("a: b", "\"a: b\""),
            ("a #b", "\"a #b\""),
            ("0.9.1", "\"0.9.1\""),
            ("x-queue-type", "x-queue-type"),
            ("tab\there", "\"tab\\there\""),
            ("trailing ", "\"trailing \""),
        ] {
            assert_eq!(string(s), yaml, "{s:?}");
        }
    }
}
