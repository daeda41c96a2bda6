//! The RabbitMQ nodes the destructive tests run against: a 3-node cluster
//! that `scripts/cluster` starts on this host when it is not up, never the
//! broker on 127.0.0.1:5672. One per base port (`WARREN_TEST_CLUSTER_BASE`,
//! default 5701); a test binary that uses it holds it alone until it exits,
//! so binaries run side by side wait for each other rather than kill each
//! other's nodes. `scripts/cluster stop` tears it down.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Nodes in the test cluster.
pub const NODES: usize = 3;

/// The running cluster (see [`Cluster::get`]).
pub struct Cluster {
    base: u16,
    /// Held (locked) for the life of the test binary.
    _exclusive: File,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster").to_owned()
}

impl Cluster {
    /// The cluster, started (or its stopped nodes started again) when
    /// needed. Panics saying why when it cannot start: these tests never
    /// skip. Call it before spawning tasks: starting takes half a minute.
    pub fn get() -> &'static Cluster {
        CLUSTER.get_or_init(|| {
            let base: u16 = std::env::var("WARREN_TEST_CLUSTER_BASE")
                .ok()
                .and_then(|b| b.parse().ok())
                .unwrap_or(5701);
            let lock = format!("/tmp/warren-cluster-{base}.tests.lock");
            let exclusive = File::create(&lock).unwrap_or_else(|e| panic!("{lock}: {e}"));
            exclusive.lock().unwrap_or_else(|e| panic!("locking {lock}: {e}"));
            let cluster = Cluster {
                base,
                _exclusive: exclusive,
            };
            cluster.start();
            cluster
        })
    }

    /// `scripts/cluster start`: starts what is not running (a killed node
    /// comes back with its data) and checks every node is a member.
    pub fn start(&self) {
        self.start_from(Path::new("."));
    }

    /// [`Cluster::start`], run from the directory `cwd`.
    pub fn start_from(&self, cwd: &Path) {
        let out = Command::new(script())
            .args(["start", "--nodes", &NODES.to_string(), "--base", &self.base.to_string()])
            .current_dir(cwd)
            .output()
            .expect("running scripts/cluster (bash, and RabbitMQ's /usr/lib/rabbitmq/bin)");
        assert!(
            out.status.success(),
            "these tests need their own RabbitMQ cluster, and `scripts/cluster start --base {}` failed:\n{}{}",
            self.base,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// AMQP port of node `i` (1-based).
    pub fn amqp_port(&self, i: usize) -> u16 {
        self.base + i as u16 - 1
    }

    /// Management API port of node `i`.
    pub fn management_port(&self, i: usize) -> u16 {
        self.base + 10_000 + i as u16 - 1
    }

    /// AMQPS port of node `i` (when started with `--tls`).
    pub fn tls_port(&self, i: usize) -> u16 {
        self.base + 70 + i as u16 - 1
    }

    /// Socket address of node `i`'s AMQP listener.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port(i)))
    }

    /// Erlang node name of node `i`, as `scripts/cluster` names it.
    pub fn node_name(&self, i: usize) -> String {
        if self.base == 5701 {
            format!("warren-n{i}@localhost")
        } else {
            format!("warren{}-n{i}@localhost", self.base)
        }
    }

    /// The node number of an Erlang node name.
    pub fn index_of(&self, node_name: &str) -> usize {
        (1..=NODES)
            .find(|i| self.node_name(*i) == node_name)
            .unwrap_or_else(|| panic!("{node_name} is not a node of this cluster"))
    }

    /// AMQP URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port(i))
    }

    /// `amqp.url` listing `nodes` in that order.
    pub fn urls(&self, nodes: &[usize]) -> String {
        nodes.iter().map(|i| self.url(*i)).collect::<Vec<_>>().join(",")
    }

    /// `kill -9` of node `i`: a crash.
    pub fn kill(&self, i: usize) {
        self.script(&["kill", &i.to_string()]);
    }

    /// `rabbitmqctl` against node `i`; panics with its output when it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let i = i.to_string();
        let mut all = vec!["ctl", i.as_str()];
        all.extend_from_slice(args);
        self.script(&all)
    }

    fn script(&self, args: &[&str]) -> String {
        let out = Command::new(script())
            .args(args)
            .args(["--base", &self.base.to_string()])
            .output()
            .expect("running scripts/cluster");
        assert!(
            out.status.success(),
            "scripts/cluster {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node holding the leader of quorum queue `queue`, asked of node `ask`.
    pub async fn leader_of(&self, queue: &str, ask: usize) -> usize {
        let path = format!("/api/queues/%2F/{}", super::management::percent_encode(queue));
        for _ in 0..150 {
            let (status, body) = super::management::request(self.management_port(ask), "GET", &path);
            if status == 200
                && let Ok(q) = serde_json::from_str::<serde_json::Value>(&body)
                && let Some(leader) = q["leader"].as_str()
            {
                return self.index_of(leader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {ask} never named the leader of {queue}");
    }
}
