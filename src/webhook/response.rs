//! The receiver's answer: ack, retry or dead letter, and what the error says.

use std::fmt::Write as _;

use reqwest::StatusCode;
use reqwest::header::LOCATION;

use crate::consumer::HandlerError;
use crate::event::truncate;

/// Longest response-body excerpt put in an error (bytes, cut on a character boundary).
pub const MAX_SNIPPET: usize = 200;

/// Response bytes read at most: enough to quote the body and, for small
/// answers, to keep the connection reusable.
const MAX_READ: usize = 16 * 1024;

/// The status of an answer and what it means for the delivery; reads the
/// start of the body to quote it.
pub(super) async fn judge(response: reqwest::Response) -> (StatusCode, Result<(), HandlerError>) {
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .map(|v| crate::amqp::redact_url(&String::from_utf8_lossy(v.as_bytes())));
    let head = read_prefix(response).await;
    (status, classify(status, &snippet(&head), location))
}

/// Ack, retry or dead-letter, from the receiver's status.
fn classify(status: StatusCode, snippet: &str, location: Option<String>) -> Result<(), HandlerError> {
    if status.is_success() {
        return Ok(());
    }
    let mut msg = format!("receiver answered {status}");
    if status == StatusCode::LOOP_DETECTED {
        // A warren ingress answers 508 to what a warren webhook forwarded:
        // a retry would only come back again.
        msg.push_str(" (the event came back into a warren ingress: webhook.url leads back into warren)");
    }
    if status.is_redirection() {
        msg.push_str(" (redirects are not followed");
        if let Some(l) = location {
            let _ = write!(msg, "; location: {}", truncate(&l, MAX_SNIPPET));
        }
        msg.push(')');
    }
    if !snippet.is_empty() {
        let _ = write!(msg, ": {snippet}");
    }
    let retry = (status.is_server_error() && status != StatusCode::LOOP_DETECTED)
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    Err(if retry {
        HandlerError::Transient(msg)
    } else {
        HandlerError::Permanent(msg)
    })
}

/// The first [`MAX_READ`] bytes of the response body (fewer on a read error).
async fn read_prefix(mut response: reqwest::Response) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < MAX_READ {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    buf
}

/// The start of a body as one line of text: at most [`MAX_SNIPPET`] bytes of
/// valid UTF-8, whitespace and control characters collapsed.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * MAX_SNIPPET)]);
    let line = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    truncate(&line, MAX_SNIPPET).to_owned()
}

/// The innermost cause of an error (`Connection refused (os error 111)`).
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), "", None);
        for ok in [200, 201, 202, 204] {
            assert_eq!(c(ok), Ok(()));
        }
        for retry in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(c(retry), Err(HandlerError::Transient(_))), "{retry}");
        }
        for dead in [301, 302, 307, 400, 401, 403, 404, 409, 410, 422, 508] {
            assert!(matches!(c(dead), Err(HandlerError::Permanent(_))), "{dead}");
        }
        let looped = classify(StatusCode::LOOP_DETECTED, "{\"error\":{}}", None);
        assert!(
            matches!(&looped, Err(HandlerError::Permanent(m)) if m.contains("leads back into warren")),
            "{looped:?}"
        );
        let redirect = classify(StatusCode::FOUND, "", Some("https://go/elsewhere".into()));
        assert_eq!(
            redirect,
            Err(HandlerError::Permanent(
                "receiver answered 302 Found (redirects are not followed; location: https://go/elsewhere)".into()
            ))
        );
    }

    #[test]
    fn snippets_are_short_single_line_utf8() {
        assert_eq!(snippet(b"  {\"error\":\n  \"bad\"}\r\n"), "{\"error\": \"bad\"}");
        let long = "é".repeat(300);
        let s = snippet(long.as_bytes());
        assert!(s.len() <= MAX_SNIPPET && s.chars().all(|c| c == 'é'), "{s}");
        assert_eq!(s.len(), 200);
        assert_eq!(snippet(&[0xff, b'o', b'k']), "\u{fffd}ok");
        assert_eq!(snippet(b""), "");
    }
}
