//! `warren asyncapi` through the official AsyncAPI parser (@asyncapi/parser,
//! installed by `.ci/run` into scripts/asyncapi-validate/): the committed
//! definitions/asyncapi.yaml, the command's YAML and JSON, and a deployment
//! with other settings must all be valid AsyncAPI 3.0 documents.

use serde_json::Value;

use super::{repo, run_tool, text, warren, warren_with};

const INSTALL: &str =
    "install the parser with `npm ci --ignore-scripts --prefix scripts/asyncapi-validate` (.ci/run does)";

/// The parser's diagnostics for `document`; panics on any error.
fn validate(what: &str, document: &str) -> Vec<Value> {
    let dir = repo("scripts/asyncapi-validate");
    assert!(
        dir.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: {INSTALL}"
    );
    let script = dir.join("validate.mjs");
    let out = run_tool(
        "node",
        &[script.to_str().unwrap()],
        document,
        "install Node.js (apt-get install nodejs)",
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what} is not a valid AsyncAPI document:\n{stdout}{}",
        text(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON diagnostic"))
        .collect()
}

/// Only the parser's advice to move to a newer minor version may remain.
fn assert_clean(what: &str, diagnostics: &[Value]) {
    let other: Vec<_> = diagnostics
        .iter()
        .filter(|d| d["code"] != "asyncapi-latest-version")
        .collect();
    assert!(other.is_empty(), "{what}: {other:#?}");
}

#[test]
fn the_committed_document_is_valid_and_current() {
    let committed = std::fs::read_to_string(repo("definitions/asyncapi.yaml")).expect("definitions/asyncapi.yaml");
    let diagnostics = validate("definitions/asyncapi.yaml", &committed);
    assert_clean("definitions/asyncapi.yaml", &diagnostics);
    assert_eq!(
        warren(&["asyncapi"]),
        committed,
        "definitions/asyncapi.yaml drifted: regenerate it with `cargo run -- asyncapi > definitions/asyncapi.yaml`"
    );
}

#[test]
fn the_json_form_is_the_same_document() {
    let json = warren(&["asyncapi", "--json"]);
    assert_clean("warren asyncapi --json", &validate("warren asyncapi --json", &json));
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["channels"]["warren.user.login.dead"]["address"],
        "warren.user.login.dead"
    );
}

#[test]
fn another_deployment_is_valid_too() {
    let yaml = warren_with(
        &["asyncapi"],
        &[
            ("WARREN_CONSUMER__SERVICE", "go-backend"),
            ("WARREN_TOPOLOGY__QUEUE_TYPE", "classic"),
            ("WARREN_CONSUMER__EVENT_TYPES", "user.login"),
            ("WARREN_AMQP__URL", "amqps://svc:s3cret@mq.internal:5671/events"),
        ],
    );
    assert_clean("go-backend", &validate("go-backend's document", &yaml));
    assert!(yaml.contains("  go-backend.user.login.retry.10s:\n"), "{yaml}");
    assert!(
        !yaml.contains("go-backend.user.registered"),
        "only the configured types"
    );
    assert!(!yaml.contains("s3cret"), "no credentials in the document");
    assert!(yaml.contains("host: \"mq.internal:5671\""), "{yaml}");
}
