//! examples/receiver/receiver.py, run with python3 as the compose service
//! runs it (its secret, its healthcheck), sent deliveries signed by warren's
//! own signer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use warren::webhook::Secret;

use super::common::{self, compose, environment, service, strings};

/// The seed user.login payload, as warren forwards it (compact, with an event_id).
const EVENT_ID: &str = "01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a";
const BODY: &str = r#"{"event_id":"01938f5e-7c7a-7b3e-9a51-6f0e2c1d4b7a","event_type":"user.login","timestamp":"2025-01-20T10:35:00Z","source":"django-backend","user_id":123,"data":{"user_id":123,"username":"john_doe","email":"john@example.com","login_timestamp":"2025-01-20T10:35:00Z","ip_address":"192.168.1.100"}}"#;

/// The receiver on a free port; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(secret: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(common::repo("examples/receiver/receiver.py"))
            .env("WEBHOOK_SECRET", secret)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        // Its first line on stderr: "receiver listening on http://0.0.0.0:PORT/events".
        let mut first = String::new();
        BufReader::new(child.stderr.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_suffix("/events")
            .and_then(|s| s.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
        Self { child, port }
    }

    /// Stops it with SIGTERM (as `docker stop` does); returns its stdout.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the receiver exits cleanly on SIGTERM: {status}");
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; returns the status code.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"))
}

fn signed(secret: &Secret, id: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("webhook-id", id.into()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", secret.sign(id, ts, body.as_bytes())),
        ("x-warren-attempt", "1".into()),
    ]
}

#[test]
fn the_receiver_answers_204_to_a_signed_delivery_and_401_to_a_bad_one() {
    let c = compose();
    let secret_text = environment(service(&c, "receiver"))["WEBHOOK_SECRET"].clone();
    let secret = Secret::parse(&secret_text).unwrap();
    let other = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let receiver = Receiver::start(&secret_text);
    let port = receiver.port;
    let now = chrono::Utc::now().timestamp();

    let good = signed(&secret, EVENT_ID, now, BODY);
    assert_eq!(request(port, "POST", "/events", &good, BODY), 204);

    // The same signature over other bytes, another secret, an old timestamp, none at all.
    let tampered = BODY.replace("john_doe", "mallory");
    assert_eq!(request(port, "POST", "/events", &good, &tampered), 401);
    let wrong_key = signed(&other, EVENT_ID, now, BODY);
    assert_eq!(request(port, "POST", "/events", &wrong_key, BODY), 401);
    let replayed = signed(&secret, EVENT_ID, now - 3600, BODY);
    assert_eq!(request(port, "POST", "/events", &replayed, BODY), 401);
    assert_eq!(request(port, "POST", "/events", &good[..3], BODY), 401);
    // Signed but not JSON: a permanent failure warren dead-letters.
    let junk = signed(&secret, EVENT_ID, now, "not json");
    assert_eq!(request(port, "POST", "/events", &junk, "not json"), 400);
    assert_eq!(request(port, "POST", "/elsewhere", &good, BODY), 404);

    // The compose healthcheck, pointed at this port.
    let check = strings(&service(&c, "receiver")["healthcheck"]["test"]);
    assert_eq!(check[0], "CMD");
    let status = Command::new(&check[1])
        .args(check[2..].iter().map(|a| a.replace(":8081/", &format!(":{port}/"))))
        .status()
        .unwrap();
    assert!(status.success(), "the receiver's healthcheck fails");

    // One line on stdout, for the one accepted event.
    let out = receiver.stop();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["webhook_id"], EVENT_ID);
    assert_eq!(line["attempt"], "1");
    assert_eq!(line["event"], serde_json::from_str::<Value>(BODY).unwrap());
}

#[test]
fn the_receiver_refuses_to_start_without_a_valid_secret() {
    for secret in ["", "not-a-secret", "whsec_c2hvcnQ="] {
        let out = Command::new("python3")
            .arg(common::repo("examples/receiver/receiver.py"))
            .env("WEBHOOK_SECRET", secret)
            .env("PORT", "0")
            .output()
            .expect("python3 runs the receiver");
        assert_eq!(out.status.code(), Some(2), "secret {secret:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("WEBHOOK_SECRET"), "{stderr}");
    }
}
