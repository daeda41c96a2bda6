//! What a command needs of the settings beyond what loading checks: a
//! setting that is fine for one command (no event types, for an ingress)
//! can make another one pointless (a consumer of nothing).

use super::{ConfigError, Origin, Settings};
use crate::event::EventType;

impl Settings {
    /// Checks that there is something to consume, before any connection is
    /// made. `origin` says where `consumer.event_types` was set, for the message.
    ///
    /// # Errors
    ///
    /// An empty `consumer.event_types`, naming the setting, where it was set
    /// and the event types there are.
    pub fn check_consuming(&self, origin: Option<&Origin>) -> Result<(), ConfigError> {
        if !self.consumer.event_types.is_empty() {
            return Ok(());
        }
        let from = match origin {
            Some(Origin::Default) | None => String::new(),
            Some(origin) => format!(" (set by {origin})"),
        };
        Err(ConfigError::Invalid(format!(
            "consumer.event_types is empty{from}: a consumer needs at least one event type to consume, from: {}",
            EventType::known_names()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consuming_needs_an_event_type() {
        let mut s = Settings::default();
        assert!(s.check_consuming(None).is_ok());
        s.consumer.event_types.clear();
        let origin = Origin::Environment {
            variable: "WARREN_CONSUMER__EVENT_TYPES".into(),
        };
        let err = s.check_consuming(Some(&origin)).unwrap_err().to_string();
        assert!(
            err.contains("consumer.event_types is empty (set by environment WARREN_CONSUMER__EVENT_TYPES)"),
            "{err}"
        );
        assert!(err.contains("user.registered"), "{err}");
    }
}
