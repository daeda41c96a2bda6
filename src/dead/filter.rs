//! Which parked events an operation selects: the filters `list`, `replay`
//! and `purge` share, on the command line and as HTTP query parameters.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::group::group_of;
use super::parked::Parked;

/// Every filter is optional; an event is selected when it passes all that
/// are set. `limit` caps how many are selected, in queue order (oldest
/// parked first).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Event type (`user.login`): only that type's `.dead` queue is read.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// `x-warren-reason` (exhausted, permanent, malformed, invalid, unhandled).
    #[serde(default)]
    pub reason: Option<String>,
    /// First failure at or after this time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// First failure before this time.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub event_id: Option<String>,
    /// A group id from `stats`.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether `p` passes every filter but `limit`. Events without a first
    /// failure time never pass `since` or `until`.
    #[must_use]
    pub fn matches(&self, p: &Parked) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
        let time_ok = |bound: Option<DateTime<Utc>>, ok: fn(DateTime<Utc>, DateTime<Utc>) -> bool| {
            bound.is_none_or(|b| p.first_failure.is_some_and(|t| ok(t, b)))
        };
        eq(&self.event_type, p.event_type.as_deref())
            && eq(&self.reason, Some(&p.reason))
            && eq(&self.event_id, p.event_id.as_deref())
            && time_ok(self.since, |t, b| t >= b)
            && time_ok(self.until, |t, b| t < b)
            && self.group.as_deref().is_none_or(|g| g == group_of(p))
    }

    /// Whether the `.dead` queue of `event_type` can hold selected events.
    #[must_use]
    pub fn reads_type(&self, event_type: &str) -> bool {
        self.event_type.as_deref().is_none_or(|t| t == event_type)
    }
}

/// Counts selections against `limit`.
#[derive(Debug)]
pub(crate) struct Selector<'a> {
    filter: &'a Filter,
    selected: usize,
}

impl<'a> Selector<'a> {
    pub(crate) fn new(filter: &'a Filter) -> Self {
        Self { filter, selected: 0 }
    }

    /// Whether `p` is selected; counts it when it is.
    pub(crate) fn select(&mut self, p: &Parked) -> bool {
        let room = self.filter.limit.is_none_or(|l| self.selected < l);
        let yes = room && self.filter.matches(p);
        self.selected += usize::from(yes);
        yes
    }
}

/// A time on the command line: RFC 3339 (`2025-01-20T10:30:00Z`), or a
/// duration ago (`90m`, `2h`, `36h`).
///
/// # Errors
///
/// A message naming both accepted forms.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = crate::config::duration::parse(s)
        .map_err(|_| format!("invalid time {s:?}: use RFC 3339 (2025-01-20T10:30:00Z) or a duration ago (90m, 2h)"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("invalid time {s:?}: too far back"))?;
    Ok(now - ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> Parked {
        Parked {
            event_id: Some("e1".into()),
            event_type: Some("user.login".into()),
            user_id: Some(1),
            reason: "exhausted".into(),
            error: Some("HTTP 503".into()),
            attempts: Some(4),
            first_failure: Some("2025-01-02T00:00:00Z".parse().unwrap()),
            dead_lettered_at: None,
            queue: "s.user.login.dead".into(),
            replays: 0,
            body_size: 10,
        }
    }

    #[test]
    fn every_filter_can_exclude() {
        let p = parked();
        assert!(Filter::default().matches(&p));
        let cases = [
            Filter {
                event_type: Some("user.registered".into()),
                ..Filter::default()
            },
            Filter {
                reason: Some("permanent".into()),
                ..Filter::default()
            },
            Filter {
                event_id: Some("e2".into()),
                ..Filter::default()
            },
            Filter {
                since: Some("2025-01-03T00:00:00Z".parse().unwrap()),
                ..Filter::default()
            },
            Filter {
                until: Some("2025-01-02T00:00:00Z".parse().unwrap()),
                ..Filter::default()
            },
            Filter {
                group: Some("00000000".into()),
                ..Filter::default()
            },
        ];
        for f in cases {
            assert!(!f.matches(&p), "{f:?}");
        }
        let all = Filter {
            event_type: Some("user.login".into()),
            reason: Some("exhausted".into()),
            event_id: Some("e1".into()),
            since: Some("2025-01-02T00:00:00Z".parse().unwrap()),
            until: Some("2025-01-02T00:00:01Z".parse().unwrap()),
            group: Some(group_of(&p)),
            limit: None,
        };
        assert!(all.matches(&p));
    }

    #[test]
    fn no_first_failure_fails_time_filters() {
        let p = Parked {
            first_failure: None,
            ..parked()
        };
        let f = Filter {
            since: Some("2000-01-01T00:00:00Z".parse().unwrap()),
            ..Filter::default()
        };
        assert!(!f.matches(&p));
    }

    #[test]
    fn limit_caps_the_selection() {
        let f = Filter {
            limit: Some(2),
            ..Filter::default()
        };
        let mut s = Selector::new(&f);
        let got: Vec<bool> = (0..4).map(|_| s.select(&parked())).collect();
        assert_eq!(got, [true, true, false, false]);
    }

    #[test]
    fn times_are_rfc3339_or_ago() {
        let now: DateTime<Utc> = "2025-01-02T12:00:00Z".parse().unwrap();
        assert_eq!(parse_time("2h", now).unwrap().to_rfc3339(), "2025-01-02T10:00:00+00:00");
        assert_eq!(
            parse_time("2025-01-01T00:00:00+01:00", now).unwrap().to_rfc3339(),
            "2024-12-31T23:00:00+00:00"
        );
        assert!(parse_time("yesterday", now).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn query_parameters_deserialize() {
        let f: Filter = serde_json::from_str(r#"{"type":"user.login","limit":3}"#).unwrap();
        assert_eq!(f.event_type.as_deref(), Some("user.login"));
        assert_eq!(f.limit, Some(3));
        assert!(serde_json::from_str::<Filter>(r#"{"typo":1}"#).is_err());
    }
}
