"""A throttling S3 front for the fleet simulation: a token bucket of ``rate`` requests
per second (burst ``burst``) in front of a real S3 server; beyond it every request is
answered ``503 SlowDown``, as OBS does when a large job starts all its nodes at once.
Requests within the budget are forwarded unchanged (signatures still verify)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from devtools.httpserve import LocalServer, relay, send

SLOWDOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")


class Throttle(LocalServer):
    def __init__(self, upstream: str, rate: float, burst: float,
                 ip: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        self.up = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()
        self.lock = threading.Lock()
        self.forwarded = self.throttled = 0
        self.object_gets = 0  # forwarded GETs of objects (not listings)
        local = threading.local()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if not owner.take():
                    send(self, 503, SLOWDOWN, {"Content-Type": "application/xml"})
                    return
                if self.command == "GET" and "list-type=" not in self.path:
                    with owner.lock:
                        owner.object_gets += 1
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(*owner.up, timeout=60)
                try:
                    status, headers, data = relay(self, conn)
                except (OSError, http.client.HTTPException):
                    local.conn = None
                    conn.close()
                    self.send_error(502)
                    return
                send(self, status, data, headers)

            do_HEAD = do_GET  # noqa: N815 - a part's length (peer fetch of multipart objects)

        super().__init__(Handler, ip)

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                self.forwarded += 1
                return True
            self.throttled += 1
            return False
