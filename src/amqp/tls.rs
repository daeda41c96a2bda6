//! TLS to `amqps://` nodes: the CA file and client certificate of the
//! settings as lapin's TLS config, and failed handshakes told apart from
//! unreachable nodes (a wrong CA or host name does not fix itself).

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::config::AmqpSettings;

/// The TLS files of the settings; read at each connect, so that renewed
/// certificates are picked up by the next reconnect.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsFiles {
    pub(crate) fn new(amqp: &AmqpSettings) -> Self {
        Self {
            ca: amqp.tls_ca_file.clone(),
            cert: amqp.tls_cert_file.clone(),
            key: amqp.tls_key_file.clone(),
        }
    }

    /// lapin's TLS config: the CA file's certificates trusted on top of the
    /// system roots, and the client certificate when one is set.
    ///
    /// The error names the setting and the file.
    pub(crate) fn load(&self) -> Result<OwnedTLSConfig, String> {
        let cert_chain = match &self.ca {
            Some(path) => Some(read_pem(path, "amqp.tls_ca_file", "CERTIFICATE")?),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_pem(cert, "amqp.tls_cert_file", "CERTIFICATE")?.into_bytes(),
                key: read_pem(key, "amqp.tls_key_file", "PRIVATE KEY")?.into_bytes(),
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }
}

/// Reads a PEM file that must hold a `-----BEGIN …{label}-----` block.
fn read_pem(path: &Path, setting: &str, label: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if !text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
    {
        return Err(format!(
            "{setting} {}: no PEM {label} in it (expected a -----BEGIN …{label}----- block)",
            path.display()
        ));
    }
    Ok(text)
}

/// What a failed TLS handshake means for the operator, when `reason` (the
/// error lapin reports) is one; `None` for every other failure.
pub(crate) fn explain(reason: &str) -> Option<String> {
    // rustls' messages, as they reach us through lapin's I/O error.
    let hint = if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") {
        "the broker's certificate is not signed by a trusted CA: set amqp.tls_ca_file to the CA that signed it"
    } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
        "the broker's certificate does not name the host in amqp.url: connect with a host name the certificate lists"
    } else if reason.contains("Expired") || reason.contains("NotValidYet") {
        "the broker's certificate is outside its validity period"
    } else if reason.contains("CertificateRequired") || reason.contains("certificate required") {
        "the broker requires a client certificate: set amqp.tls_cert_file and amqp.tls_key_file"
    } else if reason.contains("invalid peer certificate")
        || reason.contains("received fatal alert")
        || reason.contains("native certificates")
    {
        "TLS handshake failed"
    } else {
        return None;
    };
    Some(format!("{hint} ({reason})"))
}

/// `reason` with a hint when an `amqps://` node without a client
/// certificate hung up: with TLS 1.3 a broker that requires one can close
/// the connection after the handshake instead of sending its alert, and
/// the client then sees only a reset (not treated as a TLS error: a reset
/// has other causes).
pub(crate) fn hang_up_hint(reason: String, without_client_cert: bool) -> String {
    let hung_up = [
        "reset by peer",
        "unexpected end of file",
        "UnexpectedEof",
        "Broken pipe",
    ]
    .iter()
    .any(|s| reason.contains(s));
    if without_client_cert && hung_up {
        format!(
            "{reason} (a broker that requires a client certificate hangs up like this: set amqp.tls_cert_file and amqp.tls_key_file)"
        )
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_or_wrong_files_name_the_setting() {
        let files = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = files.load().unwrap_err();
        assert!(
            err.contains("amqp.tls_ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let not_pem = TlsFiles {
            ca: Some(temp("ca.pem", "hello")),
            ..TlsFiles::default()
        };
        assert!(not_pem.load().unwrap_err().contains("no PEM CERTIFICATE"));
    }

    #[test]
    fn files_become_lapins_config() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
        let files = TlsFiles {
            ca: Some(temp("ca.pem", cert)),
            cert: Some(temp("client.pem", cert)),
            key: Some(temp("client.key", key)),
        };
        let config = files.load().unwrap();
        assert_eq!(config.cert_chain.as_deref(), Some(cert));
        assert!(matches!(config.identity, Some(OwnedIdentity::PKCS8 { .. })));
        assert_eq!(TlsFiles::default().load().unwrap(), OwnedTLSConfig::default());
    }

    #[test]
    fn handshake_failures_are_explained() {
        let unknown = explain("invalid peer certificate: UnknownIssuer").unwrap();
        assert!(unknown.contains("amqp.tls_ca_file"), "{unknown}");
        assert!(
            explain("invalid peer certificate: NotValidForName")
                .unwrap()
                .contains("host name")
        );
        assert_eq!(explain("Connection refused (os error 111)"), None);
    }

    #[test]
    fn a_hang_up_without_a_client_certificate_gets_a_hint() {
        let reset = "Connection reset by peer (os error 104)".to_owned();
        assert!(hang_up_hint(reset.clone(), true).contains("amqp.tls_cert_file"));
        assert_eq!(hang_up_hint(reset.clone(), false), reset);
        let refused = "Connection refused (os error 111)".to_owned();
        assert_eq!(hang_up_hint(refused.clone(), true), refused);
    }
}
