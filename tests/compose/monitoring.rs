//! The monitoring stack of docker-compose.yml: Prometheus scrapes what warren
//! and RabbitMQ serve where they serve it and loads the alert rules; Grafana
//! gets the Prometheus data source and the warren dashboard.

use yaml_rust2::{Yaml, YamlLoader};

use super::common::{compose, environment, mounts, ports, read, scalar, service, strings};

fn yaml_file(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel} holds one document");
    docs.remove(0)
}

/// The container path a service mounts `source` at.
fn mounted_at(service_name: &str, source: &str) -> String {
    mounts(service(&compose(), service_name))
        .into_iter()
        .find(|m| m.source == source)
        .unwrap_or_else(|| panic!("{service_name} does not mount {source}"))
        .target
}

/// The scrape job named `name` of monitoring/prometheus.yml.
fn job(config: &Yaml, name: &str) -> Yaml {
    config["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
        .iter()
        .find(|j| scalar(&j["job_name"]) == name)
        .unwrap_or_else(|| panic!("no scrape job {name:?}"))
        .clone()
}

fn targets(job: &Yaml) -> Vec<String> {
    job["static_configs"]
        .as_vec()
        .expect("static_configs")
        .iter()
        .flat_map(|c| strings(&c["targets"]))
        .collect()
}

#[test]
fn prometheus_loads_the_alert_rules_it_mounts() {
    let config_path = mounted_at("prometheus", "./monitoring/prometheus.yml");
    assert_eq!(
        config_path, "/etc/prometheus/prometheus.yml",
        "the image's default config path"
    );
    let config = yaml_file("monitoring/prometheus.yml");
    let rules = strings(&config["rule_files"]);
    assert_eq!(rules, [mounted_at("prometheus", "./monitoring/alerts.yml")]);
    assert!(
        mounts(service(&compose(), "prometheus"))
            .iter()
            .any(|m| !m.is_bind() && m.target == "/prometheus"),
        "its data lives in a named volume"
    );
}

#[test]
fn prometheus_scrapes_warren_on_its_metrics_listen_address() {
    let c = compose();
    let listen: std::net::SocketAddr = environment(service(&c, "warren"))["WARREN_METRICS__LISTEN"]
        .parse()
        .expect("warren's metrics.listen is an address");
    assert!(listen.ip().is_unspecified(), "reachable from the prometheus container");
    let config = yaml_file("monitoring/prometheus.yml");
    assert_eq!(targets(&job(&config, "warren")), [format!("warren:{}", listen.port())]);
}

#[test]
fn prometheus_scrapes_the_per_queue_metrics_of_rabbitmq() {
    let config = yaml_file("monitoring/prometheus.yml");
    let rabbitmq = job(&config, "rabbitmq");
    assert_eq!(targets(&rabbitmq), ["rabbitmq:15692"], "the plugin's port");
    assert_eq!(scalar(&rabbitmq["metrics_path"]), "/metrics/detailed");
    let families = strings(&rabbitmq["params"]["family"]);
    for family in ["queue_coarse_metrics", "queue_consumer_count"] {
        assert!(
            families.iter().any(|f| f == family),
            "{family} is not scraped: {families:?}"
        );
    }
}

#[test]
fn grafana_gets_the_data_source_and_the_dashboard() {
    let datasources = yaml_file("monitoring/grafana/datasources.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(scalar(&ds["type"]), "prometheus");
    let published = ports(service(&compose(), "prometheus"));
    let port = published.first().expect("prometheus publishes a port").2;
    assert_eq!(scalar(&ds["url"]), format!("http://prometheus:{port}"));
    assert!(
        mounted_at("grafana", "./monitoring/grafana/datasources.yml")
            .starts_with("/etc/grafana/provisioning/datasources/")
    );

    let providers = yaml_file("monitoring/grafana/dashboards.yml");
    assert!(
        mounted_at("grafana", "./monitoring/grafana/dashboards.yml")
            .starts_with("/etc/grafana/provisioning/dashboards/")
    );
    let dir = scalar(&providers["providers"][0]["options"]["path"]);
    let dashboard = mounted_at("grafana", "./monitoring/grafana-dashboard.json");
    assert_eq!(
        std::path::Path::new(&dashboard).parent().unwrap().to_str().unwrap(),
        dir,
        "the dashboard is mounted where the provider reads"
    );
    let json: serde_json::Value = serde_json::from_str(&read("monitoring/grafana-dashboard.json")).unwrap();
    assert_eq!(json["uid"], "warren");
}

#[test]
fn the_monitoring_ports_stay_on_this_machine() {
    let c = compose();
    for name in ["prometheus", "grafana"] {
        for (ip, published, _) in ports(service(&c, name)) {
            assert_eq!(ip.as_deref(), Some("127.0.0.1"), "{name} port {published}");
        }
    }
}
