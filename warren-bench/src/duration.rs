//! `--duration`'s value: a number with a unit (`500ms`, `20s`, `2m`, `1h`),
//! or a bare number of seconds, as warren's settings take durations.

use std::time::Duration;

/// Parses `500ms`, `20s`, `2m`, `1h` or `1.5` (seconds).
///
/// # Errors
///
/// A message saying which forms are accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let units = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let (number, scale) = units
        .iter()
        .find_map(|&(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((s, 1.0));
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 5m, 1h"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid duration {s:?}: must be a positive number"));
    }
    Ok(Duration::from_secs_f64(n * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn anything_else_is_refused_naming_the_forms() {
        assert!(parse("soon").unwrap_err().contains("use e.g. 500ms"));
        assert!(parse("-1s").unwrap_err().contains("positive"));
    }
}
