//! Connections over a real socket: the header and idle timeouts, the
//! connection cap, and a slowloris against `warren ingress` run with
//! `ulimit -n 256`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use warren::Settings;
use warren::config::IngressSettings;
use warren::http::{AppState, serve};

use super::common::{Fake, SEED_LOGIN};

const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: warren\r\n";
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: warren\r\n\r\n";

/// An ingress over `fake` with tweaked settings, served on 127.0.0.1:0.
async fn start(fake: Arc<Fake>, tweak: impl FnOnce(&mut IngressSettings)) -> (SocketAddr, CancellationToken) {
    let mut settings = Settings::default().ingress;
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, AppState::new(fake, &settings), shutdown.clone()));
    (addr, shutdown)
}

/// Reads what the server sends until it closes the connection; `None` when it
/// is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one whole answer of `/healthz` (its body ends the answer), within 2 s.
async fn read_healthz(stream: &mut TcpStream) -> Result<String, String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(br#"{"status":"ok"}"#) {
        let n = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Err(_) => return Err("no answer within 2 s".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(0)) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&answer))),
            Ok(Ok(n)) => n,
        };
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_client_dripping_its_request_head_is_cut_off_at_header_timeout() {
    let (addr, shutdown) = start(Arc::default(), |s| {
        s.header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PARTIAL_HEAD).await.unwrap();
    // More header lines, slowly: they do not extend the time limit.
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(format!("x-drip-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buf)).await;
    let elapsed = started.elapsed();
    drip.abort();
    shutdown.cancel();
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "still open after 3 s: {read:?}");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout_not_header_timeout() {
    let (addr, shutdown) = start(Arc::default(), |s| {
        s.header_timeout = Duration::from_millis(200);
        s.idle_timeout = Duration::from_millis(800);
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut stream).await.unwrap().starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: the connection stays usable.
    tokio::time::sleep(Duration::from_millis(450)).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut stream).await.unwrap().starts_with("HTTP/1.1 200"));
    let closed = closed_within(&mut stream, Duration::from_secs(3)).await;
    shutdown.cancel();
    let closed = closed.expect("an idle connection is closed");
    assert!(
        closed >= Duration::from_millis(650) && closed < Duration::from_secs(2),
        "{closed:?}"
    );
}

#[tokio::test]
async fn at_the_connection_cap_a_slow_client_makes_room_and_busy_ones_stay() {
    let (addr, shutdown) = start(Arc::default(), |s| s.max_connections = 3).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(PARTIAL_HEAD).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut probe).await.unwrap().starts_with("HTTP/1.1 200"));
    let oldest = closed_within(&mut slow[0], Duration::from_secs(1)).await;
    assert!(oldest.is_some(), "the slowest client made room");
    shutdown.cancel();

    // Every connection busy with a request: a new one is answered 503 at once.
    let hanging = Arc::new(Fake {
        hang: true,
        ..Fake::default()
    });
    let (addr, shutdown) = start(hanging, |s| {
        s.max_connections = 2;
        s.request_timeout = Duration::from_secs(5);
    })
    .await;
    let post = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SEED_LOGIN}",
        SEED_LOGIN.len()
    );
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(post.as_bytes()).await.unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("overloaded") && answer.contains("retry-after: 5"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    for stream in &mut busy {
        assert_eq!(
            closed_within(stream, Duration::from_millis(100)).await,
            None,
            "busy ones stay"
        );
    }
    shutdown.cancel();
}

/// `warren ingress` in a shell that lowered its descriptor limit first;
/// killed when dropped.
struct Ingress {
    child: Child,
    log: std::path::PathBuf,
    /// Deletes the exchange its publisher declared.
    _exchange: crate::support::Cleanup,
}

impl Ingress {
    fn start(listen: SocketAddr, descriptors: u32) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::support::unique("slowloris")));
        // Its own exchange: the publisher declares it on the shared broker.
        let exchange = crate::support::unique("slowloris-x");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {descriptors} && exec \"$0\" ingress"))
            .arg(env!("CARGO_BIN_EXE_warren"))
            .current_dir(std::env::temp_dir())
            .env_remove("AMQP_URL")
            .env("WARREN_AMQP__URL", crate::support::amqp_url())
            .env("WARREN_INGRESS__LISTEN", listen.to_string())
            .env("WARREN_TOPOLOGY__EXCHANGE", &exchange)
            .env("RUST_LOG", "warren=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start warren ingress");
        let _exchange = crate::support::Cleanup::broker().exchange(&exchange);
        Self { child, log, _exchange }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A `GET /healthz` on a new connection; how long the 200 took.
async fn probe(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.write_all(HEALTHZ).await.map_err(|e| e.to_string())?;
        read_healthz(&mut stream).await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => Ok(started.elapsed()),
        Ok(Ok(answer)) => Err(answer),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 2 s".into()),
    }
}

#[tokio::test]
async fn healthz_answers_through_a_slowloris_of_300_connections_under_ulimit_256() {
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ingress = Ingress::start(listen, 256);
    let up = Instant::now();
    while probe(listen).await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "ingress not up: {}",
            ingress.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 300 clients, each sending part of a request head, then a header line a second.
    let mut slow = Vec::new();
    for _ in 0..300 {
        if let Ok(mut stream) = TcpStream::connect(listen).await {
            let _ = stream.write_all(PARTIAL_HEAD).await;
            slow.push(stream);
        }
    }
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for stream in &mut slow {
                let _ = stream.write_all(b"x-drip: 1\r\n").await;
            }
        }
    });
    let mut probes = Vec::new();
    for _ in 0..8 {
        probes.push(probe(listen).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drip.abort();
    let log = ingress.log();
    drop(ingress);
    for p in &probes {
        assert!(
            p.as_ref().is_ok_and(|took| *took < Duration::from_secs(1)),
            "/healthz during the slowloris: {probes:?}\n{log}"
        );
    }
    assert!(log.contains("connection limit reached"), "the cap is logged:\n{log}");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_a_request_in_flight_answer() {
    let hanging = Arc::new(Fake {
        hang: true,
        ..Fake::default()
    });
    let mut settings = Settings::default().ingress;
    settings.request_timeout = Duration::from_millis(500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, AppState::new(hanging, &settings), shutdown.clone()));

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    read_healthz(&mut idle).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let post = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SEED_LOGIN}",
        SEED_LOGIN.len()
    );
    busy.write_all(post.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();

    assert!(
        closed_within(&mut idle, Duration::from_millis(300)).await.is_some(),
        "an idle connection closes at shutdown"
    );
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), busy.read_to_end(&mut answer))
        .await
        .expect("the request in flight is answered, then the connection closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains(r#""timeout""#),
        "{answer}"
    );
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("serve returns once the request is answered")
        .unwrap()
        .unwrap();
}

/// Sends `head` (and `body`), then reads what the server sends first.
async fn first_answer(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501_and_nothing_is_published() {
    let fake = Arc::new(Fake::default());
    let (addr, shutdown) = start(fake.clone(), |_| {}).await;
    let chunk = format!("{:x}\r\n{SEED_LOGIN}\r\n0\r\n\r\n", SEED_LOGIN.len());
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    );
    let answer = first_answer(addr, &head, chunk.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 501 "), "{answer}");
    assert!(answer.contains(r#""code":"unsupported_transfer_coding""#), "{answer}");
    // Chunked alone is fine.
    let head = head.replace("gzip, chunked", "chunked");
    let answer = first_answer(addr, &head, chunk.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 202 "), "{answer}");
    assert_eq!(fake.published().len(), 1, "only the chunked one");
    shutdown.cancel();
}

#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_without_100_continue() {
    let fake = Arc::new(Fake::default());
    let (addr, shutdown) = start(fake.clone(), |_| {}).await;
    for path in ["/events", "/events/batch"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
        );
        let answer = first_answer(addr, &head, b"").await;
        assert!(
            answer.starts_with("HTTP/1.1 413 "),
            "{path}: the first answer is {answer:?}"
        );
        assert!(answer.contains(r#""code":"body_too_large""#), "{answer}");
    }
    // Within the limit, the client is told to go on.
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        SEED_LOGIN.len()
    );
    let answer = first_answer(addr, &head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer:?}");
    assert!(fake.published().is_empty());
    shutdown.cancel();
}
