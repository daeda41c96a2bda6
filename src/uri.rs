//! AMQP URIs: parsing (IP-literal hosts kept), checking, the virtual host,
//! and redaction of the password wherever a URI is shown.

use lapin::uri::AMQPUri;

/// Parses an AMQP URI, keeping an IP-literal host as written.
///
/// # Errors
///
/// What is wrong with it, without the password.
pub fn parse(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    // amq-protocol-uri only takes DNS names as host and falls back to
    // "localhost" for an IP literal: take the host from the URL ourselves.
    if let Some(host) = host_of(url) {
        uri.authority.host = host;
    }
    Ok(uri)
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Checks that `url` is a usable AMQP URI.
///
/// # Errors
///
/// What is wrong with it, without the password.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// The URL with its password replaced by `***`, safe to log or print.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// A PostgreSQL connection string with its password replaced by `***`, in
/// either form libpq accepts: a URL (`postgres://u:pw@h/db`, also
/// `?password=pw`) or `key=value` pairs (`host=h password=pw`).
#[must_use]
pub fn redact_database_url(url: &str) -> String {
    let redacted = if url.contains("://") {
        redact_url(url)
    } else {
        url.to_owned()
    };
    // `password=` as a URL query parameter or a key=value pair.
    let mut out = String::with_capacity(redacted.len());
    let mut rest = redacted.as_str();
    while let Some(i) = rest.find("password=") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b' ' | b'?' | b'&');
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        if !boundary {
            rest = tail;
            continue;
        }
        let end = if let Some(quoted) = tail.strip_prefix('\'') {
            quoted.find('\'').map_or(tail.len(), |j| j + 2)
        } else {
            tail.find([' ', '&', '#']).unwrap_or(tail.len())
        };
        out.push_str("***");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The virtual host a URL names (`/` for `%2f` or none).
#[must_use]
pub fn vhost_of(url: &str) -> String {
    url.parse::<AMQPUri>().map_or_else(
        |_| "/".to_owned(),
        |u| {
            if u.vhost.is_empty() { "/".to_owned() } else { u.vhost }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_redacted_in_both_forms() {
        assert_eq!(
            redact_database_url("postgres://app:pw1@db:5432/app?sslmode=require"),
            "postgres://app:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_database_url("postgresql://db/app?user=app&password=pw2&sslmode=require"),
            "postgresql://db/app?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact_database_url("host=db password='p w3' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(redact_database_url("host=db password=pw4"), "host=db password=***");
        assert_eq!(redact_database_url("host=db user=app"), "host=db user=app");
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:p%40ss@h/v?heartbeat=5"),
            "amqps://u:***@h/v?heartbeat=5"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("amqp://user@h"), "amqp://user@h");
    }

    #[test]
    fn ip_hosts_are_kept() {
        assert_eq!(
            parse("amqp://a:b@10.1.2.3:5673/%2f").unwrap().authority.host,
            "10.1.2.3"
        );
        assert_eq!(parse("amqp://[::1]:5672").unwrap().authority.host, "::1");
        assert_eq!(parse("amqp://rabbit/v").unwrap().authority.host, "rabbit");
    }

    #[test]
    fn vhosts() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://h/prod"), "prod");
    }

    #[test]
    fn invalid_url_error_has_no_password() {
        let err = check_url("amqp://u:hunter2@host:notaport/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_url("http://x").is_err());
    }
}
