//! The places a secret sits in a log line, found by their shape rather than
//! by the secret's text: the password of a URI's user info, the credentials
//! of an `Authorization` header, and the value after a key named like a
//! secret (`password: "…"`, `token=…`). Masking there, and only there, hides
//! a short or common password (`o`, `guest`, `password`) without garbling
//! the words around it or revealing itself by the gap it leaves.

use super::MASK;

/// `text` with the password of every URI's user info (`scheme://user:pw@`)
/// replaced by [`MASK`], whatever it is; the user name is kept, as
/// `uri::redact_url` shows it. A password holding `/`, `?` or `#` (which a
/// URI must percent-encode) is masked only when `known` says it is one.
pub(super) fn mask_userinfo(text: &str, known: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let token_end = tail.find(|c: char| c.is_whitespace() || "\"'`<>()[]{},;".contains(c));
        let token = &tail[..token_end.unwrap_or(tail.len())];
        let masked = token.rsplit_once('@').and_then(|(userinfo, host)| {
            let (user, password) = userinfo.split_once(':')?;
            let plain = !user.contains(['/', '?', '#']) && !password.contains(['/', '?', '#']);
            (!user.contains(['/', '?', '#']) && (plain || known(password)) && password != MASK)
                .then(|| format!("{user}:{MASK}@{host}"))
        });
        match masked {
            Some(masked) => {
                out.push_str(&masked);
                rest = &tail[token.len()..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// `text` with the credentials after `Bearer ` or `Basic ` masked where an
/// `Authorization` header is named just before (`authorization: Bearer …`,
/// `"authorization": "Basic …"`), whatever they are.
pub(super) fn mask_authorization(text: &str) -> Option<String> {
    if !(text.contains("uthorization") || text.contains("UTHORIZATION")) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    for scheme in ["bearer ", "basic "] {
        for (at, _) in lower.match_indices(scheme) {
            // The header's name, then only its separator: `: `, `": "`, `=`.
            let named = lower[..at]
                .trim_end_matches(|c: char| "\"': =".contains(c))
                .ends_with("authorization");
            if !named {
                continue;
            }
            let start = at + scheme.len();
            let len = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(c)))
                .unwrap_or(text.len() - start);
            if len > 0 {
                spans.push((start, start + len));
            }
        }
    }
    replace_spans(text, spans)
}

/// Key names whose value is a secret.
const SECRET_KEYS: &[&str] = &["password", "passwd", "pass", "pwd", "secret", "token"];

/// `text` with each occurrence of one of `forms` (the textual forms of
/// known secrets) masked where it is the whole value of a key named like a
/// secret: `password: "guest"`, `password=guest`, `"token":"…"`,
/// `token: Some("…")`.
pub(super) fn mask_key_values(text: &str, forms: &[String]) -> Option<String> {
    let mut spans = Vec::new();
    for form in forms.iter().filter(|f| !f.is_empty()) {
        for (at, _) in text.match_indices(form.as_str()) {
            let end = at + form.len();
            let whole = !text[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                && !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            if whole && after_secret_key(&text[..at]) {
                spans.push((at, end));
            }
        }
    }
    replace_spans(text, spans)
}

/// Whether `head` ends with a key named like a secret and its separator.
fn after_secret_key(head: &str) -> bool {
    let trimmed = head.trim_end_matches(|c: char| "\"' ".contains(c));
    let trimmed = trimmed.strip_suffix("Some(").unwrap_or(trimmed);
    let Some(key) = trimmed
        .trim_end_matches(' ')
        .strip_suffix([':', '='])
        .map(|k| k.trim_end_matches(|c: char| "\"' ".contains(c)))
    else {
        return false;
    };
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|name| {
        key.strip_suffix(name)
            .is_some_and(|before| !before.ends_with(|c: char| c.is_ascii_alphabetic()))
    })
}

/// `text` with each span (byte ranges, maybe overlapping) replaced by
/// [`MASK`]; `None` without spans.
pub(super) fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> Option<String> {
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in spans {
        if start >= at {
            out.push_str(&text[at..start]);
            out.push_str(MASK);
            at = end;
        }
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_passwords_are_masked_whatever_they_are() {
        let none = |_: &str| false;
        assert_eq!(
            mask_userinfo("cannot connect to amqp://guest:o@h:5672/%2f: refused", &none),
            "cannot connect to amqp://guest:***@h:5672/%2f: refused"
        );
        assert_eq!(mask_userinfo("a amqp://u:***@h b", &none), "a amqp://u:***@h b");
        assert_eq!(
            mask_userinfo("see http://host:8080/a@b", &none),
            "see http://host:8080/a@b"
        );
        assert_eq!(
            mask_userinfo("url=\"amqp://u:Qz/Kw@h/v\"", &|p| p == "Qz/Kw"),
            "url=\"amqp://u:***@h/v\""
        );
        assert_eq!(mask_userinfo("no uri: user@host", &none), "no uri: user@host");
    }

    #[test]
    fn authorization_credentials_are_masked() {
        assert_eq!(
            mask_authorization("headers: {\"authorization\": \"Bearer wrong\"}").unwrap(),
            "headers: {\"authorization\": \"Bearer ***\"}"
        );
        assert_eq!(
            mask_authorization("Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=").unwrap(),
            "Authorization: Basic ***"
        );
        assert_eq!(mask_authorization("a basic setup, bearer bonds"), None);
        assert_eq!(mask_authorization("authorization failed: bearer token wrong"), None);
    }

    #[test]
    fn values_of_secret_keys_are_masked_only_when_known() {
        let forms = ["guest".to_owned()];
        assert_eq!(
            mask_key_values("AMQPUserInfo { username: \"guest\", password: \"guest\" }", &forms).unwrap(),
            "AMQPUserInfo { username: \"guest\", password: \"***\" }"
        );
        assert_eq!(mask_key_values("password=guest&x", &forms).unwrap(), "password=***&x");
        assert_eq!(
            mask_key_values("token: Some(\"guest\")", &forms).unwrap(),
            "token: Some(\"***\")"
        );
        assert_eq!(mask_key_values("password: guests", &forms), None);
        assert_eq!(mask_key_values("bypass: guest", &forms), None);
    }
}
