//! AMQP URIs: parsing (IP-literal hosts kept), checking, the virtual host,
//! and redaction of the password wherever a URI is shown. A setting may list
//! several URIs separated by commas (the nodes of a cluster): checking,
//! redaction, the passwords and the virtual host take the whole list.

use lapin::uri::AMQPUri;

/// Parses an AMQP URI, keeping an IP-literal host as written.
///
/// # Errors
///
/// What is wrong with it, without the password.
pub fn parse(url: &str) -> Result<AMQPUri, String> {
    check_userinfo(url)?;
    let mut uri: AMQPUri = url.parse()?;
    // amq-protocol-uri only takes DNS names as host and falls back to
    // "localhost" for an IP literal: take the host from the URL ourselves.
    if let Some(host) = host_of(url) {
        uri.authority.host = host;
    }
    // `amqp://host/` names the empty vhost, which RabbitMQ never has: Go's
    // amqp091 and Python's pika take it for the default `/`, and so does
    // warren (the seed's `.env` has `AMQP_URL=amqp://guest:guest@localhost:5672/`).
    if uri.vhost.is_empty() {
        uri.vhost = "/".into();
    }
    Ok(uri)
}

/// Refuses a user name or password holding a character that ends the
/// authority (`/`, `?`, `#`) or a second `@`: the URI parser would take the
/// rest for a host and vhost and connect somewhere else, or fail with a
/// message about a port. The message names the character, never the password.
fn check_userinfo(url: &str) -> Result<(), String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let bad = if authority.matches('@').count() > 1 {
        '@'
    } else if !authority.contains('@') && rest[end..].contains('@') {
        // An `@` after the authority ended: the user name or password holds
        // the character that ended it (or the vhost holds an `@`).
        rest[end..].chars().next().unwrap_or('/')
    } else {
        return Ok(());
    };
    Err(format!(
        "the user name or password holds a {bad:?}, which must be percent-encoded: write {bad:?} as %{:02X} \
         (an '@' in the vhost as %40)",
        u32::from(bad)
    ))
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

/// The URIs of a comma-separated list, trimmed, empty entries left out.
#[must_use]
pub fn split_list(urls: &str) -> Vec<&str> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// `host:port` of a URI (the port its scheme implies when it has none), to
/// name the node a connection goes to; never the credentials.
#[must_use]
pub fn node_of(url: &str) -> String {
    match parse(url) {
        Ok(u) if u.authority.host.contains(':') => format!("[{}]:{}", u.authority.host, u.authority.port),
        Ok(u) => format!("{}:{}", u.authority.host, u.authority.port),
        Err(_) => "?".to_owned(),
    }
}

/// Checks that `urls` is one usable AMQP URI or a comma-separated list of
/// them, all naming the same virtual host (the nodes of one cluster).
///
/// # Errors
///
/// What is wrong with it, without the password.
pub fn check_url(urls: &str) -> Result<(), String> {
    let list = split_list(urls);
    if list.is_empty() {
        return Err("no AMQP URI given".into());
    }
    let mut vhosts = Vec::new();
    for (i, url) in list.iter().enumerate() {
        let uri = parse(url).map_err(|e| {
            if list.len() == 1 {
                e
            } else {
                format!("URI {} of {} ({}): {e}", i + 1, list.len(), redact_one(url))
            }
        })?;
        vhosts.push(uri.vhost);
    }
    if vhosts.iter().any(|v| *v != vhosts[0]) {
        return Err(format!(
            "the URIs name different virtual hosts ({}): the nodes of one cluster share the vhost warren uses",
            vhosts.join(", ")
        ));
    }
    Ok(())
}

/// The AMQP minimum frame size: RabbitMQ refuses a connection that asks for less.
const FRAME_MIN: u32 = 4096;

/// Checks the query of each URI in `urls` against what warren needs on one
/// connection: `channel_max` of at least `channels` (0, the broker's limit,
/// is fine), and `frame_max` of 0 or at least the AMQP minimum of 4096.
/// With less, every connection fails the same way and reconnecting forever
/// hides it.
///
/// # Errors
///
/// The parameter, its value and what is needed, without the password.
pub fn check_limits(urls: &str, channels: u16) -> Result<(), String> {
    for url in split_list(urls) {
        let Ok(uri) = parse(url) else { continue };
        if let Some(max) = uri.query.channel_max.filter(|&m| m != 0 && m < channels) {
            return Err(format!(
                "channel_max={max} allows fewer channels than warren opens on one connection ({channels}: one to \
                 republish retries, one per consumed event type); raise it or leave it out"
            ));
        }
        if let Some(max) = uri.query.frame_max.filter(|&m| m != 0 && m < FRAME_MIN) {
            return Err(format!(
                "frame_max={max} is below the AMQP minimum of {FRAME_MIN}; raise it or leave it out"
            ));
        }
    }
    Ok(())
}

/// The URL (or each URL of a comma-separated list) with its password
/// replaced by `***`, safe to log or print.
///
/// The user name and password end at the last `@`, not at the first `/`: a
/// password holding an unencoded `/` is still hidden.
#[must_use]
pub fn redact_url(url: &str) -> String {
    if url.contains(',') && url.matches("://").count() > 1 {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// The password in a URL's user info (in each URL of a comma-separated
/// list), as written and (when different) percent-decoded; none without
/// one. Like [`redact_url`], the user info ends at the last `@`.
#[must_use]
pub fn passwords_of(url: &str) -> Vec<Vec<u8>> {
    if url.contains(',') && url.matches("://").count() > 1 {
        return url.split(',').flat_map(passwords_of).collect();
    }
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let decoded = percent_decode(password);
    if decoded == password.as_bytes() {
        vec![decoded]
    } else {
        vec![password.as_bytes().to_vec(), decoded]
    }
}

/// `%XX` sequences as bytes; anything else, a malformed `%` included, as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
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

/// The passwords a PostgreSQL connection string holds, in either form (see
/// [`redact_database_url`]), as written and percent-decoded.
#[must_use]
pub fn database_passwords_of(url: &str) -> Vec<Vec<u8>> {
    let mut out = if url.contains("://") {
        passwords_of(url)
    } else {
        Vec::new()
    };
    let mut rest = url;
    while let Some(i) = rest.find("password=") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b' ' | b'?' | b'&');
        rest = &rest[i + "password=".len()..];
        if !boundary {
            continue;
        }
        let value = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.split('\'').next().unwrap_or(""),
            None => rest.split([' ', '&', '#']).next().unwrap_or(""),
        };
        if !value.is_empty() {
            out.push(value.as_bytes().to_vec());
            out.push(percent_decode(value));
        }
    }
    out.dedup();
    out
}

/// The virtual host a URL (or the first of a list) names (`/` for `%2f`,
/// a bare `/` or none).
#[must_use]
pub fn vhost_of(url: &str) -> String {
    let first = split_list(url).first().copied().unwrap_or(url);
    first.parse::<AMQPUri>().map_or_else(
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
    fn a_list_is_redacted_checked_and_named_node_by_node() {
        let list = "amqp://u:pw1@10.0.0.1:5672/%2f, amqps://u:pw2@rabbit-2/%2f";
        let shown = redact_url(list);
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert_eq!(shown, "amqp://u:***@10.0.0.1:5672/%2f, amqps://u:***@rabbit-2/%2f");
        assert_eq!(split_list(list).len(), 2);
        assert_eq!(split_list("amqp://a,,"), ["amqp://a"]);
        check_url(list).unwrap();
        assert_eq!(vhost_of(list), "/");
        assert_eq!(node_of(split_list(list)[0]), "10.0.0.1:5672");
        assert_eq!(node_of(split_list(list)[1]), "rabbit-2:5671");
        assert_eq!(node_of("amqp://[::1]:5701"), "[::1]:5701");
    }

    #[test]
    fn a_bad_list_says_which_uri_without_passwords() {
        let err = check_url("amqp://u:pw1@h1:5672/%2f,amqp://u:pw2@h2:nope/%2f").unwrap_err();
        assert!(err.contains("URI 2 of 2") && err.contains("h2"), "{err}");
        assert!(!err.contains("pw1") && !err.contains("pw2"), "{err}");
        let err = check_url("amqp://h1/a,amqp://h2/b").unwrap_err();
        assert!(err.contains("different virtual hosts"), "{err}");
        assert!(check_url(" , ").is_err());
    }

    #[test]
    fn the_passwords_of_a_list_are_each_nodes() {
        let list = "amqp://u:pw1@h1/%2f,amqp://u:p%2Fw2@h2/%2f";
        assert_eq!(
            passwords_of(list),
            [b"pw1".to_vec(), b"p%2Fw2".to_vec(), b"p/w2".to_vec()]
        );
    }

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
        assert_eq!(
            database_passwords_of("host=db password='p w3' user=app"),
            [b"p w3".to_vec()]
        );
        assert_eq!(
            database_passwords_of("postgres://app:p%40ss@db/app"),
            [b"p%40ss".to_vec(), b"p@ss".to_vec()]
        );
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
        assert_eq!(redact_url("amqp://u:Qz/Kw@h:5672/%2f"), "amqp://u:***@h:5672/%2f");
        assert_eq!(redact_url("amqp://h/v"), "amqp://h/v");
    }

    #[test]
    fn limits_that_can_never_work_are_refused() {
        let err = check_limits("amqp://u:Qz9@h/%2f?channel_max=1", 4).unwrap_err();
        assert!(err.contains("channel_max=1") && err.contains("(4:"), "{err}");
        assert!(!err.contains("Qz9"), "{err}");
        assert!(check_limits("amqp://h,amqp://h2/%2f?channel_max=3", 4).is_err());
        assert!(
            check_limits("amqp://h/%2f?frame_max=512", 4)
                .unwrap_err()
                .contains("4096")
        );
        for fine in [
            "amqp://h",
            "amqp://h/%2f?channel_max=0",
            "amqp://h/%2f?channel_max=4&frame_max=8192",
        ] {
            assert_eq!(check_limits(fine, 4), Ok(()), "{fine}");
        }
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
    fn passwords_as_written_and_decoded() {
        assert_eq!(
            passwords_of("amqp://u:p%2Fw%zz@h/v"),
            [b"p%2Fw%zz".to_vec(), b"p/w%zz".to_vec()]
        );
        assert_eq!(passwords_of("amqp://u:Qz/Kw@h"), [b"Qz/Kw".to_vec()]);
        assert!(passwords_of("amqp://u@h").is_empty() && passwords_of("amqp://h/v@x").is_empty());
    }

    #[test]
    fn a_trailing_slash_names_the_default_vhost() {
        assert_eq!(parse("amqp://guest:guest@localhost:5672/").unwrap().vhost, "/");
        assert_eq!(parse("amqp://guest:guest@localhost:5672").unwrap().vhost, "/");
        assert_eq!(parse("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(parse("amqp://h/prod").unwrap().vhost, "prod");
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

    #[test]
    fn reserved_characters_in_the_password_must_be_percent_encoded() {
        for (url, encoded) in [
            ("amqp://u:Qz/Kw@host:5672/%2f", "%2F"),
            ("amqp://u:Qz?Kw@host/v", "%3F"),
            ("amqp://u:Qz#Kw@host", "%23"),
            ("amqp://u:Qz@Kw@host/v", "%40"),
        ] {
            let err = check_url(url).unwrap_err();
            assert!(err.contains("percent-encoded") && err.contains(encoded), "{url}: {err}");
            assert!(!err.contains("Qz") && !err.contains("Kw"), "password in {err}");
        }
        let uri = parse("amqp://u:pa%2Fss%40x@host:5672/%2f").unwrap();
        assert_eq!(uri.authority.userinfo.password, "pa/ss@x");
        assert_eq!(uri.authority.host, "host");
        assert!(check_url("amqp://u:p@host/vhost").is_ok());
    }
}
