//! Listen addresses: an IP address and port, or a host name and port
//! (`localhost:8597`) resolved once, when the settings are read.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer, de};

/// `text` as a socket address: parsed when it is an IP address and port,
/// else resolved, preferring an IPv4 address (what `localhost` means to most
/// clients: the one address the ingress binds should be the one they try).
///
/// # Errors
///
/// A missing port, or a host name that does not resolve, in words.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("it has no port".into());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("it needs a host and a port from 0 to 65535".into());
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("host {host} does not resolve: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("host {host} resolves to no address"))
}

/// Deserializes a [`SocketAddr`] from an address or `host:port`.
///
/// # Errors
///
/// See [`resolve`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve(&text).map_err(de::Error::custom)
}

/// [`deserialize`] for an optional address.
pub mod option {
    use super::{Deserialize, Deserializer, SocketAddr, de, resolve};

    /// Deserializes an optional [`SocketAddr`] from an address or `host:port`.
    ///
    /// # Errors
    ///
    /// See [`resolve`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| resolve(&text).map_err(de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_resolve_and_addresses_parse() {
        assert_eq!(resolve("127.0.0.1:8597").unwrap().to_string(), "127.0.0.1:8597");
        assert_eq!(resolve("[::1]:8597").unwrap().to_string(), "[::1]:8597");
        let local = resolve("localhost:8597").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8597, "{local}");
        assert!(local.is_ipv4(), "{local}");
        assert!(resolve("localhost").unwrap_err().contains("no port"));
        assert!(resolve("localhost:http").is_err());
        assert!(
            resolve("no-such-host.invalid:1")
                .unwrap_err()
                .contains("does not resolve")
        );
    }
}
