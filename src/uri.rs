//! AMQP URIs: parsing (IP-literal hosts kept), checking, the virtual host,
//! and redaction of the password wherever a URI is shown. A setting may list
//! several URIs separated by commas (the nodes of a cluster): checking,
//! redaction and the virtual host take the whole list.

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
        parse(url).map_err(|e| {
            if list.len() == 1 {
                e
            } else {
                format!("URI {} of {} ({}): {e}", i + 1, list.len(), redact_one(url))
            }
        })?;
        vhosts.push(vhost_of(url));
    }
    if vhosts.iter().any(|v| *v != vhosts[0]) {
        return Err(format!(
            "the URIs name different virtual hosts ({}): the nodes of one cluster share the vhost warren uses",
            vhosts.join(", ")
        ));
    }
    Ok(())
}

/// The URL (or each URL of a comma-separated list) with its password
/// replaced by `***`, safe to log or print.
#[must_use]
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
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

/// The virtual host a URL (or the first of a list) names (`/` for `%2f` or none).
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
    fn invalid_url_error_has_no_password() {
        let err = check_url("amqp://u:hunter2@host:notaport/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_url("http://x").is_err());
    }
}
