//! `warren-bench` as a process: small runs (classic queues) that must
//! complete, count every event, report ratios, and leave no queue behind.
//! Speed is not asserted here: it lives in the benchmark itself.

// warren's own broker helpers: the broker URL, unique names, cleanup.
#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The tests compare the broker's `warren-bench-*` queues before and after
/// a run, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bench(args: &[&str], exchange: &str) -> Output {
    bench_with(args, &[("WARREN_TOPOLOGY__EXCHANGE", exchange)])
}

fn bench_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .args(args)
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run warren-bench")
}

/// The names of the broker's queues made by `warren-bench`.
fn bench_queues() -> BTreeSet<String> {
    support::rabbitmqctl(&["-q", "list_queues", "name", "--no-table-headers"])
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("warren-bench-"))
        .map(str::to_owned)
        .collect()
}

/// Fails when bench queues exist now that did not before.
fn assert_none_left(before: &BTreeSet<String>) {
    let after = bench_queues();
    let left: Vec<_> = after.difference(before).collect();
    assert!(left.is_empty(), "queues left behind: {left:?}");
}

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "warren-bench failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("--json printed no JSON ({e}): {stdout}"))
}

#[test]
fn baseline_run_counts_every_event_reports_ratios_and_cleans_up() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = bench_queues();
    let exchange = support::unique("bench-x");
    let out = bench(
        &["--baseline", "--events", "400", "--queue-type", "classic", "--json"],
        &exchange,
    );
    let json = report(&out);
    let run = &json["runs"][0];
    for kind in ["warren", "baseline", "lean"] {
        assert_eq!(run[kind]["events"], 400, "{kind}: {run}");
        assert!(run[kind]["end_to_end_rate"].as_f64().unwrap() > 0.0, "{kind}: {run}");
        assert!(run[kind]["latency_p99_ms"].as_f64().unwrap() > 0.0, "{kind}: {run}");
        assert!(run[kind]["broker_cpu_us_per_event"].is_null(), "no --broker-pid: {run}");
    }
    for ratio in ["warren/baseline", "warren/lean"] {
        let median = json["summary"]["end_to_end_rate"]["ratios"][ratio]["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {ratio} ratio: {}", json["summary"]));
        assert!(median > 0.0, "{ratio}: {median}");
    }
    assert_none_left(&before);
}

#[test]
fn additions_run_the_lean_loop_with_each_addition_and_measure_a_given_process() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = bench_queues();
    let exchange = support::unique("bench-add-x");
    // Any process's CPU can be read: this test's own stands in for the broker's.
    let pid = std::process::id().to_string();
    let out = bench(
        &[
            "--additions",
            "--events",
            "200",
            "--queue-type",
            "classic",
            "--broker-pid",
            &pid,
            "--json",
        ],
        &exchange,
    );
    let json = report(&out);
    let run = json["runs"][0].as_object().expect("one run");
    let kinds: Vec<&str> = run.keys().map(String::as_str).collect();
    for kind in [
        "lean",
        "lean+mandatory",
        "lean+properties",
        "lean+event_id",
        "lean+validation",
        "lean+metrics",
        "lean+deadlines",
        "lean+consumer_defaults",
    ] {
        assert_eq!(run[kind]["events"], 200, "{kind}: {kinds:?}");
        assert!(
            run[kind]["broker_cpu_us_per_event"].as_f64().is_some(),
            "{kind}: {}",
            run[kind]
        );
    }
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    let cpu = &json["summary"]["cpu_us_per_event"]["ratios"]["lean+metrics/lean"]["median"];
    assert!(cpu.as_f64().is_some_and(|r| r > 0.0), "{cpu}");
    assert_none_left(&before);
}

#[test]
fn prefetches_run_warren_at_each_and_at_the_configured_one() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = bench_queues();
    let exchange = support::unique("bench-prefetch-x");
    let out = bench(
        &[
            "--prefetches",
            "64,1000",
            "--events",
            "300",
            "--queue-type",
            "classic",
            "--json",
        ],
        &exchange,
    );
    let json = report(&out);
    let run = &json["runs"][0];
    for kind in ["warren@512", "warren@64", "warren@1000"] {
        assert_eq!(run[kind]["events"], 300, "{kind}: {run}");
    }
    assert!(json["summary"]["end_to_end_rate"]["ratios"]["warren@64/warren@512"]["median"].is_number());
    assert_none_left(&before);
}

#[test]
fn help_lists_the_bench_options_and_the_settings_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .arg("--help")
        .output()
        .expect("run warren-bench --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for option in ["--baseline", "--additions", "--ingress", "--relay", "--config"] {
        assert!(help.contains(option), "{option} missing: {help}");
    }
}

#[test]
fn additions_do_not_go_with_a_baseline_or_the_ingress() {
    let out = bench(&["--additions", "--baseline", "--events", "10"], "unused");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'--additions' cannot be used with '--baseline'"),
        "{stderr}"
    );
}

/// Deletes the test's exchange (a bench leaves a configured exchange alone).
fn delete_exchange(name: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = support::connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_delete(name.into(), Default::default()).await.unwrap();
    });
}

/// warren's HTTP ingress, served from this process on a free port and
/// publishing to `exchange`, as `warren ingress` would.
struct Ingress {
    url: String,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Ingress {
    fn start(exchange: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the ingress");
        let mut settings = warren::Settings::default();
        settings.amqp.url = support::amqp_url();
        settings.topology.exchange = exchange.to_owned();
        settings.ingress.listen = listener.local_addr().unwrap();
        let url = format!("http://{}", settings.ingress.listen);
        let stop = CancellationToken::new();
        let _entered = runtime.enter();
        let publisher = warren::Publisher::start(&settings, "ingress");
        let state = warren::http::AppState::new(Arc::new(publisher), &settings.ingress);
        runtime.spawn(warren::http::serve(listener, state, stop.clone()));
        Self {
            url,
            stop,
            runtime: Some(runtime),
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

#[test]
fn ingress_run_posts_every_event_through_http() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = bench_queues();
    let exchange = support::unique("bench-ingress-x");
    let ingress = Ingress::start(&exchange);
    let out = bench(
        &[
            "--ingress",
            &ingress.url,
            "--events",
            "300",
            "--queue-type",
            "classic",
            "--json",
        ],
        &exchange,
    );
    let json = report(&out);
    let run = &json["runs"][0]["warren"];
    assert_eq!(run["events"], 300, "{run}");
    assert!(run["publish_rate"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(json["plan"]["ingress"], ingress.url.as_str());
    drop(ingress);
    assert_none_left(&before);
    delete_exchange(&exchange);
}

#[test]
fn ingress_run_warns_that_the_services_own_queue_gets_copies() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = support::settings("bench-copies", false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = rt.block_on(support::connect());
    let topology = rt.block_on(support::declare(&conn, &s));
    let ingress = Ingress::start(&s.topology.exchange);
    let out = bench_with(
        &["--ingress", &ingress.url, "--events", "200", "--queue-type", "classic"],
        &[
            ("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange),
            ("WARREN_CONSUMER__SERVICE", &s.consumer.service),
        ],
    );
    drop(ingress);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    let queue = topology.work_queue("user.registered");
    assert!(stderr.contains(&format!("warning: queue {queue} exists")), "{stderr}");
    // What the warning is about: that queue got every bench event too.
    rt.block_on(async {
        let ch = conn.create_channel().await.unwrap();
        support::wait_ready(&ch, &queue, 200, Duration::from_secs(10)).await;
        support::cleanup(&conn, &topology).await;
    });
}

#[test]
fn ingress_url_that_is_not_http_is_a_clear_error() {
    let out = bench(&["--ingress", "https://127.0.0.1:8443", "--events", "10"], "unused");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ingress https://127.0.0.1:8443: https:// is not supported"),
        "{stderr}"
    );
}

#[test]
fn ingress_that_is_not_running_is_a_clear_error() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let exchange = support::unique("bench-down-x");
    let out = bench(
        &["--ingress", &url, "--events", "10", "--queue-type", "classic"],
        &exchange,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("connecting to {url}/events")), "{stderr}");
    delete_exchange(&exchange);
}
