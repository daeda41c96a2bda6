//! Which settings are secret: their redaction wherever settings are shown
//! (`Debug`, `warren config`, errors) and the list of secrets, in every form
//! they take, that the binary scrubs out of its logs.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{AmqpSettings, IngressSettings, RelaySettings, Settings, WebhookSettings};
use crate::uri::{database_passwords_of, passwords_of, redact_database_url, redact_url};

/// What a hidden value is shown as.
const HIDDEN: &str = "***";

impl Settings {
    /// A copy with the passwords in `amqp.url` and `webhook.url`, the
    /// ingress token and the webhook secret replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> Settings {
        let mut s = self.clone();
        s.amqp.url = redact_url(&s.amqp.url);
        s.webhook.url = s.webhook.url.as_deref().map(redact_url);
        s.relay.database_url = s.relay.database_url.as_deref().map(redact_database_url);
        for secret in [&mut s.ingress.token, &mut s.webhook.secret] {
            if secret.is_some() {
                *secret = Some(HIDDEN.into());
            }
        }
        s
    }

    /// Every secret these settings hold, as bytes: the passwords of
    /// `amqp.url` and `webhook.url` (as written and percent-decoded), the
    /// ingress token, and the webhook secret with its base64 part and the key
    /// that part encodes. Give them to `secrets::Scrubber`.
    #[must_use]
    pub fn secrets(&self) -> Vec<Vec<u8>> {
        let mut out = passwords_of(&self.amqp.url);
        if let Some(url) = &self.webhook.url {
            out.extend(passwords_of(url));
        }
        if let Some(url) = &self.relay.database_url {
            out.extend(database_passwords_of(url));
        }
        if let Some(token) = &self.ingress.token {
            out.push(token.as_bytes().to_vec());
        }
        if let Some(secret) = &self.webhook.secret {
            let secret = secret.trim();
            out.push(secret.as_bytes().to_vec());
            if let Some(encoded) = secret.strip_prefix("whsec_") {
                out.push(encoded.as_bytes().to_vec());
                out.extend(STANDARD.decode(encoded));
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

/// `Some("***")` for a set secret, so `Debug` still says whether it is set.
fn hidden(secret: Option<&String>) -> Option<&'static str> {
    secret.map(|_| HIDDEN)
}

// The `Debug` impls name every field (no `..`): a new field has to be
// placed here, and so decided on, before the crate compiles.

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            url,
            shuffle_urls,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            connection_name,
            heartbeat,
        } = self;
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(url))
            .field("shuffle_urls", shuffle_urls)
            .field("tls_ca_file", tls_ca_file)
            .field("tls_cert_file", tls_cert_file)
            .field("tls_key_file", tls_key_file)
            .field("connection_name", connection_name)
            .field("heartbeat", heartbeat)
            .finish()
    }
}

impl fmt::Debug for IngressSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            listen,
            max_body,
            max_batch,
            allowed_hosts,
            token,
            request_timeout,
            header_timeout,
            idle_timeout,
            max_connections,
        } = self;
        f.debug_struct("IngressSettings")
            .field("listen", listen)
            .field("max_body", max_body)
            .field("max_batch", max_batch)
            .field("allowed_hosts", allowed_hosts)
            .field("token", &hidden(token.as_ref()))
            .field("request_timeout", request_timeout)
            .field("header_timeout", header_timeout)
            .field("idle_timeout", idle_timeout)
            .field("max_connections", max_connections)
            .finish()
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            url,
            path,
            secret,
            timeout,
        } = self;
        f.debug_struct("WebhookSettings")
            .field("url", &url.as_deref().map(redact_url))
            .field("path", path)
            .field("secret", &hidden(secret.as_ref()))
            .field("timeout", timeout)
            .finish()
    }
}

impl fmt::Debug for RelaySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            database_url,
            table,
            batch_size,
            poll_interval,
            retention,
            pool_size,
        } = self;
        f.debug_struct("RelaySettings")
            .field("database_url", &database_url.as_deref().map(redact_database_url))
            .field("table", table)
            .field("batch_size", batch_size)
            .field("poll_interval", poll_interval)
            .field("retention", retention)
            .field("pool_size", pool_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secrets() -> Settings {
        let mut s = Settings::default();
        s.amqp.url = "amqp://admin:s3cr%2Ft@broker:5672/%2f".into();
        s.webhook.url = Some("https://hook:w3bpass@go.example/".into());
        s.ingress.token = Some("tok3n-1234".into());
        s.webhook.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        s
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let out = format!("{:?} {:#?}", with_secrets(), with_secrets());
        for secret in ["s3cr", "w3bpass", "tok3n", "MfKQ9r8G"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.contains("amqp://admin:***@broker:5672/%2f") && out.contains("Some(\"***\")"),
            "{out}"
        );
    }

    #[test]
    fn secrets_lists_each_secret_in_its_written_and_decoded_forms() {
        let secrets = with_secrets().secrets();
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        for expected in [
            b"s3cr%2Ft".as_slice(),
            b"s3cr/t",
            b"w3bpass",
            b"tok3n-1234",
            b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &key,
        ] {
            assert!(secrets.iter().any(|s| s == expected), "{expected:?} missing");
        }
        assert_eq!(Settings::default().secrets(), [b"guest".to_vec()]);
    }
}
