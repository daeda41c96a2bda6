//! `--ingress URL`: publishing through warren's HTTP ingress
//! (`POST {URL}/events`, JSON envelope, answered 202 once the broker
//! confirmed), one request at a time on each of a number of keep-alive
//! HTTP/1.1 connections.
//!
//! The load generator shares the machine with the ingress and the broker, so
//! it is a bare hyper connection per task (no pool, no per-request URL parse
//! or timer) rather than a general-purpose client: what it saves goes to the
//! system under test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::BenchError;
use warren::event::{Envelope, UserRegistered};

/// How long connecting to the ingress may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the ingress listens: `host:port` to connect to, the `Host` header
/// and the `/events` path.
#[derive(Debug, Clone)]
pub struct Target {
    addr: String,
    host: String,
    path: String,
}

impl Target {
    /// Parses a base URL such as `http://127.0.0.1:8597` (a path prefix is
    /// kept: `http://host/warren` posts to `/warren/events`).
    ///
    /// # Errors
    ///
    /// [`BenchError::Ingress`] for anything but an `http://` URL with a host.
    pub fn parse(base: &str) -> Result<Self, BenchError> {
        let bad = |why: &str| BenchError::Ingress(format!("--ingress {base}: {why}"));
        let uri: Uri = base.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "{other}:// is not supported; the ingress speaks plain http://"
                )));
            }
            None => return Err(bad("expected http://host:port")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        Ok(Self {
            addr: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            host: authority.as_str().to_owned(),
            path: format!("{}/events", uri.path().trim_end_matches('/')),
        })
    }

    /// The URL posted to, for messages.
    fn url(&self) -> String {
        format!("http://{}{}", self.host, self.path)
    }
}

/// The I/O half of a [`Connection`]: resolves when the connection closes.
pub type Driver = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One keep-alive connection to the ingress, one request at a time.
#[derive(Clone)]
pub struct Connection {
    target: Arc<Target>,
    send: Arc<Mutex<SendRequest<Full<Bytes>>>>,
}

impl Connection {
    /// Connects to `target` (TCP_NODELAY, HTTP/1.1). The [`Driver`] does the
    /// connection's I/O: poll it in the task that posts (see
    /// [`Connection::drive`]), which saves a task wake-up each way per
    /// request.
    ///
    /// # Errors
    ///
    /// [`BenchError::Ingress`] when the connection or the handshake fails.
    pub async fn open(target: Arc<Target>) -> Result<(Self, Driver), BenchError> {
        let fail = |e: &dyn std::fmt::Display| BenchError::Ingress(format!("connecting to {}: {e}", target.url()));
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.addr));
        let stream = match connect.await {
            Ok(connected) => connected.map_err(|e| fail(&e))?,
            Err(_) => return Err(fail(&format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        stream.set_nodelay(true).map_err(|e| fail(&e))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(&e))?;
        let connection = Self {
            target,
            send: Arc::new(Mutex::new(send)),
        };
        Ok((connection, conn))
    }

    /// Runs `work` (which posts on this connection) while `driver` does the
    /// connection's I/O, in the same task. When the connection closes first,
    /// `work` still runs to its end: its requests fail.
    pub async fn drive(driver: Driver, work: impl Future<Output = ()>) {
        tokio::pin!(work);
        tokio::select! {
            biased;
            () = &mut work => {}
            _ = driver => work.await,
        }
    }

    /// Posts one event; `Ok` on 202.
    pub async fn post(&self, event: Envelope<UserRegistered>) -> Result<(), String> {
        let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.target.path.as_str())
            .header(header::HOST, self.target.host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let failed = |e: &dyn std::fmt::Display| format!("POST {}: {e}", self.target.url());
        let response = {
            let mut send = self.send.lock().await;
            send.ready().await.map_err(|e| failed(&e))?;
            send.send_request(request)
        }
        .await
        .map_err(|e| failed(&e))?;
        let status = response.status();
        // Read the (small) body whatever the status: the connection takes
        // the next request only once this one's body is consumed.
        let body = response.into_body().collect().await.map_err(|e| failed(&e))?.to_bytes();
        if status == StatusCode::ACCEPTED {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body);
            Err(failed(&format!(
                "answered {status}: {}",
                warren::event::truncate(&text, 200)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8597").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8597", "127.0.0.1:8597", "/events")
        );
        let t = Target::parse("http://ingress/warren/").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.host.as_str(), t.path.as_str()),
            ("ingress:80", "ingress", "/warren/events")
        );
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.addr.as_str(), t.host.as_str()), ("[::1]:9000", "[::1]:9000"));
        for bad in ["https://127.0.0.1:8597", "127.0.0.1:8597", "http://", "not a url"] {
            let err = Target::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("--ingress {bad}")), "{bad}: {err}");
        }
    }
}
