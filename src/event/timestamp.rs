//! Timestamps every consumer reads: RFC 3339 as Go's `time.RFC3339` and
//! Python's `datetime.fromisoformat` both take it. chrono alone also takes a
//! space for the `T`, a lowercase `z`, years past 9999 (`+10000-…`) and leap
//! seconds; warren publishes `data` as it came, so those would reach other
//! languages and fail there.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9 digits,
//! then `Z` or `+hh:mm`/`-hh:mm`; years 0001 to 9999, also once converted
//! to UTC. For fields of your own event types:
//! `#[serde(deserialize_with = "warren::event::timestamp::deserialize")]`
//! (and `serialize_with = "warren::event::timestamp::serialize"`, which
//! writes what chrono writes, only faster).

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserializer, Serialize, Serializer, de};

/// The example every error message shows.
const EXAMPLE: &str = "2025-01-20T10:30:00Z";

/// Parses an RFC 3339 timestamp with a four-digit year and an offset.
///
/// # Errors
///
/// A message saying what is wrong, quoting the value (shortened): no offset,
/// a year outside 0001–9999, another shape, or a date that does not exist.
pub fn parse(s: &str) -> Result<DateTime<Utc>, String> {
    let shown = super::truncate(s, 64);
    let b = s.as_bytes();
    if b.first().is_some_and(|c| matches!(c, b'+' | b'-')) || b.iter().take_while(|c| c.is_ascii_digit()).count() > 4 {
        return Err(format!(
            "{shown:?} does not have a four-digit year: years are 0001 to 9999 (RFC 3339, e.g. {EXAMPLE:?})"
        ));
    }
    let offset = shape(b).ok_or_else(|| {
        format!(
            "{shown:?} is not an RFC 3339 timestamp: use YYYY-MM-DDTHH:MM:SS with `Z` or `+hh:mm`, e.g. {EXAMPLE:?}"
        )
    })?;
    if offset.is_empty() {
        return Err(format!(
            "{shown:?} has no UTC offset: an offset (`Z` or `+hh:mm`) is required, e.g. {EXAMPLE:?}"
        ));
    }
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{shown:?} is not a valid date and time: {e}"))?
        .with_timezone(&Utc);
    // Seconds are 00–59 by `shape`; a year 0001 or 9999 may leave the range
    // once converted to UTC, as which the envelope's timestamp is sent.
    if !(1..=9999).contains(&t.year()) || s.starts_with("0000") {
        return Err(format!("{shown:?} is out of range: years are 0001 to 9999, in UTC too"));
    }
    Ok(t)
}

/// Checks the shape `YYYY-MM-DDTHH:MM:SS[.fffffffff][offset]`; returns the
/// offset part (`Z`, `+hh:mm`, or empty when there is none), or `None` for
/// any other shape.
fn shape(b: &[u8]) -> Option<&[u8]> {
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    let ok = digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && seps.iter().all(|&(i, c)| b[i] == c)
        && b[17] <= b'5';
    if !ok {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = rest.is_empty()
        || rest == b"Z"
        || (rest.len() == 6
            && matches!(rest[0], b'+' | b'-')
            && rest[1..3].iter().all(u8::is_ascii_digit)
            && rest[3] == b':'
            && rest[4..6].iter().all(u8::is_ascii_digit));
    offset.then_some(rest)
}

/// Serde `deserialize_with` support: a string [`parse`]d strictly.
///
/// # Errors
///
/// Anything but a string, or a string [`parse`] refuses.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(Visitor)
}

/// Serde `serialize_with` support: the same text as chrono's own
/// `Serialize` (RFC 3339, `Z`, no fraction or 3, 6 or 9 digits), formatted
/// into a stack buffer. chrono goes through `fmt` one character at a time,
/// which serde_json escapes one by one: ~2,000 instructions per timestamp
/// against ~100 here, and an envelope has two.
///
/// # Errors
///
/// The serializer's.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match format(t, &mut buf) {
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default()),
        // Years past 9999 and leap seconds: chrono's way.
        None => t.serialize(s),
    }
}

/// Writes `t` as chrono's `Serialize` does; `None` outside years 0–9999 or
/// on a leap second.
fn format(t: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    let nanos = t.nanosecond();
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (at..at + digits).rev() {
            buf[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if digits > 0 {
        put(20, fraction, digits);
    }
    let mut fixed = |at: usize, b: u8| buf[at] = b;
    for (at, b) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        fixed(at, b);
    }
    let mut end = 19;
    if digits > 0 {
        buf[19] = b'.';
        end = 20 + digits;
    }
    buf[end] = b'Z';
    Some(end + 1)
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an RFC 3339 timestamp such as {EXAMPLE:?}")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        parse(s).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialize_writes_what_chrono_writes() {
        let with_ours = |t: &DateTime<Utc>| {
            let mut out = Vec::new();
            serialize(t, &mut serde_json::Serializer::new(&mut out)).unwrap();
            String::from_utf8(out).unwrap()
        };
        let base = parse("0001-01-01T00:00:00Z").unwrap().timestamp();
        let end = parse("9999-12-31T23:59:59Z").unwrap().timestamp();
        let nanos = [
            0,
            1,
            7,
            999,
            1_000,
            120_000,
            999_999,
            1_000_000,
            5_000_000,
            123_456_789,
            999_999_999,
        ];
        // A spread of instants over the whole range, every fraction shape.
        let mut seconds = base;
        let mut checked = 0;
        while seconds <= end {
            for n in nanos {
                let t = DateTime::from_timestamp(seconds, n).unwrap();
                assert_eq!(with_ours(&t), serde_json::to_string(&t).unwrap(), "{t:?}");
                checked += 1;
            }
            seconds += 7_919_993; // ~92 days, prime: hours, minutes and seconds vary
        }
        assert!(checked > 100_000, "{checked}");
        for t in ["0000-03-01T00:00:00Z", "2016-12-31T23:59:60Z", "+10000-01-01T00:00:00Z"] {
            let t = DateTime::parse_from_rfc3339(t).map_or_else(
                |_| DateTime::from_timestamp(end + 1, 0).unwrap(),
                |t| t.with_timezone(&Utc),
            );
            assert_eq!(with_ours(&t), serde_json::to_string(&t).unwrap(), "chrono's way: {t:?}");
        }
    }

    #[test]
    fn what_go_and_python_read_is_accepted() {
        for (ok, utc) in [
            ("2025-01-20T10:30:00Z", "2025-01-20T10:30:00+00:00"),
            ("2025-01-20T10:30:00.123456Z", "2025-01-20T10:30:00.123456+00:00"),
            (
                "2025-01-20T10:30:00.123456789-00:00",
                "2025-01-20T10:30:00.123456789+00:00",
            ),
            ("2025-01-20T10:30:00+05:30", "2025-01-20T05:00:00+00:00"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59+00:00"),
        ] {
            assert_eq!(parse(ok).map(|t| t.to_rfc3339()), Ok(utc.to_owned()), "{ok}");
        }
    }

    fn refused(s: &str) -> String {
        parse(s).expect_err(s)
    }

    #[test]
    fn no_offset_says_one_is_required() {
        // What Django sends with USE_TZ=False.
        let msg = refused("2025-01-20T10:30:00.123456");
        assert!(msg.contains("an offset (`Z` or `+hh:mm`) is required"), "{msg}");
        assert!(refused("2025-01-20T10:30:00").contains("no UTC offset"));
    }

    #[test]
    fn years_have_four_digits_and_stay_in_range_in_utc() {
        for s in [
            "+10000-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
        ] {
            assert!(refused(s).contains("four-digit year"), "{s}");
        }
        for s in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:00:00-05:00",
            "0001-01-01T00:30:00+01:00",
        ] {
            assert!(refused(s).contains("out of range"), "{s}");
        }
    }

    #[test]
    fn other_shapes_and_impossible_dates_are_refused() {
        for s in [
            "2025-01-20 10:30:00Z",
            "2025-01-20t10:30:00z",
            "2025-01-20T10:30:00z",
            "2025-01-20T10:30Z",
            "2025-01-20T10:30:60Z",
            "2025-01-20T10:30:00.Z",
            "2025-01-20T10:30:00.1234567891Z",
            "2025-01-20T10:30:00+0530",
            "2025-01-20T10:30:00+05:30:00",
            "2025-01-20",
            "yesterday",
            "",
        ] {
            assert!(refused(s).contains("RFC 3339"), "{s}: {}", refused(s));
        }
        for s in ["2025-02-30T00:00:00Z", "2025-01-20T24:00:00Z", "2025-13-01T00:00:00Z"] {
            assert!(refused(s).contains("not a valid date"), "{s}: {}", refused(s));
        }
    }

    #[test]
    fn serde_errors_name_the_problem() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(deserialize_with = "deserialize")]
            #[allow(dead_code)]
            at: DateTime<Utc>,
        }
        let err = serde_json::from_str::<T>(r#"{"at": "2025-01-20T10:30:00"}"#).unwrap_err();
        assert!(err.to_string().contains("no UTC offset"), "{err}");
        let err = serde_json::from_str::<T>(r#"{"at": 12}"#).unwrap_err();
        assert!(err.to_string().contains("an RFC 3339 timestamp"), "{err}");
    }
}
