//! The outbox relay under faults, each with N = 5,000 rows inserted while
//! it runs: the relay process killed (SIGKILL) and restarted, its broker
//! connection closed, its database connections terminated, the broker
//! unreachable for 10 s, and two relays at once. Each scenario counts rows
//! inserted, rows marked published, events delivered (unique), duplicates,
//! lost (must be 0) and out-of-order pairs per user (must be 0), and prints
//! its docs/RELIABILITY.md row (`RELAY-RELIABILITY|…`, see
//! scripts/reliability-table).
//!
//! The relay runs as the `warren relay` process. Faults touch only this
//! test's own connections: the broker connection by its name, the database
//! backends by their application_name, the network through a TCP proxy.

#[path = "relay/outbox.rs"]
mod outbox;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox::{Recorder, Scratch, Tally, envelope};
use support::proxy::Proxy;

/// Rows per scenario.
const N: usize = 5000;
/// Users the rows belong to (N / USERS events each, in sequence).
const USERS: i64 = 250;
/// Inserting connections; each owns the users `u % INSERTERS == k`.
const INSERTERS: i64 = 4;
/// Rows per insert transaction.
const PER_TX: usize = 25;

/// One scenario's table, topology, recorder, and how to start relays.
struct Scenario {
    scratch: Scratch,
    recorder: Recorder,
    env: Vec<(String, String)>,
    /// The relays' AMQP connection name (unique to the scenario).
    connection_name: String,
    relays: Vec<Child>,
    /// Deletes the queues and exchange when the test ends, however it ends
    /// (after `drop` below has killed the relays).
    _topology: support::Declared,
}

impl Scenario {
    async fn new(prefix: &str, amqp_url: Option<String>) -> Self {
        let scratch = Scratch::new(prefix).await;
        let settings = scratch.settings(support::settings(prefix, false));
        let conn = support::connect().await;
        let topology = support::declare(&conn, &settings).await;
        let recorder = Recorder::start(&topology.work_queue("user.registered")).await;
        let connection_name = support::unique(&format!("relay-{prefix}"));
        let env = [
            ("WARREN_AMQP__URL", amqp_url.unwrap_or_else(support::amqp_url)),
            ("WARREN_AMQP__CONNECTION_NAME", connection_name.clone()),
            ("WARREN_AMQP__HEARTBEAT", "2".into()),
            ("WARREN_PUBLISHER__CONFIRM_TIMEOUT", "5s".into()),
            ("WARREN_TOPOLOGY__EXCHANGE", settings.topology.exchange.clone()),
            (
                "WARREN_RELAY__DATABASE_URL",
                settings.relay.database_url.clone().unwrap(),
            ),
            ("WARREN_RELAY__TABLE", settings.relay.table.clone()),
            ("WARREN_RELAY__BATCH_SIZE", "100".into()),
            ("WARREN_RELAY__POLL_INTERVAL", "200ms".into()),
            ("RUST_LOG", "warren=error".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        Self {
            scratch,
            recorder,
            env,
            connection_name,
            relays: Vec::new(),
            _topology: topology,
        }
    }

    /// Sets one more environment variable of the relays started from now on.
    fn set(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts one more `warren relay` process.
    fn start_relay(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("relay")
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("warren relay starts");
        self.relays.push(child);
    }

    /// SIGKILLs relay `i` (no shutdown of any kind).
    fn kill_relay(&mut self, i: usize) {
        let mut child = self.relays.remove(i);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Inserts the N rows from INSERTERS connections, spread over about
    /// `over`, each user's events in sequence.
    fn insert_all(&self, over: Duration) -> tokio::task::JoinHandle<()> {
        let table = self.scratch.table.clone();
        tokio::spawn(async move {
            let per_inserter = N / INSERTERS as usize;
            let transactions = per_inserter.div_ceil(PER_TX);
            let pause = over / u32::try_from(transactions).unwrap();
            let mut tasks = Vec::new();
            for k in 0..INSERTERS {
                let table = table.clone();
                tasks.push(tokio::spawn(async move {
                    let client = outbox::connect("warren-tests-inserter").await;
                    let users: Vec<i64> = (0..USERS).filter(|u| u % INSERTERS == k).collect();
                    // Round-robin over this inserter's users: event `seq` of
                    // every user, then `seq + 1`, … (so each user's events
                    // commit in sequence order).
                    let rows: Vec<String> = (0..per_inserter)
                        .map(|i| envelope(users[i % users.len()], u32::try_from(i / users.len()).unwrap()))
                        .collect();
                    for chunk in rows.chunks(PER_TX) {
                        outbox::insert_with(&client, &table, chunk).await;
                        tokio::time::sleep(pause).await;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("inserter");
            }
        })
    }

    /// Waits for every row to arrive and be marked, then checks and prints the tally.
    async fn finish(mut self, scenario: &str, inserting: tokio::task::JoinHandle<()>) {
        inserting.await.expect("inserting");
        self.recorder.wait_unique(N, Duration::from_secs(120)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.scratch.count("published").await < N as i64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Late duplicates (a re-publish after the last fault) have landed by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let confirmed = usize::try_from(self.scratch.count("published").await).unwrap();
        Tally::of(N, confirmed, &self.recorder.all()).check(scenario);
        for i in (0..self.relays.len()).rev() {
            self.kill_relay(i);
        }
        self.scratch.drop_all().await;
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for child in &mut self.relays {
            let _ = child.kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_batch_and_restarted() {
    let mut s = Scenario::new("kill", None).await;
    // A backlog first and big batches, so the relay is busy publishing a
    // batch whenever it is killed.
    s.set("WARREN_RELAY__BATCH_SIZE", "1000");
    let inserting = s.insert_all(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.start_relay();
    for _ in 0..3 {
        wait_for_progress(&s.recorder, 700).await;
        s.kill_relay(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.start_relay();
    }
    s.finish("relay SIGKILL mid-batch, restarted (x3)", inserting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_closed_mid_batch() {
    let mut s = Scenario::new("amqpclose", None).await;
    let inserting = s.insert_all(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.start_relay();
    for _ in 0..2 {
        wait_for_progress(&s.recorder, 500).await;
        // Only the relay's own connection, found by its name: no other
        // client of the broker is touched.
        let name = support::management::connection_named(15672, &s.connection_name).await;
        support::management::force_close(15672, &name);
    }
    s.finish("relay's broker connection closed mid-batch (x2)", inserting)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_terminated_mid_batch() {
    let mut s = Scenario::new("pgkill", None).await;
    s.start_relay();
    let inserting = s.insert_all(Duration::from_secs(4));
    let app = format!("relay-{}", s.scratch.schema);
    for _ in 0..3 {
        wait_for_progress(&s.recorder, 400).await;
        let killed: i64 = s
            .scratch
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1, "no backend of {app} to terminate");
    }
    s.finish("relay's database connections terminated mid-batch (x3)", inserting)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_for_10_s_while_rows_pile_up() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut s = Scenario::new("brokerdown", Some(proxy.url())).await;
    s.start_relay();
    let inserting = s.insert_all(Duration::from_secs(6));
    wait_for_progress(&s.recorder, 300).await;
    // Nothing passes and every connection is cut: the broker is gone.
    proxy.stall();
    proxy.cut();
    let stalled_at = s.recorder.unique();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = s.recorder.unique();
    let pending = s.scratch.count("pending").await;
    proxy.resume();
    assert!(during <= stalled_at + 200, "events kept arriving with the broker away");
    assert!(pending > 0, "rows piled up while the broker was away");
    s.finish("broker unreachable 10 s, rows piling up", inserting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once() {
    let mut s = Scenario::new("two", None).await;
    s.start_relay();
    s.start_relay();
    let inserting = s.insert_all(Duration::from_secs(4));
    wait_for_progress(&s.recorder, 2500).await;
    // The active one dies; the standby takes over.
    s.kill_relay(0);
    s.start_relay();
    s.finish("two relays at once (one SIGKILLed and replaced midway)", inserting)
        .await;
}

/// Waits until `more` further distinct events have arrived.
async fn wait_for_progress(recorder: &Recorder, more: usize) {
    let target = recorder.unique() + more;
    recorder.wait_unique(target.min(N), Duration::from_secs(60)).await;
}
