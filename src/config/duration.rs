//! `Duration` as a number of seconds or a string with units: `500ms`, `10s`,
//! `5m`, `1h 30m` (parsed by humantime), written back in warren's shortest form.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses a bare number of seconds (`1.5`, `30`) or what humantime reads:
/// `500ms`, `10s`, `5m`, `1h`, `1h 30m`, `2 minutes`.
///
/// # Errors
///
/// A message saying which forms are accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(seconds) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("invalid duration {s:?}: must be a positive number"));
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must be a positive number"));
    }
    humantime::parse_duration(s).map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 5m, 1h"))
}

/// The shortest exact form: `500ms`, `10s`, `5m`, `1h`.
#[must_use]
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Float(f64),
    Str(String),
}

impl Raw {
    fn into_duration(self) -> Result<Duration, String> {
        match self {
            Raw::Int(n) => Ok(Duration::from_secs(n)),
            Raw::Float(f) => parse(&f.to_string()),
            Raw::Str(s) => parse(&s),
        }
    }
}

/// Serde `with` support.
///
/// # Errors
///
/// Never for a well-formed serializer.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Serde `with` support.
///
/// # Errors
///
/// A value that is not a duration.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Raw::deserialize(d)?.into_duration().map_err(de::Error::custom)
}

/// Serde `with` support for a list of durations (`consumer.retry.delays`).
pub(super) mod list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&super::format(*d))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<super::Raw>::deserialize(d)?
            .into_iter()
            .map(|r| r.into_duration().map_err(de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_forms_and_a_bare_number_of_seconds() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2 minutes", Duration::from_secs(120)),
            (" 7 ", Duration::from_secs(7)),
            ("1.5", Duration::from_millis(1500)),
            ("1.5s", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn what_is_refused_says_what_is_accepted() {
        for bad in ["soon", "", "10x", "1.5.2s"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("use e.g. 500ms, 10s, 5m, 1h"), "{bad}: {e}");
        }
        for negative in ["-1", "-1s", "-0.5", "inf", "NaN"] {
            let e = parse(negative).unwrap_err();
            assert!(e.contains("must be a positive number"), "{negative}: {e}");
        }
    }

    #[test]
    fn the_written_form_reads_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }
}
