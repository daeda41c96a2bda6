//! `warren config`: the effective settings with their secrets redacted,
//! where each value came from, and what is derived from them (the retry
//! delays, the queue names); as commented TOML, or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use warren::Topology;
use warren::config::{Origin, Settings, duration};

/// Where each setting's value came from, by setting.
pub type Origins = BTreeMap<String, Origin>;

/// The settings, their origins and derived values, as JSON (`--json`) or TOML.
///
/// # Errors
///
/// Settings that do not serialize (a bug, not a user error).
pub fn render(settings: &Settings, origins: &Origins, json: bool) -> anyhow::Result<String> {
    let delays: Vec<String> = settings
        .consumer
        .retry
        .tiers()
        .into_iter()
        .map(duration::format)
        .collect();
    let queues: Vec<String> = Topology::from_settings(settings)
        .queues()
        .into_iter()
        .map(|q| q.name)
        .collect();
    if json {
        let value = serde_json::json!({
            "settings": settings.redacted(),
            "sources": origins,
            "derived": { "retry_delays": delays, "queues": queues },
        });
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let mut out = String::from(
        "# warren's effective settings; secrets are shown as ***.\n\
         # After each value, where it came from: default, file, .env or environment.\n",
    );
    write_table(&mut out, "", &toml::Table::try_from(settings.redacted())?, origins);
    let delays_from = if settings.consumer.retry.delays.is_empty() {
        "consumer.retry.attempts"
    } else {
        "consumer.retry.delays"
    };
    // An empty list would read as a rendering fault: say what it means.
    let delays = if delays.is_empty() {
        "none: no retries, a failed event is parked in its .dead queue at once".to_owned()
    } else {
        delays.join(", ")
    };
    let _ = write!(
        out,
        "\n# Derived from the settings above:\n# retry delays: {delays} (from {delays_from})\n# queues:\n"
    );
    for q in queues {
        let _ = writeln!(out, "#   {}", crate::terminal::text(&q));
    }
    Ok(out)
}

/// One table: its values with their origins, its unset optional settings,
/// then its subtables (TOML wants them last).
fn write_table(out: &mut String, prefix: &str, table: &toml::Table, origins: &Origins) {
    let key_of = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let origin = |key: &str| {
        origins
            .get(key)
            .map_or_else(|| "default".to_owned(), ToString::to_string)
    };
    if !prefix.is_empty() {
        let _ = writeln!(out, "\n[{prefix}]");
    }
    let mut subtables = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(inner) => subtables.push((key_of(name), inner)),
            value => {
                let _ = writeln!(out, "{name} = {value}  # {}", origin(&key_of(name)));
            }
        }
    }
    for key in Settings::keys() {
        let name = key.strip_prefix(&format!("{prefix}.")).unwrap_or(&key);
        if !prefix.is_empty() && !name.contains('.') && name != key && !table.contains_key(name) {
            let _ = writeln!(out, "# {name} is not set  # {}", origin(&key));
        }
    }
    for (key, inner) in subtables {
        write_table(out, &key, inner, origins);
    }
}
