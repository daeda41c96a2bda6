//! A claimed row, decoded and validated as the ingress validates a request,
//! with the `event_id` and `timestamp` the row fixed at insert filled in.

use chrono::{DateTime, SubsecRound, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::event::RawEnvelope;

/// The columns the claim selects, in this order.
pub(super) const COLUMNS: &str =
    "id, event_id, envelope::text, envelope ? 'event_id', envelope ? 'timestamp', created_at, attempts";

/// A row whose envelope is valid: ready to publish.
pub(super) struct Job {
    pub(super) id: i64,
    pub(super) attempts: i32,
    pub(super) envelope: RawEnvelope,
}

/// What a claimed row turned out to be.
pub(super) enum Claimed {
    Valid(Job),
    /// Not a valid envelope: marked failed with this error, never published.
    Invalid {
        id: i64,
        error: String,
    },
}

/// Decodes one row of the claim (see [`COLUMNS`]).
pub(super) fn decode(row: &Row) -> Claimed {
    let id: i64 = row.get(0);
    match envelope(row) {
        Ok(envelope) => Claimed::Valid(Job {
            id,
            attempts: row.get(6),
            envelope,
        }),
        Err(error) => Claimed::Invalid { id, error },
    }
}

fn envelope(row: &Row) -> Result<RawEnvelope, String> {
    let text: &str = row.get(2);
    let (mut envelope, _) = RawEnvelope::parse_known(text.as_bytes()).map_err(|e| e.to_string())?;
    // The ids and times the row fixed at insert, so that publishing the row
    // again (after a crash before its mark) sends the same event.
    if !row.get::<_, bool>(3) {
        envelope.event_id = row.get::<_, Uuid>(1);
    }
    if !row.get::<_, bool>(4) {
        envelope.timestamp = row.get::<_, DateTime<Utc>>(5).trunc_subsecs(3);
    }
    Ok(envelope)
}
