//! The outbox table: its name, its DDL (`warren relay schema`,
//! `definitions/warren_outbox.sql`), and the key of the relays' lock.

use super::error::RelayError;

/// A validated outbox table name, optionally schema-qualified
/// (`warren_outbox`, `app.warren_outbox`). Only lower-case letters, digits
/// and `_`: the name goes into SQL text and a NOTIFY channel unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    /// Checks `relay.table`.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`] naming what is wrong with it.
    pub fn parse(full: &str) -> Result<Self, RelayError> {
        let (schema, name) = match full.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, full),
        };
        for part in schema.iter().chain([&name]) {
            let ok = part.len() <= 48
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(RelayError::Config(format!(
                    "relay.table {full:?}: use a lower-case SQL name (letters, digits, _), optionally schema.table"
                )));
            }
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// `schema.table` or `table`, as written in SQL.
    #[must_use]
    pub fn qualified(&self) -> String {
        self.in_schema(&self.name)
    }

    /// Another object (a function) named in the table's schema.
    fn in_schema(&self, object: &str) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{object}"),
            None => object.to_owned(),
        }
    }

    /// The NOTIFY channel the table's insert trigger signals (the qualified name).
    #[must_use]
    pub fn channel(&self) -> String {
        self.qualified()
    }

    /// The key of the transaction-scoped advisory lock that lets one relay
    /// at a time work on this table: FNV-1a of the qualified name, so every
    /// relay of one table agrees on it without configuration.
    #[must_use]
    pub fn lock_key(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in format!("warren relay {}", self.qualified()).bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }

    /// The DDL: the table, its indexes, the UUIDv7 default and the NOTIFY
    /// trigger. Idempotent: safe to run again, and on every deploy.
    #[must_use]
    pub fn ddl(&self) -> String {
        DDL.replace("{uuid_v7}", &self.in_schema("warren_uuid_v7"))
            .replace("{notify}", &self.in_schema(&format!("{}_notify", self.name)))
            .replace(
                "{schema}",
                &self
                    .schema
                    .as_ref()
                    .map_or(String::new(), |s| format!("CREATE SCHEMA IF NOT EXISTS {s};\n\n")),
            )
            .replace("{table}", &self.qualified())
            .replace("{name}", &self.name)
    }
}

/// The DDL of [`Table::ddl`], with `{table}` (qualified), `{name}` (bare, for
/// indexes and triggers), `{uuid_v7}` and `{notify}` (functions) and
/// `{schema}` (a CREATE SCHEMA line, or nothing) to fill in.
const DDL: &str = r"-- warren's transactional outbox (printed by `warren relay schema`).
--
-- The application inserts one event envelope per row, as JSON, in the same
-- transaction as its own data, and needs nothing else:
--     INSERT INTO {table} (envelope) VALUES ($1)
-- `warren relay` publishes committed rows to RabbitMQ with a confirm and
-- marks them published. Safe to run again. Needs PostgreSQL 14 or later.

{schema}-- UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
CREATE OR REPLACE FUNCTION {uuid_v7}() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

CREATE TABLE IF NOT EXISTS {table} (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The inserting transaction. The relay reads only rows of transactions
    -- older than every transaction still running, in (txid, id) order: a
    -- row that commits late is picked up late, never skipped.
    txid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- Published as the event_id when the envelope has none: fixed at insert,
    -- so a re-publish keeps it.
    event_id     uuid NOT NULL DEFAULT {uuid_v7}(),
    -- The event envelope (event_type, source, user_id, data; event_id and
    -- timestamp optional). Validated by the relay as the ingress does.
    envelope     jsonb NOT NULL,
    -- Published as the timestamp when the envelope has none.
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'published', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    published_at timestamptz,
    -- Why the row failed (status 'failed') or its last publish did (pending).
    error        text
);

CREATE INDEX IF NOT EXISTS {name}_pending ON {table} (txid, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS {name}_published ON {table} (published_at) WHERE status = 'published';
CREATE INDEX IF NOT EXISTS {name}_failed ON {table} (id) WHERE status = 'failed';

-- A hint to the relay to poll now. It polls every relay.poll_interval anyway;
-- drop this trigger if the commit-time lock NOTIFY takes ever shows up.
CREATE OR REPLACE FUNCTION {notify}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{table}', '');
  RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER {name}_notify AFTER INSERT ON {table}
  FOR EACH STATEMENT EXECUTE FUNCTION {notify}();
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_qualified() {
        let t = Table::parse("warren_outbox").unwrap();
        assert_eq!(t.qualified(), "warren_outbox");
        let q = Table::parse("app.outbox_2").unwrap();
        assert_eq!(q.qualified(), "app.outbox_2");
        assert!(q.ddl().contains("CREATE SCHEMA IF NOT EXISTS app;"));
        assert!(
            q.ddl()
                .contains("CREATE INDEX IF NOT EXISTS outbox_2_pending ON app.outbox_2")
        );
        assert!(q.ddl().contains("FUNCTION app.outbox_2_notify()"));
        for bad in ["", "Outbox", "a.b.c", "x;drop", "1x", "a b", "s."] {
            let err = Table::parse(bad).unwrap_err().to_string();
            assert!(err.contains("relay.table"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_ddl_has_every_placeholder_filled() {
        let ddl = Table::parse("warren_outbox").unwrap().ddl();
        assert!(!ddl.contains('{'), "{ddl}");
        for placeholder in ["{table}", "{name}", "{uuid_v7}", "{notify}", "{schema}"] {
            assert!(!ddl.contains(placeholder), "{placeholder} left in the DDL");
        }
        assert!(ddl.contains("INSERT INTO warren_outbox (envelope) VALUES ($1)"));
        assert!(!ddl.contains("CREATE SCHEMA"));
    }

    #[test]
    fn definitions_holds_the_ddl_of_the_default_table() {
        let committed = include_str!("../../definitions/warren_outbox.sql");
        let ddl = Table::parse(&crate::config::Settings::default().relay.table)
            .unwrap()
            .ddl();
        assert!(
            committed == ddl,
            "definitions/warren_outbox.sql differs from `warren relay schema`: \
             regenerate it with `cargo run -- relay schema > definitions/warren_outbox.sql`"
        );
    }

    #[test]
    fn relays_of_one_table_share_a_lock_and_other_tables_do_not() {
        let a = Table::parse("warren_outbox").unwrap();
        assert_eq!(a.lock_key(), Table::parse("warren_outbox").unwrap().lock_key());
        assert_ne!(a.lock_key(), Table::parse("app.warren_outbox").unwrap().lock_key());
    }
}
