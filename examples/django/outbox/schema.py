"""The outbox table's DDL: what `warren relay schema` prints, for any table
name, and the SQL that removes it again (the migration's reverse).

_DDL is a copy of the template in warren's src/relay/schema.rs, filled in
the same way; examples/django/test_outbox.py checks that ddl() equals
`warren relay schema` for a plain and a schema-qualified table. When warren's
DDL changes, copy the template again.
"""

_DDL = r"""-- warren's transactional outbox (printed by `warren relay schema`).
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
"""


def ddl(table):
    """The DDL for `table` (`name` or `schema.name`): the table, its indexes,
    the UUIDv7 default and the NOTIFY trigger. Safe to run again."""
    schema, _, name = table.rpartition(".")
    return (
        _DDL.replace("{uuid_v7}", _in_schema(schema, "warren_uuid_v7"))
        .replace("{notify}", _in_schema(schema, f"{name}_notify"))
        .replace("{schema}", f"CREATE SCHEMA IF NOT EXISTS {schema};\n\n" if schema else "")
        .replace("{table}", table)
        .replace("{name}", name)
    )


def drop(table):
    """Removes what ddl(`table`) created: the table (with its indexes and
    trigger) and its NOTIFY function. The UUIDv7 function stays while another
    outbox table of the schema still uses it. A schema stays: it may hold
    more than the outbox."""
    schema, _, name = table.rpartition(".")
    uuid_v7 = _in_schema(schema, "warren_uuid_v7")
    return (
        f"DROP TABLE IF EXISTS {table};\n"
        f"DROP FUNCTION IF EXISTS {_in_schema(schema, f'{name}_notify')}();\n"
        "DO $$ BEGIN\n"
        f"  DROP FUNCTION IF EXISTS {uuid_v7}();\n"
        "EXCEPTION WHEN dependent_objects_still_exist THEN NULL;\n"
        "END $$;\n"
    )


def _in_schema(schema, obj):
    return f"{schema}.{obj}" if schema else obj
