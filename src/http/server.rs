//! Serving a router over TCP, HTTP/1.1: the accept loop, the time limits of
//! each connection, the connection cap, and a graceful shutdown.
//!
//! `axum::serve` has no header-read or idle timeout and no connection cap:
//! clients that open connections and drip header bytes hold descriptors
//! until the process has none left and stops answering, `/healthz`
//! included. Here a connection gets `ingress.header_timeout` to send a
//! request head (from its start, or from the first byte after an idle
//! spell), `ingress.idle_timeout` between requests, and at most
//! `ingress.max_connections` are open (see [`super::connections`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use super::connections::{Activity, Connections, Phase, Slot, Throttle};
use super::error::RETRY_AFTER_SECS;
use crate::config::IngressSettings;

/// How long the accept loop pauses after an error such as `EMFILE`: long
/// enough not to spin, short enough to serve again as soon as descriptors
/// are free.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The time limits of a connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    idle: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops
/// accepting, closes connections that are not busy, and waits for the
/// requests in flight to finish.
pub(super) async fn serve(listener: TcpListener, app: Router, settings: &IngressSettings, shutdown: CancellationToken) {
    let connections = Connections::new(settings.max_connections);
    let limits = Limits {
        header: settings.header_timeout,
        idle: settings.idle_timeout,
    };
    let tracker = TaskTracker::new();
    let accept_errors = Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e, &accept_errors).await;
                continue;
            }
        };
        // Small answers must not wait for Nagle's algorithm and the client's
        // delayed ACK: without TCP_NODELAY a keep-alive client waits on every 202.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match connections.admit() {
            Some(slot) => {
                tracker.spawn(connection(stream, app.clone(), slot, limits, shutdown.clone()));
            }
            None => refuse(&stream),
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// An accept error: a connection that died in the backlog is nothing; any
/// other (`EMFILE`, `ENFILE`, `ENOBUFS`) is logged, at most every ten
/// seconds, and the loop pauses instead of spinning on it.
async fn accept_failed(e: &io::Error, log: &Throttle) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    if let Some(held_back) = log.allow() {
        tracing::warn!(error = %e, held_back, "cannot accept connections (out of file descriptors?): retrying");
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// The answer to a connection over the cap while every open one is busy:
/// written without waiting (it fits any socket buffer), then the socket is
/// closed. The client may see a reset instead.
fn refuse(stream: &TcpStream) {
    const BODY: &str =
        r#"{"error":{"code":"overloaded","message":"the server has too many open connections: retry later"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Serves one connection until it ends, breaks a time limit, is closed to
/// admit another, or shuts down.
async fn connection(stream: TcpStream, app: Router, slot: Slot, limits: Limits, shutdown: CancellationToken) {
    let activity = slot.activity.clone();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        app,
        activity: activity.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below bounds reading heads; hyper's own timer would also
    // cut idle keep-alive connections at the header timeout.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = slot.evicted.cancelled() => {
                tracing::debug!("connection closed to admit a new one");
                return;
            }
            () = tokio::time::sleep_until(next_check(&activity, limits)) => {
                if let Some(why) = overdue(&activity, limits) {
                    tracing::debug!(why, "connection closed");
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                // A busy connection finishes its request, then closes.
                if activity.get().0 != Phase::Busy {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// When to look at a connection again: at the end of its phase's limit, and
/// at least every header timeout, so that a head starting after an idle
/// spell is seen in time.
fn next_check(activity: &Activity, limits: Limits) -> Instant {
    let (phase, since) = activity.get();
    let soon = Instant::now() + limits.header;
    let end = match phase {
        Phase::Head => since + limits.header,
        Phase::Idle => since + limits.idle,
        Phase::Busy => return soon,
    };
    soon.min(Instant::from_std(end))
}

/// Why the connection must close now, if it must.
fn overdue(activity: &Activity, limits: Limits) -> Option<&'static str> {
    let (phase, since) = activity.get();
    match phase {
        Phase::Head if since.elapsed() >= limits.header => {
            Some("no complete request head within ingress.header_timeout")
        }
        Phase::Idle if since.elapsed() >= limits.idle => Some("idle for ingress.idle_timeout"),
        _ => None,
    }
}

/// The socket, noting when bytes arrive on an idle connection.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper's service, marking the connection busy while it
/// handles a request and idle once it has the answer.
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.set(Phase::Busy);
        // A router is always ready (axum documents it), and cloning it is
        // one reference count.
        let answer = self.app.clone().call(req.map(Body::new));
        let activity = self.activity.clone();
        Box::pin(async move {
            let res = answer.await;
            activity.set(Phase::Idle);
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn out_of_descriptors_pauses_the_accept_loop_and_a_dead_connection_does_not() {
        let log = Throttle::new(Duration::from_secs(10));
        let emfile = io::Error::from_raw_os_error(24); // EMFILE on Linux
        let started = std::time::Instant::now();
        accept_failed(&emfile, &log).await;
        accept_failed(&emfile, &log).await;
        assert!(started.elapsed() >= 2 * ACCEPT_BACKOFF, "{:?}", started.elapsed());
        assert_eq!(log.allow(), None, "the second error was held back from the log");
        let started = std::time::Instant::now();
        accept_failed(&io::Error::from(io::ErrorKind::ConnectionAborted), &log).await;
        assert!(started.elapsed() < ACCEPT_BACKOFF);
    }

    #[test]
    fn limits_by_phase() {
        let limits = Limits {
            header: Duration::from_millis(50),
            idle: Duration::from_secs(60),
        };
        let activity = Activity::for_tests();
        assert_eq!(overdue(&activity, limits), None);
        std::thread::sleep(Duration::from_millis(60));
        assert!(overdue(&activity, limits).is_some(), "a head past the header timeout");
        activity.set(Phase::Idle);
        assert_eq!(overdue(&activity, limits), None, "idle is allowed longer");
        assert!(next_check(&activity, limits) <= Instant::now() + limits.header);
        activity.set(Phase::Busy);
        assert_eq!(overdue(&activity, limits), None, "a busy connection is never cut here");
    }
}
