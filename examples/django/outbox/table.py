"""The outbox table's name, set in one place: the Django setting
WARREN_OUTBOX_TABLE (default "warren_outbox", warren's default relay.table).

The model, the migration and publish_in_transaction all read it here. It
must equal warren's relay.table; schema-qualified names work
("app.warren_outbox"). It is checked as warren checks relay.table, since it
goes into SQL text unquoted.
"""

import re

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT = "warren_outbox"
_PART = r"[a-z_][a-z0-9_]{0,47}"
_NAME = re.compile(rf"(?:{_PART}\.)?{_PART}")


def name():
    """The table as written in SQL: `table` or `schema.table`.

    Raises ImproperlyConfigured when WARREN_OUTBOX_TABLE is not a lower-case
    SQL name (letters, digits, _), optionally schema-qualified.
    """
    value = getattr(settings, "WARREN_OUTBOX_TABLE", DEFAULT)
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ImproperlyConfigured(
            f"WARREN_OUTBOX_TABLE {value!r}: use a lower-case SQL name (letters, digits, _), "
            "optionally schema.table, the same as warren's relay.table"
        )
    return value


def db_table():
    """The name for a model's Meta.db_table. Django quotes db_table as one
    identifier, so a schema-qualified name is given quoted part by part."""
    full = name()
    if "." not in full:
        return full
    schema, table = full.split(".")
    return f'"{schema}"."{table}"'
