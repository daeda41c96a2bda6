"""The outbox table as a Django model, for the admin and for queries.

`managed = False`: the table is created by `warren relay schema` (add it to a
migration with `migrations.RunSQL(open("warren_outbox.sql").read())`), and
rows are written with `publish_in_transaction`, which needs no model.
"""

from django.db import models


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
        db_table = "warren_outbox"
        ordering = ["id"]
