//! The library's modules import "down" only: each may use modules of lower
//! layers, never its own layer or a higher one, so the graph has no cycle.
//! The graph is read from the sources' `crate::<module>` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest layer first. A new module goes in the layer under everything that uses it.
const LAYERS: &[&[&str]] = &[
    &["schema"],
    &[
        "event",
        "uri",
        "secrets",
        "refusal",
        "metrics",
        "process_metrics",
        "readiness",
        "shutdown",
    ],
    &["config"],
    &["topology"],
    &["amqp"],
    &["publisher"],
    &["consumer", "relay"],
    &["dead"],
    &["http"],
    &["webhook", "asyncapi"],
];

/// Macros exported at the crate root, by the module that defines them.
const MACROS: &[(&str, &str)] = &[("for_each_event_type", "event")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `crate::<name>` named in code (comments left out) under `path`.
fn crate_paths(path: &Path, found: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("reading src/") {
            crate_paths(&entry.expect("dir entry").path(), found);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).expect("reading a source file");
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
}

/// module -> the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("reading src/") {
        let path = entry.expect("dir entry").path();
        let Some(module) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if module == "lib" || module == "bin" {
            continue;
        }
        let mut names = BTreeSet::new();
        crate_paths(&path, &mut names);
        let uses: BTreeSet<String> = names
            .into_iter()
            .map(|n| {
                MACROS
                    .iter()
                    .find(|(m, _)| *m == n)
                    .map_or(n, |(_, owner)| (*owner).to_owned())
            })
            .filter(|n| *n != module && layer_of(n).is_some())
            .collect();
        // `event.rs` and `event/` (or `amqp.rs` and `amqp/`) are one module:
        // merge what both use.
        graph.entry(module).or_insert_with(BTreeSet::new).extend(uses);
    }
    graph
}

#[test]
fn modules_import_down_only() {
    let graph = graph();
    assert!(
        graph.contains_key("publisher") && graph["publisher"].contains("amqp"),
        "{graph:#?}"
    );
    for (module, uses) in &graph {
        let Some(layer) = layer_of(module) else {
            panic!("src/{module} is in no layer: add it to LAYERS in tests/module_graph.rs");
        };
        for used in uses {
            let used_layer = layer_of(used).expect("filtered to known modules");
            assert!(
                used_layer < layer,
                "{module} (layer {layer}) uses {used} (layer {used_layer}): modules import down only\n{graph:#?}"
            );
        }
    }
}

#[test]
fn every_layer_names_a_module_that_exists() {
    let graph = graph();
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            graph.contains_key(*module),
            "LAYERS names {module}, which src/ does not have"
        );
    }
}

/// The wire format (properties, `x-warren-*` headers, dead-letter reasons)
/// lives in `event`: the modules that read parked messages take it from
/// there, not from the consumer that writes them.
#[test]
fn dead_and_asyncapi_read_the_wire_format_from_event() {
    let graph = graph();
    for module in ["dead", "asyncapi"] {
        assert!(graph[module].contains("event"), "{module}: {:?}", graph[module]);
        assert!(
            !graph[module].contains("consumer"),
            "{module} uses consumer; the wire format is in event: {:?}",
            graph[module]
        );
    }
}

/// Non-test lines under `path` (a file's `mod tests` and what follows it
/// left out, comments too) that spell an `x-warren-*` name.
fn wire_literals(path: &Path, found: &mut Vec<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("reading src/") {
            wire_literals(&entry.expect("dir entry").path(), found);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).expect("reading a source file");
    let code = text.lines().take_while(|l| !l.trim_start().starts_with("mod tests"));
    for (n, line) in code.enumerate() {
        if !line.trim_start().starts_with("//") && line.contains("\"x-warren-") {
            found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
        }
    }
}

#[test]
fn the_x_warren_header_names_are_spelt_only_in_event() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).expect("reading src/") {
        let path = entry.expect("dir entry").path();
        if path.file_stem().is_some_and(|s| s != "event") {
            wire_literals(&path, &mut found);
        }
    }
    let mut in_event = Vec::new();
    wire_literals(&src.join("event"), &mut in_event);
    assert!(!in_event.is_empty(), "the scan finds the names where they are");
    assert!(
        found.is_empty(),
        "use warren::event::headers' constants:\n{}",
        found.join("\n")
    );
}
