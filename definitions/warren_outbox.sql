-- warren's transactional outbox (printed by `warren relay schema`).
--
-- The application inserts one event envelope per row, as JSON, in the same
-- transaction as its own data, and needs nothing else:
--     INSERT INTO warren_outbox (envelope) VALUES ($1)
-- `warren relay` publishes committed rows to RabbitMQ with a confirm and
-- marks them published. Safe to run again. Needs PostgreSQL 14 or later.

-- UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.
CREATE OR REPLACE FUNCTION warren_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

CREATE TABLE IF NOT EXISTS warren_outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The inserting transaction. The relay reads only rows of transactions
    -- older than every transaction still running, in (txid, id) order: a
    -- row that commits late is picked up late, never skipped.
    txid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- Published as the event_id when the envelope has none: fixed at insert,
    -- so a re-publish keeps it.
    event_id     uuid NOT NULL DEFAULT warren_uuid_v7(),
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

CREATE INDEX IF NOT EXISTS warren_outbox_pending ON warren_outbox (txid, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS warren_outbox_published ON warren_outbox (published_at) WHERE status = 'published';
CREATE INDEX IF NOT EXISTS warren_outbox_failed ON warren_outbox (id) WHERE status = 'failed';

-- A hint to the relay to poll now. It polls every relay.poll_interval anyway;
-- drop this trigger if the commit-time lock NOTIFY takes ever shows up.
CREATE OR REPLACE FUNCTION warren_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('warren_outbox', '');
  RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER warren_outbox_notify AFTER INSERT ON warren_outbox
  FOR EACH STATEMENT EXECUTE FUNCTION warren_outbox_notify();
