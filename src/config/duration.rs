//! `Duration` as a number of seconds or a string with a unit: `500ms`, `10s`, `5m`, `1h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de};

/// Parses `1.5`, `10s`, `500ms`, `5m` or `1h`; a bare number is seconds.
///
/// # Errors
///
/// A message saying which forms are accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 5m, 1h"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid duration {s:?}: must be a positive number"));
    }
    Ok(Duration::from_secs_f64(n * mult))
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
