"""Write an event to warren's outbox in the caller's transaction.

The event is committed together with the data it describes, or not at all;
`warren relay` publishes committed rows to RabbitMQ. The table is the one
WARREN_OUTBOX_TABLE names (outbox.table).
"""

from . import encode, table


def publish_in_transaction(envelope, connection=None):
    """Insert `envelope` (a dict: event_type, source, user_id, data) into the
    outbox, inside the transaction that is open on `connection`.

    `connection` defaults to Django's default database connection; call it
    inside `transaction.atomic()`. Any DB-API connection with a `cursor()`
    (psycopg's, say) works too: it then commits or rolls back with the rest
    of that connection's transaction. event_id and timestamp are optional:
    the row fixes them at insert. Datetimes are written as RFC 3339 in UTC.

    Raises ValueError, before anything is written, for a naive datetime or
    a NaN (outbox.encode), and RuntimeError outside a transaction.
    """
    body = encode.dumps(envelope)
    if connection is None:
        from django.db import connection  # noqa: PLC0415 (the caller's choice)
    if getattr(connection, "in_atomic_block", True) is False:
        # In autocommit the event would commit on its own, before the data.
        raise RuntimeError("publish_in_transaction must run inside transaction.atomic()")
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table.name()} (envelope) VALUES (%s::jsonb)", [body])
