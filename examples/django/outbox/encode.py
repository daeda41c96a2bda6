"""An envelope as the JSON warren accepts: datetimes as RFC 3339 in UTC
(`2025-01-20T10:30:00.123456Z`), naive datetimes refused.

json.dumps(..., default=str) would write `2025-01-20 10:30:00+00:00`, which
warren's relay rejects after the view has answered: the row is marked
failed and the event never arrives. Refusing here puts the error in the
application's own call, where the developer sees it.
"""

import datetime
import json


def dumps(envelope):
    """`envelope` as JSON text.

    Raises ValueError naming the field when a datetime has no time zone
    (Django with USE_TZ = False gives such), or a number is NaN or infinite.
    Other values JSON cannot hold (UUID, Decimal, date) are written as str().
    """
    return json.dumps(_plain(envelope, ""), default=str, allow_nan=False)


def _plain(value, path):
    if isinstance(value, datetime.datetime):
        return _rfc3339(value, path or "the envelope")
    if isinstance(value, dict):
        return {k: _plain(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _rfc3339(value, path):
    if value.utcoffset() is None:
        raise ValueError(
            f"{path} is a naive datetime ({value.isoformat()}): warren needs a time zone. "
            "Use an aware one: django.utils.timezone.now() with USE_TZ = True, "
            "or value.replace(tzinfo=datetime.timezone.utc) if it is UTC"
        )
    # In UTC, so that an offset in seconds (old local times) cannot appear.
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
