//! A service that depends on warren with `default-features = false` gets the
//! bridge (publisher, consumer, topology) and none of the binary's
//! dependencies: no command-line parser, no HTTP stack, no allocator.

use std::collections::BTreeSet;
use std::process::Command;

/// The crates in warren's normal dependency tree with `features`.
fn tree(features: &[&str]) -> BTreeSet<String> {
    tree_with(features, &[])
}

/// [`tree`] with more `cargo tree` options (`--depth 1`: direct dependencies only).
fn tree_with(features: &[&str], options: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "tree",
        "--locked",
        "--offline",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ])
    .arg("--manifest-path")
    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
    // The workspace's default members include warren-bench: only warren here.
    .args(["-p", "warren"])
    .args(options)
    .arg("--no-default-features");
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// What only the `warren` binary needs.
const BINARY_ONLY: [&str; 4] = ["clap", "mimalloc", "anyhow", "tracing-subscriber"];

#[test]
fn the_library_alone_pulls_in_neither_the_cli_nor_an_http_stack() {
    let crates = tree(&[]);
    assert!(crates.contains("lapin") && crates.contains("warren"), "{crates:?}");
    let http_stack = ["axum", "reqwest", "hyper", "hyper-util", "http-body-util"];
    for name in BINARY_ONLY.iter().chain(&http_stack) {
        assert!(!crates.contains(*name), "{name} is in the library's tree: {crates:?}");
    }
}

#[test]
fn the_http_feature_adds_the_ingress_without_the_cli() {
    let crates = tree(&["http"]);
    // axum brings hyper and hyper-util (its server) with it.
    assert!(crates.contains("axum"), "{crates:?}");
    for name in BINARY_ONLY.iter().chain(&["reqwest"]) {
        assert!(!crates.contains(*name), "{name} came with the http feature: {crates:?}");
    }
}

#[test]
fn the_relay_feature_adds_postgres_without_the_cli_an_http_stack_or_openssl() {
    let crates = tree(&["relay"]);
    assert!(
        crates.contains("tokio-postgres") && crates.contains("deadpool-postgres"),
        "{crates:?}"
    );
    for name in BINARY_ONLY
        .iter()
        .chain(&["axum", "reqwest", "hyper", "openssl", "openssl-sys", "native-tls"])
    {
        assert!(
            !crates.contains(*name),
            "{name} came with the relay feature: {crates:?}"
        );
    }
}

#[test]
fn the_binary_carries_no_load_generator_or_its_http_client() {
    let direct = tree_with(&["cli"], &["--depth", "1"]);
    assert!(direct.contains("clap") && direct.contains("mimalloc"), "{direct:?}");
    // The bench's bare hyper client needed http-body-util; axum and reqwest
    // still bring it along, but warren itself does not ask for it.
    for name in ["warren-bench", "http-body-util"] {
        assert!(
            !direct.contains(name),
            "{name} is a dependency of the warren binary: {direct:?}"
        );
    }
}
