#!/usr/bin/env python3
"""An example receiver for warren's webhook handler (Python standard library only).

It verifies each delivery's Standard Webhooks signature (docs/WEBHOOK.md),
prints every verified event as one JSON line on stdout and answers:

  204  signature valid, body is JSON: done (warren acks the event)
  400  signature valid, body is not JSON (warren dead-letters it)
  401  signature missing, wrong, or timestamp more than 5 minutes off
       (warren dead-letters it: fix the secret, then replay from .dead)
  404  any other path;  GET /healthz answers 200 for health checks

Environment:
  WEBHOOK_SECRET  the `whsec_...` secret, the same as warren's webhook.secret (required)
  PORT            port to listen on (default 8081; 0 picks a free one)
  WEBHOOK_PATH    path warren posts to (default /events, warren's webhook.path)

Rejections are logged on stderr, as is the first line, which says where it listens:
  receiver listening on http://0.0.0.0:8081/events
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 5 * 60
MAX_BODY = 1 << 20


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; raises ValueError without quoting it."""
    secret = secret.strip()
    if not secret.startswith("whsec_"):
        raise ValueError("WEBHOOK_SECRET must be whsec_ followed by base64")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except binascii.Error:
        raise ValueError("WEBHOOK_SECRET is not whsec_ + standard, padded base64") from None
    if len(key) < 24:
        raise ValueError(f"WEBHOOK_SECRET is too short: {len(key)} bytes, use 24 to 64")
    return key


def verify(key: bytes, headers, body: bytes, now: float) -> None:
    """Raises ValueError unless body (the raw request bytes) is a genuine delivery."""
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    if not msg_id or not ts:
        raise ValueError("missing webhook-id or webhook-timestamp")
    try:
        sent = int(ts)
    except ValueError:
        raise ValueError("bad webhook-timestamp") from None
    if abs(now - sent) > TOLERANCE_SECONDS:
        raise ValueError("webhook-timestamp too far from now")
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256)
    expected = b"v1," + base64.b64encode(mac.digest())
    signatures = headers.get("webhook-signature", "").split()
    if not any(hmac.compare_digest(sig.encode(), expected) for sig in signatures):
        raise ValueError("no valid webhook-signature")


class Handler(BaseHTTPRequestHandler):
    server_version = "warren-example-receiver"
    key = b""
    path_events = "/events"

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, b"ok\n")
        else:
            self.answer(404, b"not found\n")

    def do_POST(self):
        if self.path != self.path_events:
            self.answer(404, b"not found\n")
            return
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            self.answer(411, b"content-length required\n")
            return
        if length < 0 or length > MAX_BODY:
            self.answer(413, b"body too large\n")
            return
        body = self.rfile.read(length)
        try:
            verify(self.key, self.headers, body, time.time())
        except ValueError as e:
            log(f"rejected {self.headers.get('webhook-id', '-')}: {e}")
            self.answer(401, f"{e}\n".encode())
            return
        try:
            event = json.loads(body)
        except ValueError:
            log(f"rejected {self.headers['webhook-id']}: body is not JSON")
            self.answer(400, b"body is not JSON\n")
            return
        # Deduplicate on webhook-id (the event_id) in a real receiver.
        line = {
            "webhook_id": self.headers["webhook-id"],
            "attempt": self.headers.get("x-warren-attempt"),
            "event": event,
        }
        print(json.dumps(line, separators=(",", ":")), flush=True)
        self.answer(204, b"")

    def answer(self, status: int, body: bytes):
        self.send_response(status)
        if body:
            self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # one line per event on stdout is the log; rejections go to stderr


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    try:
        Handler.key = parse_secret(os.environ.get("WEBHOOK_SECRET", ""))
    except ValueError as e:
        log(f"error: {e}")
        return 2
    Handler.path_events = os.environ.get("WEBHOOK_PATH", "/events")
    port = int(os.environ.get("PORT", "8081"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # As PID 1 in a container, SIGTERM is ignored unless handled: stop cleanly.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"receiver listening on http://0.0.0.0:{server.server_address[1]}{Handler.path_events}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
