"""The Django side of warren's outbox, tested with the real thing.

- Envelopes: aware datetimes are written as RFC 3339, naive ones refused in
  the application's call, before anything is written.
- The migration's DDL is what `warren relay schema` prints.
- A throwaway Django project with the app copied in migrates forward and
  back (`migrate outbox zero`) from another working directory.
- End to end: PostgreSQL (psycopg), `warren relay` publishing from the
  outbox, `warren consume --handler log` printing what arrives; a committed
  transaction's event arrives, a rolled-back one's never does.

Each test has its own schema, exchange and queues, removed at the end.
Environment: WARREN_BIN (the warren binary), DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/test), AMQP_URL (default the local broker).
Needs Django 5.2 and psycopg.
"""

import datetime
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import psycopg
from django.conf import settings

settings.configure(USE_TZ=True)  # the table comes per test, with override_settings

from django.test.utils import override_settings  # noqa: E402 (after configure)
from django.utils import timezone  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from outbox import publish_in_transaction, schema  # noqa: E402
from testsupport import (  # noqa: E402
    AMQP_URL, DATABASE_URL, WARREN, DjangoProject, delete_broker_objects, left_on_broker, warren_schema,
)

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def envelope(user_id, username, registered):
    return {
        "event_type": "user.registered",
        "source": "django-backend",
        "user_id": user_id,
        "data": {
            "user_id": user_id,
            "username": username,
            "email": f"{username}@example.com",
            "registration_timestamp": registered,
        },
    }


class Recorder:
    """A DB-API connection that records what would be executed."""

    in_atomic_block = True

    def __init__(self):
        self.executed = []

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params):
        self.executed.append((sql, params))


class EnvelopeTest(unittest.TestCase):
    def test_an_aware_datetime_is_written_as_rfc3339_in_utc(self):
        conn = Recorder()
        paris = datetime.timezone(datetime.timedelta(hours=1))
        registered = datetime.datetime(2026, 12, 7, 23, 21, 15, 784547, tzinfo=paris)
        publish_in_transaction(envelope(1, "ann", registered), conn)
        [(sql, [body])] = conn.executed
        self.assertIn("INSERT INTO warren_outbox (envelope)", sql)
        self.assertEqual(json.loads(body)["data"]["registration_timestamp"], "2026-12-07T22:21:15.784547Z")

    def test_a_naive_datetime_is_refused_before_anything_is_written(self):
        conn = Recorder()
        with override_settings(USE_TZ=False):  # Django then gives naive datetimes
            now = timezone.now()
        self.assertIsNone(now.tzinfo)
        with self.assertRaises(ValueError) as caught:
            publish_in_transaction(envelope(1, "ann", now), conn)
        message = str(caught.exception)
        self.assertIn("data.registration_timestamp is a naive datetime", message)
        self.assertIn("USE_TZ = True", message)
        self.assertEqual(conn.executed, [])

    def test_a_bad_table_setting_is_named(self):
        with override_settings(WARREN_OUTBOX_TABLE="outbox; drop table users"):
            with self.assertRaisesRegex(Exception, "WARREN_OUTBOX_TABLE"):
                publish_in_transaction(envelope(1, "ann", "2025-01-20T10:30:00Z"), Recorder())


class SchemaTest(unittest.TestCase):
    def test_the_migrations_ddl_is_what_warren_relay_schema_prints(self):
        for table in ("warren_outbox", "t_django_schema.outbox_2"):
            self.assertEqual(schema.ddl(table), warren_schema(table),
                             f"outbox/schema.py differs from `warren relay schema` for {table}: "
                             "copy the DDL template of warren's src/relay/schema.rs into it")


class Database:
    """The test's own schema in PostgreSQL, dropped by close()."""

    def __init__(self, schema_name):
        self.schema = schema_name
        # Autocommit: each `with transaction()` is a real one, and reads hold none open.
        self.db = psycopg.connect(DATABASE_URL, autocommit=True)
        self.db.execute(f"CREATE SCHEMA {self.schema}")

    def rows(self, sql, *params):
        return [r[0] for r in self.db.execute(sql, params)]

    def close(self):
        self.db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self.db.close()


class MigrationTest(unittest.TestCase):
    def setUp(self):
        self.schema = f"t_django_{uuid.uuid4().hex[:10]}"
        self.table = f"{self.schema}.warren_outbox"
        self.database = Database(self.schema)
        self.addCleanup(self.database.close)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.project = DjangoProject(tmp.name, self.schema, self.table)

    def exists(self, name):
        return self.database.rows("SELECT to_regclass(%s)::text", name)[0] is not None

    def test_migrate_forward_and_back_from_another_directory(self):
        self.project.manage("migrate", "outbox")
        self.assertTrue(self.exists(self.table))
        self.assertIn("No changes detected", self.project.manage("makemigrations", "--check", "--dry-run").stdout)

        # Django's own connection and timezone.now(), in a view's transaction.
        self.project.manage("shell", "-c", (
            "from django.db import transaction\n"
            "from django.utils import timezone\n"
            "from outbox import publish_in_transaction\n"
            "from outbox.models import OutboxEvent\n"
            "with transaction.atomic():\n"
            "    publish_in_transaction({'event_type': 'user.registered', 'source': 'django-backend',\n"
            "        'user_id': 7, 'data': {'registration_timestamp': timezone.now()}})\n"
            "assert OutboxEvent.objects.get().status == 'pending'\n"))
        [written] = self.database.rows(f"SELECT envelope->'data'->>'registration_timestamp' FROM {self.table}")
        self.assertRegex(written, RFC3339_UTC)

        self.project.manage("migrate", "outbox", "zero")
        self.assertFalse(self.exists(self.table))
        functions = self.database.rows(
            "SELECT proname::text FROM pg_proc WHERE pronamespace = %s::regnamespace", self.schema)
        self.assertEqual(functions, [], "the table's functions are dropped with it")
        self.project.manage("migrate", "outbox")
        self.assertTrue(self.exists(self.table), "and it can be made again")


class RelayTest(unittest.TestCase):
    def setUp(self):
        run = uuid.uuid4().hex[:10]
        self.database = Database(f"t_django_{run}")
        self.addCleanup(self.database.close)
        self.table = f"{self.database.schema}.warren_outbox"
        self.service = f"t-django-{run}"
        self.exchange = f"t-django-x-{run}"
        settings_override = override_settings(WARREN_OUTBOX_TABLE=self.table)
        settings_override.enable()
        self.addCleanup(settings_override.disable)
        self.env = dict(
            os.environ,
            WARREN_AMQP__URL=AMQP_URL,
            WARREN_TOPOLOGY__EXCHANGE=self.exchange,
            WARREN_TOPOLOGY__QUEUE_TYPE="classic",
            WARREN_CONSUMER__SERVICE=self.service,
            WARREN_CONSUMER__EVENT_TYPES="user.registered",
            WARREN_RELAY__DATABASE_URL=DATABASE_URL,
            WARREN_RELAY__TABLE=self.table,
            WARREN_RELAY__POLL_INTERVAL="200ms",
            RUST_LOG="warren=warn",
        )
        for own in ("DATABASE_URL", "WARREN_BIN"):  # not warren's settings
            self.env.pop(own, None)
        db = self.database.db
        with db.transaction():
            db.execute(schema.ddl(self.table))
            db.execute(f"CREATE TABLE {self.database.schema}.users (id bigint PRIMARY KEY, username text NOT NULL)")
        self.addCleanup(self.check_broker_is_clean)
        self.addCleanup(delete_broker_objects, self.service, self.exchange)
        subprocess.run([WARREN, "topology", "apply"], env=self.env, check=True, capture_output=True)

    def check_broker_is_clean(self):
        self.assertEqual(left_on_broker(self.service) + left_on_broker(self.exchange), [])

    def start(self, *args):
        p = subprocess.Popen([WARREN, *args], env=self.env, stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.wait)
        self.addCleanup(p.kill)
        return p

    def create_user(self, conn, user_id, username, registered):
        """What a Django view does: the user row, then its event, one transaction."""
        conn.execute(f"INSERT INTO {self.database.schema}.users (id, username) VALUES (%s, %s)",
                     (user_id, username))
        publish_in_transaction(envelope(user_id, username, registered), conn)

    def test_only_the_committed_users_event_arrives(self):
        consumer = self.start("consume", "--handler", "log")
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in consumer.stdout], daemon=True).start()
        self.start("relay")
        registered = timezone.now()  # aware: USE_TZ = True

        with psycopg.connect(DATABASE_URL) as conn:
            with conn.transaction():
                self.create_user(conn, 1001, "committed", registered)
            try:
                with conn.transaction():
                    self.create_user(conn, 1002, "rolled_back", registered)
                    raise RuntimeError("the view fails after writing the user and its event")
            except RuntimeError:
                pass
            with conn.transaction():
                self.create_user(conn, 1003, "marker", registered)

        users = self.database.rows(f"SELECT id FROM {self.database.schema}.users ORDER BY id")
        self.assertEqual(users, [1001, 1003], "the rolled-back user is not there")
        rows = self.database.rows(f"SELECT envelope->>'user_id' FROM {self.table} ORDER BY id")
        self.assertEqual(rows, ["1001", "1003"], "nor is its event")

        arrived = self.arrivals(lines, {"committed", "marker"})
        self.assertNotIn("rolled_back", arrived)
        self.assertEqual(set(arrived), {"committed", "marker"})
        expected = registered.isoformat().replace("+00:00", "Z")
        self.assertRegex(expected, RFC3339_UTC)
        for event in arrived.values():
            self.assertEqual(event["data"]["registration_timestamp"], expected)
        # Both rows are marked published once confirmed, none failed.
        for _ in range(100):
            statuses = self.database.rows(f"SELECT status FROM {self.table}")
            if statuses == ["published", "published"]:
                break
            time.sleep(0.1)
        errors = self.database.rows(f"SELECT error FROM {self.table} WHERE error IS NOT NULL")
        self.assertEqual(statuses, ["published", "published"], errors)

    def arrivals(self, lines, usernames):
        """The consumer's events by username, once all of `usernames` arrived."""
        seen = {}
        deadline = time.monotonic() + 60
        while not usernames <= seen.keys():
            remaining = deadline - time.monotonic()
            self.assertGreater(remaining, 0, f"events that arrived: {list(seen)}")
            try:
                event = json.loads(lines.get(timeout=min(remaining, 1)))
            except queue.Empty:
                failed = self.database.rows(f"SELECT error FROM {self.table} WHERE status = 'failed'")
                self.assertEqual(failed, [], "the relay refused rows")
                continue
            seen[event["data"]["username"]] = event
        return seen


if __name__ == "__main__":
    unittest.main()
