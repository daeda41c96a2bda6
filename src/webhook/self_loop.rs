//! Refusing a `webhook.url` that leads back into warren's own ingress: each
//! forwarded event would be published again, consumed again and forwarded
//! again, without end (the seed's `GO_BACKEND_URL=http://localhost:8080`
//! did exactly that when the ingress listened on 8080).
//!
//! [`reaches_ingress`] is the rule, on addresses alone; [`check_not_ingress`]
//! applies it to the settings, resolving the URL's host first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

use super::WebhookError;
use crate::config::WebhookSettings;

/// How long resolving the webhook's host name may take at start. A host that
/// does not resolve by then is not checked here; the ingress still refuses
/// what warren forwarded ([`crate::event::FORWARDED_HEADER`]).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a connection to `target` reaches an ingress listening on `listen`.
///
/// The same port is required. Then the same address is a loop; so is any
/// address of this host (`is_local`, loopback, `0.0.0.0`) when the ingress
/// listens on every address (`0.0.0.0` or `[::]`); and any loopback address
/// when it listens on one: `localhost` resolves to several of them and a
/// client tries each.
#[must_use]
pub fn reaches_ingress(target: SocketAddr, listen: SocketAddr, is_local: impl Fn(IpAddr) -> bool) -> bool {
    if target.port() != listen.port() {
        return false;
    }
    let (to, on) = (target.ip().to_canonical(), listen.ip().to_canonical());
    if to == on {
        return true;
    }
    // Connecting to 0.0.0.0 or [::] reaches this host too.
    let this_host = to.is_loopback() || to.is_unspecified();
    if on.is_unspecified() {
        this_host || is_local(to)
    } else {
        on.is_loopback() && this_host
    }
}

/// Refuses a `webhook.url` (`GO_BACKEND_URL`) that reaches the ingress on
/// `ingress_listen`, by [`reaches_ingress`], for every address its host
/// resolves to. A host that does not resolve within two seconds is let
/// through (logged at debug): the receiver may come up later.
///
/// # Errors
///
/// [`WebhookError::LoopsToIngress`] naming both settings, or the errors of
/// an unusable URL ([`WebhookError::MissingUrl`], [`WebhookError::InvalidUrl`]).
pub async fn check_not_ingress(settings: &WebhookSettings, ingress_listen: SocketAddr) -> Result<(), WebhookError> {
    let endpoint = super::endpoint(settings.url.as_deref(), &settings.path)?;
    let targets = resolve(&endpoint).await;
    if targets.iter().any(|t| reaches_ingress(*t, ingress_listen, is_local)) {
        return Err(WebhookError::LoopsToIngress {
            url: super::shown(&endpoint),
            listen: ingress_listen,
        });
    }
    Ok(())
}

/// The socket addresses a request to `url` may connect to.
async fn resolve(url: &Url) -> Vec<SocketAddr> {
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Vec::new();
    };
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    // Whatever /etc/hosts says, `localhost` is this host (RFC 6761).
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        return loopback.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::debug!(host, error = %e, "webhook host does not resolve; not checked against the ingress");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(
                host,
                "webhook host did not resolve in time; not checked against the ingress"
            );
            Vec::new()
        }
    }
}

/// Whether `ip` is an address of this host: binding to it works only then.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Only 192.0.2.7 (and loopback) are this host's addresses here.
    fn local(ip: IpAddr) -> bool {
        ip.is_loopback() || ip == "192.0.2.7".parse::<IpAddr>().unwrap()
    }

    #[test]
    fn the_same_address_and_port_is_a_loop() {
        for (target, listen) in [
            ("127.0.0.1:8597", "127.0.0.1:8597"),
            ("192.0.2.7:80", "192.0.2.7:80"),
            ("[::1]:8597", "[::1]:8597"),
            ("[::ffff:127.0.0.1]:8597", "127.0.0.1:8597"),
        ] {
            assert!(
                reaches_ingress(addr(target), addr(listen), local),
                "{target} -> {listen}"
            );
        }
    }

    #[test]
    fn any_loopback_reaches_an_ingress_on_loopback() {
        for target in ["127.0.0.2:8597", "[::1]:8597", "0.0.0.0:8597"] {
            assert!(reaches_ingress(addr(target), addr("127.0.0.1:8597"), local), "{target}");
        }
    }

    #[test]
    fn any_local_address_reaches_an_ingress_on_every_address() {
        for listen in ["0.0.0.0:8597", "[::]:8597"] {
            for target in ["127.0.0.1:8597", "[::1]:8597", "192.0.2.7:8597", "0.0.0.0:8597"] {
                assert!(
                    reaches_ingress(addr(target), addr(listen), local),
                    "{target} -> {listen}"
                );
            }
            assert!(
                !reaches_ingress(addr("198.51.100.1:8597"), addr(listen), local),
                "another host"
            );
        }
    }

    #[test]
    fn another_port_or_host_is_not_a_loop() {
        for (target, listen) in [
            ("127.0.0.1:8080", "127.0.0.1:8597"),
            ("127.0.0.1:8597", "0.0.0.0:8080"),
            ("198.51.100.1:8597", "127.0.0.1:8597"),
            ("127.0.0.1:8597", "192.0.2.7:8597"),
        ] {
            assert!(
                !reaches_ingress(addr(target), addr(listen), local),
                "{target} -> {listen}"
            );
        }
    }

    async fn check(url: &str, path: &str, listen: SocketAddr) -> Result<(), WebhookError> {
        let settings = WebhookSettings {
            url: Some(url.into()),
            path: path.into(),
            secret: None,
            timeout: Duration::from_secs(1),
        };
        check_not_ingress(&settings, listen).await
    }

    #[tokio::test]
    async fn settings_pointing_at_the_ingress_are_refused_naming_both() {
        let listen = addr("127.0.0.1:8597");
        for url in [
            "http://localhost:8597",
            "http://127.0.0.1:8597/",
            "http://[::1]:8597",
            "http://u:hunter2@LOCALHOST:8597",
        ] {
            let err = check(url, "/events", listen).await.unwrap_err();
            assert!(matches!(err, WebhookError::LoopsToIngress { .. }), "{url}: {err:?}");
            let msg = err.to_string();
            for needle in ["webhook.url", "GO_BACKEND_URL", "ingress.listen", "127.0.0.1:8597"] {
                assert!(msg.contains(needle), "{url}: {msg}");
            }
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let everywhere = addr("0.0.0.0:80");
        let err = check("http://localhost", "", everywhere).await;
        assert!(matches!(err, Err(WebhookError::LoopsToIngress { .. })), "{err:?}");
        for ok in [
            "http://localhost:8080",
            "http://127.0.0.1:8081",
            "http://198.51.100.1:8597",
        ] {
            assert_eq!(check(ok, "/events", listen).await, Ok(()), "{ok}");
        }
    }
}
