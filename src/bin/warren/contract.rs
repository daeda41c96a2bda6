//! `warren schema` and `warren asyncapi`: the wire contract as JSON Schema
//! and the deployment as an AsyncAPI document, both generated from the types
//! and the settings.

use anyhow::bail;
use warren::event::EventType;

/// The JSON Schema of `event_type`'s envelope, or of any known event.
///
/// # Errors
///
/// An unknown event type.
pub fn schema(event_type: Option<&str>) -> anyhow::Result<String> {
    let schema = match event_type {
        None => EventType::all_schemas(),
        Some(name) => match EventType::find(name) {
            Some(kind) => kind.schema(),
            None => bail!("unknown event type {name:?} (known: {})", EventType::known_names()),
        },
    };
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    Ok(text)
}

/// The AsyncAPI 3.0 document of the deployment `settings` describe, as YAML
/// (or JSON).
///
/// # Errors
///
/// None today; fallible like the other commands' output.
pub fn asyncapi(settings: &warren::Settings, json: bool) -> anyhow::Result<String> {
    let document = warren::asyncapi::document(settings);
    if json {
        let mut text = serde_json::to_string_pretty(&document)?;
        text.push('\n');
        return Ok(text);
    }
    Ok(warren::asyncapi::to_yaml(&document))
}
