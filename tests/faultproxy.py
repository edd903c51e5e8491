"""A fault-injecting HTTP proxy for the tests, in front of the suite's real S3 server.

Each request is forwarded unchanged (headers included, so SigV4 signatures still
verify upstream) unless the seeded random draw picks a fault for it:

=============  ==========================================================
``slowdown``   503 with an S3 ``SlowDown`` error body (OBS's throttling)
``error500``   500 with an ``InternalError`` body
``reset``      the connection is reset before any response
``midreset``   headers and half the body, then a reset
``truncate``   a full Content-Length, half the body, then a clean close
``latency``    a delay of ``latency`` seconds, then the real answer
``stall``      nothing at all until the client gives up (read timeout)
=============  ==========================================================

``rate`` is the share of requests that fail, ``kinds`` which faults are drawn,
``only`` restricts faults to requests whose path+query contains a string (e.g.
``list-type`` for listing pages). Counters record what was injected.
Bound to 127.0.0.1 on a free port; stopped by the context manager.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Optional
from urllib.parse import urlsplit

ALL_FAULTS = ("slowdown", "error500", "reset", "midreset", "truncate", "latency", "stall")


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0,
                 kinds: Sequence[str] = ALL_FAULTS, only: str = "", latency: float = 1.0,
                 stall: float = 30.0) -> None:
        parts = urlsplit(upstream)
        self.up_host, self.up_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.kinds, self.only = rate, tuple(kinds), only
        self.latency, self.stall = latency, stall
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = owner.draw(self.path)
                if fault == "reset":
                    self._reset()
                    return
                if fault == "stall":
                    owner.stop.wait(owner.stall)
                    self._reset()
                    return
                if fault in ("slowdown", "error500"):
                    code, status = ("SlowDown", 503) if fault == "slowdown" else \
                        ("InternalError", 500)
                    payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}"
                               f"</Code><Message>injected</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "latency":
                    time.sleep(owner.latency)
                conn = http.client.HTTPConnection(owner.up_host, owner.up_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None,
                                 headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault in ("midreset", "truncate") and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if fault == "midreset":
                        self._reset()
                    else:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def draw(self, path: str) -> Optional[str]:
        with self.lock:
            self.requests += 1
            if self.only and self.only not in path:
                return None
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(self.kinds)
            self.injected[fault] += 1
            return fault

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, t: Optional[type[BaseException]], e: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
