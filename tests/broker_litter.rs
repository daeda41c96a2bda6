//! scripts/broker-litter, the check `.ci/run` makes after the tests: a
//! command that leaves queues and an exchange on the broker fails it, and
//! each leftover is named.

mod support;

use std::process::Command;

#[test]
fn a_command_that_leaves_its_topology_behind_fails_naming_each_object() {
    drop(tokio::runtime::Runtime::new().unwrap().block_on(support::connect()));
    let s = support::settings("litter", false);
    let _gone = support::Cleanup::topology(&s);
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker-litter"))
        .args([env!("CARGO_BIN_EXE_warren"), "topology", "apply"])
        .env_remove("AMQP_URL")
        .env("WARREN_AMQP__URL", support::amqp_url())
        .env("WARREN_TOPOLOGY__EXCHANGE", &s.topology.exchange)
        .env("WARREN_CONSUMER__SERVICE", &s.consumer.service)
        .env("WARREN_TOPOLOGY__QUEUE_TYPE", "classic")
        // What the command left stays: no need to wait for it to go.
        .env("BROKER_LITTER_GRACE", "0")
        .output()
        .expect("scripts/broker-litter runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the check fails: {err}");
    let topology = warren::Topology::from_settings(&s);
    assert!(
        err.contains(&format!("exchange\t/\t{}\n", topology.exchange)),
        "names the exchange: {err}"
    );
    for q in topology.queues() {
        assert!(
            err.contains(&format!("queue\t/\t{}\n", q.name)),
            "names {}: {err}",
            q.name
        );
    }
}
