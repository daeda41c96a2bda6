"""The outbox table as a Django model, for the admin and for queries.

`managed = False`: the table is created by this app's migration (the DDL of
`warren relay schema`), and rows are written with publish_in_transaction,
which needs no model. Its name comes from WARREN_OUTBOX_TABLE (outbox.table).
"""

from django.db import models

from . import table


class OutboxEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    # xid8 has no Django field: read it as text.
    txid = models.TextField(editable=False)
    event_id = models.UUIDField(editable=False)
    envelope = models.JSONField()
    created_at = models.DateTimeField(editable=False)
    status = models.TextField(default="pending")  # pending | published | failed
    attempts = models.IntegerField(default=0)
    published_at = models.DateTimeField(null=True)
    error = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = table.db_table()
        ordering = ["id"]
