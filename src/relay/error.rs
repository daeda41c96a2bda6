//! Why the relay, or one of its commands, failed.

/// A relay failure. Messages never contain the database password.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A relay setting is missing or unusable.
    #[error("{0}")]
    Config(String),
    /// The database refused a statement or the connection failed.
    #[error("database: {0}")]
    Database(String),
    /// The outbox table (or its schema) does not exist; the message says
    /// how to create it.
    #[error("{0}")]
    MissingTable(String),
}

impl From<tokio_postgres::Error> for RelayError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let missing = e
            .code()
            .is_some_and(|c| *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME);
        if missing {
            // Told apart by its code, not its text (the server's language
            // may not be English); `Relay` adds how to create the table.
            return RelayError::MissingTable(format!("database: {}", describe(&e)));
        }
        RelayError::Database(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for RelayError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => RelayError::Database(other.to_string()),
        }
    }
}

/// The server's message (with its detail and hint) for a database error,
/// the cause chain for anything else. tokio-postgres never puts the
/// password in either.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            out.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}
