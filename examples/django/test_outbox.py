"""A committed transaction's event arrives; a rolled-back one's never does.

Runs the real thing: PostgreSQL (psycopg), `warren relay` publishing from
the outbox, `warren consume --handler log` printing what arrives. Each run
has its own schema, exchange and queues, removed at the end.

Environment: WARREN_BIN (the warren binary), DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/test), AMQP_URL (default the local broker).
"""

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
import uuid

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
WARREN = os.environ.get("WARREN_BIN", os.path.join(HERE, "..", "..", "target", "debug", "warren"))


def envelope(user_id, username):
    return {
        "event_type": "user.registered",
        "source": "django-backend",
        "user_id": user_id,
        "data": {
            "user_id": user_id,
            "username": username,
            "email": f"{username}@example.com",
            "registration_timestamp": "2025-01-20T10:30:00Z",
        },
    }


class OutboxTest(unittest.TestCase):
    def setUp(self):
        run = uuid.uuid4().hex[:10]
        self.schema = f"t_django_{run}"
        self.table = f"{self.schema}.warren_outbox"
        self.service = f"t-django-{run}"
        os.environ["WARREN_RELAY__TABLE"] = self.table  # read by outbox.publish
        self.env = dict(
            os.environ,
            WARREN_AMQP__URL=AMQP_URL,
            WARREN_TOPOLOGY__EXCHANGE=f"t-django-x-{run}",
            WARREN_TOPOLOGY__QUEUE_TYPE="classic",
            WARREN_CONSUMER__SERVICE=self.service,
            WARREN_CONSUMER__EVENT_TYPES="user.registered",
            WARREN_RELAY__DATABASE_URL=DATABASE_URL,
            WARREN_RELAY__TABLE=self.table,
            WARREN_RELAY__POLL_INTERVAL="200ms",
            RUST_LOG="warren=warn",
        )
        self.env.pop("DATABASE_URL", None)
        self.processes = []
        # Autocommit: each `with transaction()` is a real one, and reads hold none open.
        self.db = psycopg.connect(DATABASE_URL, autocommit=True)
        ddl = subprocess.run([WARREN, "relay", "schema"], env=self.env, check=True,
                             capture_output=True, text=True).stdout
        with self.db.transaction():
            self.db.execute(ddl)
            self.db.execute(f"CREATE TABLE {self.schema}.users (id bigint PRIMARY KEY, username text NOT NULL)")
        subprocess.run([WARREN, "topology", "apply"], env=self.env, check=True, capture_output=True)

    def tearDown(self):
        for p in self.processes:
            p.kill()
            p.wait()
        with self.db.transaction():
            self.db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self.db.close()
        delete_topology(self.service, self.env["WARREN_TOPOLOGY__EXCHANGE"])

    def start(self, *args):
        p = subprocess.Popen([WARREN, *args], env=self.env, stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        self.processes.append(p)
        return p

    def create_user(self, conn, user_id, username):
        """What a Django view does: the user row, then its event, one transaction."""
        from outbox import publish_in_transaction

        conn.execute(f"INSERT INTO {self.schema}.users (id, username) VALUES (%s, %s)", (user_id, username))
        publish_in_transaction(envelope(user_id, username), conn)

    def test_only_the_committed_users_event_arrives(self):
        consumer = self.start("consume", "--handler", "log")
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in consumer.stdout], daemon=True).start()
        self.start("relay")

        with psycopg.connect(DATABASE_URL) as conn:
            with conn.transaction():
                self.create_user(conn, 1001, "committed")
            try:
                with conn.transaction():
                    self.create_user(conn, 1002, "rolled_back")
                    raise RuntimeError("the view fails after writing the user and its event")
            except RuntimeError:
                pass
            with conn.transaction():
                self.create_user(conn, 1003, "marker")

        users = [r[0] for r in self.db.execute(f"SELECT id FROM {self.schema}.users ORDER BY id")]
        self.assertEqual(users, [1001, 1003], "the rolled-back user is not there")
        rows = [r[0] for r in self.db.execute(f"SELECT envelope->>'user_id' FROM {self.table} ORDER BY id")]
        self.assertEqual(rows, ["1001", "1003"], "nor is its event")

        seen = set()
        deadline = time.monotonic() + 60
        while not {"committed", "marker"} <= seen:
            remaining = deadline - time.monotonic()
            self.assertGreater(remaining, 0, f"events that arrived: {seen}")
            try:
                event = json.loads(lines.get(timeout=remaining))
            except queue.Empty:
                continue
            seen.add(event["data"]["username"])
        self.assertNotIn("rolled_back", seen)
        self.assertEqual(seen, {"committed", "marker"})
        # Both rows are marked published once confirmed.
        for _ in range(100):
            statuses = [r[0] for r in self.db.execute(f"SELECT status FROM {self.table}")]
            if statuses == ["published", "published"]:
                break
            time.sleep(0.1)
        self.assertEqual(statuses, ["published", "published"])


def delete_topology(service, exchange):
    """Removes the queues and the exchange `warren topology apply` declared."""
    auth = base64.b64encode(b"guest:guest").decode()

    def call(method, path):
        req = urllib.request.Request(f"http://127.0.0.1:15672{path}", method=method,
                                     headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    try:
        for q in json.loads(call("GET", "/api/queues/%2F?columns=name")):
            if q["name"].startswith(service + "."):
                call("DELETE", "/api/queues/%2F/" + urllib.parse.quote(q["name"], safe=""))
        call("DELETE", "/api/exchanges/%2F/" + urllib.parse.quote(exchange, safe=""))
    except OSError as e:
        print(f"could not delete the test's queues and exchange: {e}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
