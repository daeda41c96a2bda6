//! The AsyncAPI document of the default deployment: what it holds, that its
//! references resolve, that its YAML reads back as the same value, and that
//! the committed `definitions/asyncapi.yaml` is the generated one.

use serde_json::Value;

use super::*;

fn doc() -> Value {
    document(&Settings::default())
}

#[test]
fn each_event_type_has_a_routing_key_channel_on_the_exchange() {
    let d = doc();
    let c = &d["channels"]["user.login"];
    assert_eq!(c["address"], "user.login");
    assert_eq!(c["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(c["bindings"]["amqp"]["exchange"]["name"], "user.events");
    assert_eq!(c["bindings"]["amqp"]["exchange"]["type"], "topic");
    assert_eq!(d["operations"]["publish.user.login"]["action"], "send");
    assert_eq!(
        d["operations"]["publish.user.login"]["bindings"]["amqp"]["mandatory"],
        true
    );
}

#[test]
fn queues_carry_their_arguments_as_extensions() {
    let d = doc();
    let work = &d["channels"]["warren.user.login"];
    assert_eq!(work["bindings"]["amqp"]["is"], "queue");
    assert_eq!(work["x-queue-type"], "quorum");
    assert_eq!(work["x-delivery-limit"], 10);
    assert_eq!(work["x-dead-letter-routing-key"], "warren.user.login.dead");
    assert_eq!(work["x-bound-to"]["routingKey"], "user.login");
    let tier = &d["channels"]["warren.user.login.retry.10s"];
    assert_eq!(tier["x-message-ttl"], 10_000);
    assert_eq!(tier["x-dead-letter-routing-key"], "warren.user.login");
    assert_eq!(d["operations"]["consume.warren.user.login"]["action"], "receive");
    assert_eq!(d["operations"]["retry.warren.user.login.retry.10s"]["action"], "send");
    assert_eq!(d["operations"]["dead-letter.warren.user.login.dead"]["action"], "send");
    // Every queue of the topology is a channel.
    for q in Topology::from_settings(&Settings::default()).queues() {
        assert!(d["channels"][q.name.as_str()].is_object(), "{} has no channel", q.name);
    }
}

#[test]
fn messages_carry_the_event_schemas() {
    let d = doc();
    let m = &d["components"]["messages"]["user.registered"];
    assert_eq!(m["payload"]["schemaFormat"], DRAFT_07_FORMAT);
    let mut expected = EventType::find("user.registered").unwrap().schema();
    expected.as_object_mut().unwrap().remove("$schema");
    assert_eq!(m["payload"]["schema"], expected);
    assert_eq!(m["headers"]["properties"][headers::REASON]["enum"][0], "exhausted");
}

/// Every `$ref` in `v`, as a JSON pointer.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let d = doc();
    let mut found = Vec::new();
    refs(&d, &mut found);
    assert!(found.len() > 20, "{found:?}");
    for r in found {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(d.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

#[test]
fn servers_name_host_and_port_without_credentials() {
    let mut s = Settings::default();
    s.amqp.url = "amqps://u:secret@a.example:5671/prod".into();
    let d = document(&s);
    assert_eq!(d["servers"]["rabbitmq"]["host"], "a.example:5671");
    assert_eq!(d["servers"]["rabbitmq"]["protocol"], "amqps");
    assert!(!d.to_string().contains("secret"));
    s.amqp.url = "amqp://u:secret@[::1]:5672/prod".into();
    assert_eq!(document(&s)["servers"]["rabbitmq"]["host"], "[::1]:5672");
    assert_eq!(
        d["channels"]["user.login"]["bindings"]["amqp"]["exchange"]["vhost"],
        "prod"
    );
}

fn from_yaml(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), from_yaml(v)))
                .collect(),
        ),
        Yaml::Array(a) => Value::Array(a.iter().map(from_yaml).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

#[test]
fn the_yaml_reads_back_as_the_document() {
    let d = doc();
    let text = to_yaml(&d);
    let parsed = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
    assert_eq!(parsed.len(), 1);
    assert_eq!(from_yaml(&parsed[0]), d);
    assert!(text.starts_with("asyncapi: \"3.0.0\"\ninfo:\n"), "{}", &text[..40]);
}

#[test]
fn committed_asyncapi_matches_the_code() {
    let committed = include_str!("../../definitions/asyncapi.yaml");
    assert_eq!(
        committed,
        to_yaml(&doc()),
        "definitions/asyncapi.yaml drifted: regenerate it with `cargo run -- asyncapi > definitions/asyncapi.yaml`"
    );
}
