"""What examples/django/test_outbox.py needs around the tests: settings from
the environment, the broker's management API to clean up with, and a
throwaway Django project with the outbox app copied into it.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
WARREN = os.environ.get("WARREN_BIN", os.path.join(HERE, "..", "..", "target", "debug", "warren"))


def warren_schema(table):
    """What `warren relay schema` prints for relay.table = `table`."""
    env = dict(os.environ, WARREN_RELAY__TABLE=table)
    env.pop("WARREN_BIN", None)  # not a warren setting
    return subprocess.run([WARREN, "relay", "schema"], env=env, check=True,
                          capture_output=True, text=True).stdout


def _management(method, path):
    auth = base64.b64encode(b"guest:guest").decode()
    req = urllib.request.Request(MANAGEMENT_URL + path, method=method,
                                 headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def delete_broker_objects(service, exchange):
    """Deletes the queues `warren topology apply` declared for `service`, and
    `exchange`. Raises when the management API cannot be reached: a test
    that cannot clean up fails rather than leave them on the shared broker."""
    for q in json.loads(_management("GET", "/api/queues/%2F?columns=name")):
        if q["name"].startswith(service + "."):
            _management("DELETE", "/api/queues/%2F/" + urllib.parse.quote(q["name"], safe=""))
    try:
        _management("DELETE", "/api/exchanges/%2F/" + urllib.parse.quote(exchange, safe=""))
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise


def left_on_broker(prefix):
    """Names of queues and exchanges starting with `prefix`."""
    names = []
    for kind in ("queues", "exchanges"):
        names += [o["name"] for o in json.loads(_management("GET", f"/api/{kind}/%2F?columns=name"))
                  if o["name"].startswith(prefix)]
    return names


SETTINGS = """\
SECRET_KEY = "throwaway"
USE_TZ = True
INSTALLED_APPS = ["outbox"]
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql",
    "HOST": {host!r}, "PORT": {port!r}, "NAME": {name!r}, "USER": {user!r}, "PASSWORD": {password!r},
    # django_migrations in the test's own schema, so parallel runs do not meet.
    "OPTIONS": {{"options": "-c search_path={schema}"}},
}}}}
WARREN_OUTBOX_TABLE = {table!r}
"""

MANAGE = """\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


class DjangoProject:
    """A project in `root` with the outbox app copied in, as its README says,
    its database the test's schema. `manage()` runs manage.py from another
    directory than the project's."""

    def __init__(self, root, schema, table):
        self.root = os.path.join(root, "project")
        self.elsewhere = os.path.join(root, "elsewhere")
        os.makedirs(self.elsewhere)
        shutil.copytree(os.path.join(HERE, "outbox"), os.path.join(self.root, "outbox"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        url = urllib.parse.urlsplit(DATABASE_URL)
        with open(os.path.join(self.root, "site_settings.py"), "w") as f:
            f.write(SETTINGS.format(host=url.hostname, port=str(url.port or 5432), name=url.path.lstrip("/"),
                                    user=url.username or "", password=url.password or "",
                                    schema=schema, table=table))
        with open(os.path.join(self.root, "manage.py"), "w") as f:
            f.write(MANAGE)

    def manage(self, *args, check=True):
        """Runs `manage.py args…`; returns the completed process."""
        env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
        p = subprocess.run([sys.executable, os.path.join(self.root, "manage.py"), *args],
                           cwd=self.elsewhere, env=env, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{p.stdout}{p.stderr}")
        return p
