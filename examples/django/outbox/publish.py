"""Write an event to warren's outbox in the caller's transaction.

The event is committed together with the data it describes, or not at all;
`warren relay` publishes committed rows to RabbitMQ. Table: `warren relay
schema` (definitions/warren_outbox.sql in the warren repository).
"""

import json
import os

# The outbox table (warren's relay.table); schema-qualified names work.
TABLE = os.environ.get("WARREN_RELAY__TABLE", "warren_outbox")


def publish_in_transaction(envelope, connection=None):
    """Insert `envelope` (a dict: event_type, source, user_id, data) into the
    outbox, inside the transaction that is open on `connection`.

    `connection` defaults to Django's default database connection; call it
    inside `transaction.atomic()`. Any DB-API connection with a `cursor()`
    (psycopg's, say) works too: it then commits or rolls back with the rest
    of that connection's transaction. event_id and timestamp are optional:
    the row fixes them at insert.
    """
    if connection is None:
        from django.db import connection  # noqa: PLC0415 (only with Django)
    if getattr(connection, "in_atomic_block", True) is False:
        # In autocommit the event would commit on its own, before the data.
        raise RuntimeError("publish_in_transaction must run inside transaction.atomic()")
    body = json.dumps(envelope, default=str)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (envelope) VALUES (%s::jsonb)", [body])
