//! The bookkeeping of a fault-injection scenario: which event_ids the
//! producer saw confirmed, which the handlers saw, and what that adds up to.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;
use warren::consumer::{Context, HandlerError};
use warren::{Envelope, Publisher, UserRegistered};

/// Events each scenario publishes.
pub const N: usize = 5000;

/// Handled event_ids with how often each was handled.
#[derive(Clone, Default)]
pub struct Handled(pub Arc<Mutex<HashMap<Uuid, u32>>>);

impl Handled {
    pub fn record(&self, id: Uuid) {
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }

    pub fn unique(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn covers(&self, ids: &HashSet<Uuid>) -> bool {
        let m = self.0.lock().unwrap();
        ids.iter().all(|id| m.contains_key(id))
    }

    pub fn snapshot(&self) -> HashMap<Uuid, u32> {
        self.0.lock().unwrap().clone()
    }

    /// A handler that records every event it sees and succeeds.
    pub fn handler(
        &self,
    ) -> impl Fn(Envelope<UserRegistered>, Context) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
    {
        let me = self.clone();
        move |e, _ctx| {
            me.record(e.event_id);
            std::future::ready(Ok(()))
        }
    }
}

/// Publishes `events` from `tasks` concurrent tasks in batches of `batch`,
/// counting progress in `sent`; returns the confirmed ids and the failures.
pub async fn publish_all(
    publisher: Publisher,
    events: Vec<Envelope<UserRegistered>>,
    tasks: usize,
    batch: usize,
    sent: Arc<AtomicUsize>,
) -> (HashSet<Uuid>, Vec<String>) {
    let events = Arc::new(events);
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (publisher, events, sent) = (publisher.clone(), events.clone(), sent.clone());
        joins.push(tokio::spawn(async move {
            let mut ok = HashSet::new();
            let mut failed = Vec::new();
            let mine: Vec<_> = events.iter().skip(t).step_by(tasks).cloned().collect();
            for chunk in mine.chunks(batch) {
                for (e, r) in chunk.iter().zip(publisher.publish_batch(chunk).await) {
                    match r {
                        Ok(()) => {
                            ok.insert(e.event_id);
                        }
                        Err(err) => failed.push(err.to_string()),
                    }
                }
                sent.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            (ok, failed)
        }));
    }
    let mut confirmed = HashSet::new();
    let mut failed = Vec::new();
    for j in joins {
        let (ok, f) = j.await.expect("publisher task");
        confirmed.extend(ok);
        failed.extend(f);
    }
    (confirmed, failed)
}

/// Waits until `counter` reaches `at`.
pub async fn wait_for_count(counter: &AtomicUsize, at: usize, within: Duration) {
    super::eventually(within, &format!("{at} events in"), || {
        counter.load(Ordering::Relaxed) >= at
    })
    .await;
}

/// One row of docs/RELIABILITY.md.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub published: usize,
    pub confirmed: usize,
    pub handled_unique: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub poison_dead: Option<(usize, usize)>,
}

impl Report {
    pub fn new(
        scenario: &'static str,
        published: usize,
        confirmed: &HashSet<Uuid>,
        handled: &HashMap<Uuid, u32>,
    ) -> Self {
        let lost = confirmed.iter().filter(|id| !handled.contains_key(id)).count();
        let duplicates = handled.values().map(|n| (*n as usize).saturating_sub(1)).sum();
        Self {
            scenario,
            published,
            confirmed: confirmed.len(),
            handled_unique: handled.len(),
            duplicates,
            lost,
            poison_dead: None,
        }
    }

    /// Prints the row (collected by scripts/reliability-table) and asserts
    /// nothing confirmed was lost and duplicates stay within `dup_bound`.
    pub fn check(&self, dup_bound: usize) {
        let poison = self
            .poison_dead
            .map_or_else(|| "-".to_owned(), |(sent, dead)| format!("{dead}/{sent} in .dead"));
        println!(
            "RELIABILITY|{}|{}|{}|{}|{}|{}|{}",
            self.scenario, self.published, self.confirmed, self.handled_unique, self.duplicates, self.lost, poison
        );
        assert_eq!(
            self.lost, 0,
            "{}: confirmed events never handled: {self:?}",
            self.scenario
        );
        assert!(
            self.duplicates <= dup_bound,
            "{}: {} duplicates > bound {dup_bound}",
            self.scenario,
            self.duplicates
        );
        assert!(self.confirmed > 0, "{}: nothing confirmed", self.scenario);
        if let Some((sent, dead)) = self.poison_dead {
            assert_eq!(sent, dead, "{}: poison bodies not all in .dead", self.scenario);
        }
    }
}

/// `rabbitmqctl` with arguments; panics with its output when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (the fault tests need it, as root, on the broker's machine)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Has the broker close every connection whose client-given name contains
/// `name`; returns how many it closed.
pub fn close_connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]);
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(name)) {
        let pid = line.split_whitespace().next().unwrap_or("");
        if pid.starts_with('<') {
            rabbitmqctl(&["-q", "close_connection", pid, "fault injection"]);
            closed += 1;
        }
    }
    closed
}

/// One request to the management HTTP API (HTTP/1.0: no chunking to undo).
fn management(method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect("127.0.0.1:15672")
        .expect("the management plugin on :15672 (rabbitmq-plugins enable rabbitmq_management)");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The broker's name of the connection whose client-given name contains
/// `name`, waiting for the management statistics (emitted every few seconds)
/// to list it.
pub async fn broker_connection_named(name: &str) -> String {
    for _ in 0..150 {
        let (status, body) = management("GET", "/api/connections?columns=name,client_properties");
        assert_eq!(status, 200, "GET /api/connections: {body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("connections JSON");
        if let Some(c) = list.iter().find(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or("")
                .contains(name)
        }) {
            return c["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection named {name:?} appeared in the management API");
}

/// Has the broker force-close a connection (as `rabbitmqctl close_connection`
/// does), through the management API, which answers in milliseconds.
pub fn force_close(broker_name: &str) {
    let (status, body) = management("DELETE", &format!("/api/connections/{}", percent_encode(broker_name)));
    assert!(
        status == 204 || status == 200,
        "DELETE connection {broker_name}: {status} {body}"
    );
}
