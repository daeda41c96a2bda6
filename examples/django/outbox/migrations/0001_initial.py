"""Creates the outbox table with the DDL of `warren relay schema`, for the
table WARREN_OUTBOX_TABLE names; `migrate outbox zero` drops it again.

The DDL is idempotent: a table made earlier with `warren relay schema` is
kept as it is, with its rows.
"""

from django.db import migrations, models

from .. import schema, table


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        # One statement list each way, run as written: the DDL's $$ bodies
        # must not be split.
        migrations.RunSQL(sql=[schema.ddl(table.name())], reverse_sql=[schema.drop(table.name())]),
        # The unmanaged model's state, so makemigrations has nothing to add.
        migrations.CreateModel(
            name="OutboxEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("txid", models.TextField(editable=False)),
                ("event_id", models.UUIDField(editable=False)),
                ("envelope", models.JSONField()),
                ("created_at", models.DateTimeField(editable=False)),
                ("status", models.TextField(default="pending")),
                ("attempts", models.IntegerField(default=0)),
                ("published_at", models.DateTimeField(null=True)),
                ("error", models.TextField(null=True)),
            ],
            options={"managed": False, "db_table": table.db_table(), "ordering": ["id"]},
        ),
    ]
