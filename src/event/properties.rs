//! The AMQP properties of an event on the wire: one function, used by the
//! publisher and by the bench's baseline alike.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

/// The AMQP properties every event carries (DESIGN: wire contract).
#[must_use]
pub fn event_properties(
    event_id: Uuid,
    event_type: &str,
    timestamp: chrono::DateTime<chrono::Utc>,
    source: &str,
    traceparent: Option<&str>,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(
            &*event_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
        ))
        .with_type(event_type.into())
        .with_timestamp(u64::try_from(timestamp.timestamp()).unwrap_or(0))
        .with_app_id(crate::event::truncate(source, 255).into());
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        props = props.with_headers(headers);
    }
    props
}
