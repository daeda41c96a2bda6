//! monitoring/: the alert rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`), every alert has a case that fires and one
//! that does not, and every metric the alerts and the Grafana dashboard
//! query is one that a running `warren run --relay` or RabbitMQ's Prometheus
//! plugin serves (monitoring/scrape.rs starts one and scrapes both).

mod support;

#[path = "relay/outbox.rs"]
mod outbox;

#[path = "monitoring/promql.rs"]
mod promql;
#[path = "monitoring/scrape.rs"]
mod scrape;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const INSTALL: &str = "install promtool with `apt-get install prometheus` (.ci/run does)";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .remove(0)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo("monitoring"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): {INSTALL}"));
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (alert name, expression) of every rule in alerts.yml.
fn alerts() -> Vec<(String, String)> {
    let doc = yaml("monitoring/alerts.yml");
    let mut out = Vec::new();
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only").to_owned();
            out.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

#[test]
fn the_rules_pass_promtool_check() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn the_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn every_alert_has_a_case_that_fires_and_one_that_does_not() {
    let tests = yaml("monitoring/alerts.test.yml");
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for test in tests["tests"].as_vec().expect("tests") {
        for case in test["alert_rule_test"].as_vec().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let expected = case["exp_alerts"].as_vec().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name)
            } else {
                silent.insert(name)
            };
        }
    }
    let names: Vec<String> = alerts().into_iter().map(|(n, _)| n).collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }
}

#[test]
fn every_alert_has_a_runbook_section_in_operations_md() {
    let doc = read("docs/OPERATIONS.md").to_lowercase();
    for (name, _) in alerts() {
        assert!(
            doc.contains(&format!("### {}", name.to_lowercase())),
            "docs/OPERATIONS.md has no `### {name}` section"
        );
    }
}

/// Every query of the dashboard: its panels' targets and its variables.
fn dashboard_queries() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(&read("monitoring/grafana-dashboard.json")).expect("JSON");
    let mut out = Vec::new();
    for panel in d["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    for var in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

#[test]
fn the_dashboard_covers_what_the_operator_watches() {
    let all = dashboard_queries().join("\n");
    for needle in [
        "warren_published_total",
        "warren_consumed_total",
        "warren_handler_duration_seconds_bucket",
        "warren_webhook_duration_seconds_bucket",
        "\\.retry\\.",
        "\\.dead",
        "warren_broker_connected",
        "warren_broker_blocked",
    ] {
        assert!(all.contains(needle), "the dashboard queries nothing with {needle}");
    }
}

#[tokio::test]
async fn every_metric_queried_is_served_by_warren_or_the_rabbitmq_plugin() {
    let served = scrape::served_metric_names().await;
    let mut queries: Vec<(String, String)> = alerts().into_iter().map(|(n, e)| (format!("alert {n}"), e)).collect();
    queries.extend(dashboard_queries().into_iter().map(|q| ("dashboard".to_owned(), q)));
    let mut missing = Vec::new();
    for (origin, query) in &queries {
        let names = promql::metric_names(query);
        assert!(!names.is_empty(), "{origin}: no metric found in {query}");
        for name in names {
            // `up` is Prometheus's own, for every target.
            if name != "up" && !served.contains(&name) {
                missing.push(format!("{origin}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "queried but not served:\n{}", missing.join("\n"));
}
