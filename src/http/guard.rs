//! Which pages may reach the routes that act on events: the `Host` a
//! request names, against DNS rebinding (a page whose name now resolves to
//! the ingress's address reads `/dead` as its own origin), and the `Origin`
//! of a state-changing request, against pages of other sites that post to
//! the ingress on the operator's loopback.
//!
//! A request without `Host` is let through: browsers always send it, and a
//! client that is not a browser could send any name anyway.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};

use super::AppState;
use super::error::ApiError;
use crate::config::IngressSettings;

/// The `Host` names a request may use (`ingress.allowed_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hosts {
    /// Each with its port if it names one (then only that port); names
    /// compare without case.
    names: Vec<(String, Option<String>)>,
    /// No list and not on loopback: any name (the token guards `/dead` there).
    any: bool,
}

impl Hosts {
    /// `ingress.allowed_hosts`, or by default, on a loopback address, the
    /// names a browser on this machine uses: `localhost`, `127.0.0.1`,
    /// `[::1]` and the listen address. Those match on any port: a rebound
    /// page names its own host, never these, and the port the ingress is
    /// bound to may not be the configured one (`:0`).
    pub(crate) fn new(settings: &IngressSettings) -> Self {
        let configured = !settings.allowed_hosts.is_empty();
        let loopback = settings.listen.ip().is_loopback();
        let mut names: Vec<(String, Option<String>)> = settings
            .allowed_hosts
            .iter()
            .map(|h| {
                let (name, port) = split_port(h);
                (name.to_owned(), port.map(str::to_owned))
            })
            .collect();
        if !configured && loopback {
            let own = match settings.listen.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            for name in ["localhost", "127.0.0.1", "[::1]", &own] {
                names.push((name.to_owned(), None));
            }
        }
        Self {
            names,
            any: !configured && !loopback,
        }
    }

    /// Whether `host` (a `Host` value: `name` or `name:port`) is one of ours.
    fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        // Borrowed and compared without case: this runs on every /events request.
        let (name, port) = split_port(host);
        self.names
            .iter()
            .any(|(n, p)| n.eq_ignore_ascii_case(name) && p.as_deref().is_none_or(|p| Some(p) == port))
    }
}

/// `name:port` as the name and the port; an IPv6 name keeps its brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let host = host.trim();
    let colon = match host.rfind(']') {
        Some(end) => host[end..].find(':').map(|i| end + i),
        None => host.find(':'),
    };
    match colon {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

/// The request's `Host`: the header, else the authority of an absolute URI.
fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    match headers.get(header::HOST) {
        Some(v) => Some(v.to_str().unwrap_or("\u{fffd}")),
        None => uri.authority().map(|a| a.as_str()),
    }
}

/// Extracting it refuses (421) a request whose `Host` is not one of
/// [`Hosts`].
pub(crate) struct KnownHost;

impl FromRequestParts<AppState> for KnownHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match host_of(&parts.headers, &parts.uri) {
            Some(host) if !state.hosts().allows(host) => Err(ApiError::unknown_host(host)),
            _ => Ok(Self),
        }
    }
}

/// Extracting it refuses (403) a request with an `Origin` other than the
/// ingress's own (`http://` or `https://` and the request's allowed `Host`):
/// a page of another site, or an opaque `null` origin. Only the `/dead`
/// routes change state on a browser's word, so only they use it.
#[cfg(feature = "dead")]
pub(crate) struct SameOrigin;

#[cfg(feature = "dead")]
impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(Self);
        };
        let origin = origin.to_str().unwrap_or("\u{fffd}");
        let host = host_of(&parts.headers, &parts.uri).filter(|h| state.hosts().allows(h));
        let own = host.is_some_and(|host| {
            let given = origin.trim().to_ascii_lowercase();
            let host = host.trim().to_ascii_lowercase();
            given == format!("http://{host}") || given == format!("https://{host}")
        });
        if own {
            Ok(Self)
        } else {
            Err(ApiError::foreign_origin(origin))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn hosts(listen: &str, allowed: &[&str]) -> Hosts {
        let mut s = Settings::default().ingress;
        s.listen = listen.parse().unwrap();
        s.allowed_hosts = allowed.iter().map(|h| (*h).to_owned()).collect();
        Hosts::new(&s)
    }

    #[test]
    fn loopback_answers_to_its_own_names_only() {
        let h = hosts("127.0.0.1:8597", &[]);
        for ok in [
            "127.0.0.1:8597",
            "localhost:8597",
            "LOCALHOST:41234",
            "[::1]:8597",
            "localhost",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8597",
            "127.0.0.1.nip.io:8597",
            "[::2]:8597",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        assert!(hosts("[::1]:9000", &[]).allows("[::1]:9000"));
        assert!(hosts("127.0.0.2:9000", &[]).allows("127.0.0.2:9000"));
    }

    #[test]
    fn a_list_replaces_the_defaults_and_anything_goes_off_loopback_without_one() {
        let h = hosts("127.0.0.1:8597", &["warren.internal", "proxy:443", "[::1]:1"]);
        assert!(h.allows("warren.internal") && h.allows("warren.internal:8597") && h.allows("proxy:443"));
        assert!(h.allows("[::1]:1") && !h.allows("[::1]:2"));
        assert!(!h.allows("localhost:8597") && !h.allows("proxy:8597"));
        assert!(hosts("0.0.0.0:8597", &[]).allows("warren:8597"));
        assert!(!hosts("0.0.0.0:8597", &["warren"]).allows("attacker.example"));
    }
}
