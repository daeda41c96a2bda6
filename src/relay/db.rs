//! Connecting to PostgreSQL: the connection string (URL or key=value, as
//! libpq takes it), TLS through rustls with libpq's `sslmode` meanings, the
//! relay's pool, and a lone connection for LISTEN.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::RelayError;

/// A connection outside the pool, to be driven by its owner.
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// What the relay connects with: the parsed configuration and its TLS.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Database {
    /// Parses `relay.database_url`. `sslmode` means what it means to libpq:
    /// `disable`; `prefer` (the default) and `require` encrypt without
    /// checking the server's certificate; `verify-ca` and `verify-full`
    /// check it against the system's roots. `application_name` defaults
    /// to `warren relay`.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`] when the string does not parse (the message
    /// leaves the string out: it may hold the password).
    pub fn new(url: &str, application_name: &str) -> Result<Self, RelayError> {
        let verify = url.contains("sslmode=verify-full") || url.contains("sslmode=verify-ca");
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| RelayError::Config(format!("relay.database_url does not parse: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls_config(verify)?),
        })
    }

    /// A pool of `size` connections, opened on demand and checked (a
    /// round trip) before reuse, so a connection the server closed is
    /// replaced rather than handed out.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`] for a pool that cannot be built.
    pub fn pool(&self, size: usize) -> Result<Pool, RelayError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| RelayError::Config(format!("building the database pool: {e}")))
    }

    /// One connection outside the pool (for LISTEN: notifications arrive
    /// on the connection object, which the pool keeps to itself).
    ///
    /// # Errors
    ///
    /// [`RelayError::Database`] when the server cannot be reached.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, Connection), RelayError> {
        Ok(self.config.connect(self.tls.clone()).await?)
    }
}

fn tls_config(verify: bool) -> Result<rustls::ClientConfig, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Config(format!("TLS: {e}")))?;
    let config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(RelayError::Config(
                "sslmode=verify-full: no system root certificates found".into(),
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// libpq's `sslmode=prefer`/`require`: the connection is encrypted, the
/// server's certificate is not checked (signatures still are). Use
/// `verify-full` where that matters.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_errors_leave_the_password_out() {
        assert!(Database::new("postgres://u:pw@127.0.0.1:5432/test?sslmode=verify-full", "t").is_ok());
        assert!(Database::new("host=127.0.0.1 user=postgres dbname=test sslmode=disable", "t").is_ok());
        let err = Database::new("postgres://u:s3cret@h/db?sslmode=sometimes", "t")
            .err()
            .expect("a bad sslmode is refused")
            .to_string();
        assert!(err.contains("relay.database_url") && !err.contains("s3cret"), "{err}");
    }
}
