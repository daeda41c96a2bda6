//! The ingress token as read: blanks around it dropped wherever it was set,
//! since a token mounted from a file (a Kubernetes secret) often ends in a
//! newline that no client sends.

use serde::{Deserialize, Deserializer};

/// Deserializes an optional token, trimmed.
///
/// # Errors
///
/// Only the deserializer's own (not a string).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|t| t.trim().to_owned()))
}
