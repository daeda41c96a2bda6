//! No secret reaches warren's output at any log level: every command runs at
//! `RUST_LOG=trace` (where lapin prints the frames it sends, the password
//! inside `StartOk` included) with distinctive secrets, and its stdout and
//! stderr are searched for each secret in every encoding.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Holds a quote and a `/`, so its Debug-escaped and percent-encoded forms
/// differ from the plain one.
const PASSWORD: &str = "Pw\"Sekr1t/Warren:7";
const TOKEN: &str = "tok.Ingress+Secret/4711";
const WEBHOOK_KEY: &[u8] = b"warren-test-webhook-key-0815!?>";

const DATA: &str =
    r#"{"user_id":7,"username":"ann","email":"ann@example.com","registration_timestamp":"2025-01-20T10:30:00Z"}"#;

/// A broker user of this test's own, deleted when dropped.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn create(password: &str) -> Self {
        let user = Self {
            name: support::unique("secrets-user"),
        };
        rabbitmqctl(&["add_user", &user.name, password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["delete_user", &self.name]).output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs rabbitmqctl (run as root beside the broker): {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {} failed (is RabbitMQ running?): {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(s: &[u8], keep: impl Fn(u8) -> bool, upper: bool) -> String {
    s.iter()
        .map(|&b| match (keep(b), upper) {
            (true, _) => char::from(b).to_string(),
            (false, true) => format!("%{b:02X}"),
            (false, false) => format!("%{b:02x}"),
        })
        .collect()
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// `secret` as it could appear in a log line, each form with its name.
fn encodings(secret: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(secret).into_owned();
    let debug = format!("{text:?}");
    let json = serde_json::to_string(&text).unwrap();
    let list = |sep: &str, f: &dyn Fn(&u8) -> String| secret.iter().map(f).collect::<Vec<_>>().join(sep);
    let mut out = vec![
        ("plain", text.clone()),
        ("Debug-escaped", debug[1..debug.len() - 1].to_owned()),
        ("JSON-escaped", json[1..json.len() - 1].to_owned()),
        ("percent-encoded", percent_encode(secret, unreserved, true)),
        ("percent-encoded, lower", percent_encode(secret, unreserved, false)),
        (
            "percent-encoded, all but letters and digits",
            percent_encode(secret, |b| b.is_ascii_alphanumeric(), true),
        ),
        ("base64", STANDARD_NO_PAD.encode(secret)),
        ("base64, URL-safe", URL_SAFE_NO_PAD.encode(secret)),
        ("hex", list("", &|b| format!("{b:02x}"))),
        ("HEX", list("", &|b| format!("{b:02X}"))),
        ("byte list", list(", ", &|b| b.to_string())),
        ("byte list, hex", list(", ", &|b| format!("{b:x}"))),
        ("byte list, 0x", list(", ", &|b| format!("{b:#04x}"))),
        ("escaped bytes", secret.escape_ascii().to_string()),
    ];
    out.dedup_by(|a, b| a.1 == b.1);
    out.into_iter().map(|(name, form)| (name.to_owned(), form)).collect()
}

/// Every secret of the test's settings, in every encoding.
fn needles(user: &str, webhook_secret: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |what: &str, secret: &[u8]| {
        for (how, form) in encodings(secret) {
            out.push((format!("{what} ({how})"), form));
        }
    };
    add("AMQP password", PASSWORD.as_bytes());
    // What StartOk carries: the SASL PLAIN response.
    add("SASL PLAIN response", format!("\0{user}\0{PASSWORD}").as_bytes());
    add("ingress token", TOKEN.as_bytes());
    add("webhook secret", webhook_secret.as_bytes());
    add("webhook key", WEBHOOK_KEY);
    out
}

fn assert_no_secret(what: &str, output: &str, needles: &[(String, String)]) {
    for (name, needle) in needles {
        if let Some(at) = output.find(needle.as_str()) {
            let line_start = output[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = output[at..].find('\n').map_or(output.len(), |i| at + i);
            panic!("`warren {what}` printed the {name}:\n{}", &output[line_start..line_end]);
        }
    }
}

/// The test's settings, as environment variables.
struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn command(&self, args: &[&str]) -> Command {
        // A directory of its own: no stray warren.toml or .env is read.
        let dir = std::env::temp_dir().join(support::unique("secrets"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(args)
            .current_dir(dir)
            .env_remove("AMQP_URL")
            .env_remove("GO_BACKEND_URL")
            .env("RUST_LOG", "trace");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let Output { status, stdout, stderr } = self.command(args).output().expect("run warren");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        assert!(status.success(), "warren {args:?} failed:\n{}", tail(&all));
        all
    }
}

fn tail(s: &str) -> &str {
    let mut cut = s.len().saturating_sub(4000);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

/// A running `warren` whose stdout and stderr are collected.
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
    listening: mpsc::Receiver<SocketAddr>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start warren");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, listening) = mpsc::channel();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let (output, tx) = (output.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if line.contains("ingress listening")
                        && let Some(addr) = line.split("listen=").nth(1)
                        && let Ok(addr) = addr.split_whitespace().next().unwrap_or("").parse()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Self {
            child,
            output,
            listening,
        }
    }

    fn listen_addr(&self) -> SocketAddr {
        self.listening
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no `ingress listening` line:\n{}", tail(&self.output.lock().unwrap())))
    }

    /// Waits until the output holds `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.output.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within 30 s:\n{}",
                tail(&self.output.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then everything it printed.
    fn stop(mut self) -> String {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "warren did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        self.output.lock().unwrap().clone()
    }
}

/// A failed assertion must not leave the process running.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one HTTP/1.1 request; the response's status code.
fn http(addr: SocketAddr, head: &str, body: &str) -> u16 {
    let mut conn = TcpStream::connect(addr).expect("connect to the ingress");
    write!(
        conn,
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Waits for /readyz to say the publisher is connected.
fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(addr, "GET /readyz HTTP/1.1", "") != 200 {
        assert!(Instant::now() < deadline, "the ingress is not ready after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POST /events with a bearer token; the status code.
fn post_event(addr: SocketAddr, token: &str) -> u16 {
    let body = format!(r#"{{"event_type":"user.registered","source":"secrets-test","user_id":7,"data":{DATA}}}"#);
    let head = format!("POST /events HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}");
    http(addr, &head, &body)
}

/// An HTTP server that answers 204 to everything and keeps each request's head.
fn webhook_receiver() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(head);
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_command_prints_a_secret_at_trace() {
    let conn = support::connect().await;
    let user = BrokerUser::create(PASSWORD);
    let broker = warren::uri::parse(&support::amqp_url()).expect("AMQP_URL parses");
    let url = format!(
        "amqp://{}:{}@{}:{}/%2f",
        user.name,
        percent_encode(PASSWORD.as_bytes(), unreserved, true),
        broker.authority.host,
        broker.authority.port
    );
    let webhook_secret = format!("whsec_{}", STANDARD.encode(WEBHOOK_KEY));
    let s = support::settings("secrets", false);
    let _gone = support::Cleanup::topology(&s);
    let (receiver, deliveries) = webhook_receiver();
    let env = Env {
        vars: [
            ("WARREN_AMQP__URL", url.as_str()),
            ("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange),
            ("WARREN_CONSUMER__SERVICE", &s.consumer.service),
            ("WARREN_TOPOLOGY__QUEUE_TYPE", "classic"),
            ("WARREN_CONSUMER__SHUTDOWN_TIMEOUT", "2s"),
            ("WARREN_INGRESS__LISTEN", "127.0.0.1:0"),
            ("WARREN_INGRESS__TOKEN", TOKEN),
            ("WARREN_WEBHOOK__SECRET", &webhook_secret),
            ("GO_BACKEND_URL", &format!("http://{receiver}")),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
    };
    let needles = needles(&user.name, &webhook_secret);

    assert_no_secret("config", &env.run(&["config"]), &needles);
    assert_no_secret("config --json", &env.run(&["config", "--json"]), &needles);
    let applied = env.run(&["topology", "apply"]);
    // The check means something only if the frame trace was on.
    assert!(
        applied.contains("StartOk"),
        "no frame trace at RUST_LOG=trace:\n{}",
        tail(&applied)
    );
    assert_no_secret("topology apply", &applied, &needles);
    let publish = ["publish", "user.registered", "--data", DATA];
    assert_no_secret("publish", &env.run(&publish), &needles);
    let json = env.run(&[&["--log-json"], publish.as_slice()].concat());
    assert!(json.contains("StartOk"), "{}", tail(&json));
    assert_no_secret("--log-json publish", &json, &needles);

    let consume = Running::start(env.command(&["consume"]));
    // The log handler's line for a published event, on stdout.
    consume.wait_for("\"event_type\":\"user.registered\"");
    assert_no_secret("consume", &consume.stop(), &needles);

    let ingress = Running::start(env.command(&["ingress"]));
    let addr = ingress.listen_addr();
    wait_ready(addr);
    assert_eq!(post_event(addr, "wrong-token"), 401);
    assert_eq!(post_event(addr, TOKEN), 202);
    assert_no_secret("ingress", &ingress.stop(), &needles);

    let run = Running::start(env.command(&["run", "--handler", "webhook"]));
    let addr = run.listen_addr();
    wait_ready(addr);
    assert_eq!(post_event(addr, TOKEN), 202);
    let head = deliveries
        .recv_timeout(Duration::from_secs(20))
        .expect("the webhook delivered an event");
    assert!(
        head.to_ascii_lowercase().contains("webhook-signature: v1,"),
        "unsigned: {head}"
    );
    assert_no_secret("run --handler webhook", &run.stop(), &needles);

    support::cleanup(&conn, &warren::Topology::from_settings(&s)).await;
}

#[test]
fn an_unencoded_slash_in_the_password_is_refused_without_showing_it() {
    let env = Env {
        vars: vec![(
            "WARREN_AMQP__URL".to_owned(),
            "amqp://user:Sekr1t/Warren@127.0.0.1:5672/%2f".to_owned(),
        )],
    };
    for args in [&["config"][..], &["topology", "apply"]] {
        let out = env.command(args).output().expect("run warren");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?} accepted it");
        assert!(
            all.contains("percent-encoded") && all.contains("%2F"),
            "{args:?}: {all}"
        );
        assert!(!all.contains("Sekr1t") && !all.contains("Warren@"), "{args:?}: {all}");
    }
}

/// Passwords that spell ordinary words (or are the user's name): the log is
/// masked where the password sits (the URI, the SASL PLAIN response, a
/// `password` field), every other word of it stays whole, and a mask never
/// stands where the password was not.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_or_common_password_is_masked_where_it_sits_and_nowhere_else() {
    let conn = support::connect().await;
    let broker = warren::uri::parse(&support::amqp_url()).expect("AMQP_URL parses");
    let s = support::settings("secrets-weak", false);
    let url = |user: &str, password: &str| {
        format!(
            "amqp://{user}:{password}@{}:{}/%2f",
            broker.authority.host, broker.authority.port
        )
    };
    let env = |url: &str| Env {
        vars: [
            ("WARREN_AMQP__URL", url),
            ("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange),
            ("WARREN_CONSUMER__SERVICE", &s.consumer.service),
            ("WARREN_TOPOLOGY__QUEUE_TYPE", "classic"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
    };
    // Every run first, the checks after the cleanup: a failing check must
    // not leave the topology on the broker.
    let mut runs = Vec::new();
    for password in ["o", "wrong", "password", "guest", "vhost"] {
        let user = BrokerUser::create(password);
        let out = env(&url(&user.name, password))
            .command(&["topology", "apply"])
            .output()
            .expect("run warren");
        runs.push((password, user.name.clone(), out));
    }
    // A refused login: its message names the cause in whole words.
    let user = BrokerUser::create("password");
    let refused = env(&url(&user.name, "wrong"))
        .command(&["topology", "apply"])
        .output()
        .expect("run warren");
    let refused_user = user.name.clone();
    drop(user);
    support::cleanup(&conn, &warren::Topology::from_settings(&s)).await;

    let text = |out: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for (password, user, out) in &runs {
        let all = text(out);
        assert!(out.status.success(), "topology apply failed:\n{}", tail(&all));
        assert!(all.contains("StartOk"), "no frame trace:\n{}", tail(&all));
        assert_masked_in_place(&all, user, password);
    }
    let all = text(&refused);
    assert!(!refused.status.success(), "{}", tail(&all));
    assert!(
        all.contains("login refused: wrong username or password"),
        "{}",
        tail(&all)
    );
    assert_masked_in_place(&all, &refused_user, "wrong");
}

/// `output` holds `password` in none of the places it sits, and each `***`
/// stands in one of them.
fn assert_masked_in_place(output: &str, user: &str, password: &str) {
    let list = |b: &[u8]| {
        let l = format!("{b:?}");
        l[1..l.len() - 1].to_owned()
    };
    let sasl = format!("\0{user}\0{password}");
    for (what, needle) in [
        ("URI", format!("{user}:{password}@")),
        ("SASL byte list", list(sasl.as_bytes())),
        ("SASL base64", STANDARD.encode(&sasl)),
        ("password field", format!("password: \"{password}\"")),
    ] {
        assert!(
            !output.contains(&needle),
            "password {password:?} shown as its {what}:\n{}",
            tail(output)
        );
    }
    let masked_user = format!("{}, 0, ***", list(user.as_bytes()));
    for (at, _) in output.match_indices("***") {
        let before = &output[..at];
        let placed = before.ends_with(&format!("{user}:"))
            || before.ends_with("guest:")
            || output[..at + 3].ends_with(&masked_user)
            || before.ends_with("password: \"");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = output[at..].find('\n').map_or(output.len(), |i| at + i);
        assert!(
            placed,
            "a mask where the password {password:?} was not:\n{}",
            &output[line_start..line_end]
        );
    }
}
