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
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from devtools.httpserve import LocalServer, relay, send, stream

ALL_FAULTS = ("slowdown", "error500", "reset", "midreset", "truncate", "latency", "stall")
# Not among ALL_FAULTS: "flip" (one byte of a 2xx body changed, its length kept), which
# only a checksum catches; "norange" (a ranged GET answered 200 with no Content-Range, as
# a server that ignores Range answers; the Range header itself is signed, so it cannot
# be taken off the request). Tests ask for them by name.


class FaultProxy(LocalServer):
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0,
                 kinds: Sequence[str] = ALL_FAULTS, only: str = "", latency: float = 1.0,
                 stall: float = 30.0, ip: str = "127.0.0.1", limit: int = 0,
                 method: str = "") -> None:
        parts = urlsplit(upstream)
        self.up_host, self.up_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.kinds, self.only = rate, tuple(kinds), only
        self.latency, self.stall = latency, stall
        self.limit = limit  # at most this many faults in all (0: no limit)
        self.method = method  # only requests of this method draw a fault ("": any)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.object_gets: Counter[str] = Counter()  # GETs of objects (not listings), by path
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of each object GET
        # (time.monotonic(), method, path with its query) of every request, as it arrives
        self.arrivals: list[tuple[float, str, str]] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                with owner.lock:
                    owner.arrivals.append((time.monotonic(), self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "GET" and "list-type=" not in self.path \
                        and "?uploads" not in self.path:
                    with owner.lock:
                        owner.object_gets[self.path.split("?")[0]] += 1
                        owner.ranges.append((self.path.split("?")[0],
                                             self.headers.get("Range") or ""))
                fault = owner.draw(self.path) \
                    if not owner.method or self.command == owner.method else None
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
                    send(self, status, payload, {"Content-Type": "application/xml"})
                    return
                if fault == "latency":
                    time.sleep(owner.latency)
                conn = http.client.HTTPConnection(owner.up_host, owner.up_port, timeout=60)
                try:
                    if fault in (None, "latency"):  # the answer as it is: as it arrives
                        stream(self, conn, body)
                        return
                    status, headers, data = relay(self, conn, body)
                finally:
                    conn.close()
                if fault == "norange" and self.headers.get("Range") and status == 206:
                    status = 200
                    headers = {k: v for k, v in headers.items()
                               if k.lower() != "content-range"}
                if fault == "flip" and data and 200 <= status < 300:
                    middle = len(data) // 2  # one byte flipped, the length kept: only a sum sees it
                    data = data[:middle] + bytes([data[middle] ^ 0x5A]) + data[middle + 1:]
                if fault in ("midreset", "truncate") and len(data) > 1:
                    send(self, status, data[: len(data) // 2], headers, declared_length=len(data))
                    self.wfile.flush()
                    if fault == "midreset":
                        self._reset()
                    else:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                send(self, status, data, headers)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        super().__init__(Handler, ip)

    def draw(self, path: str) -> str | None:
        with self.lock:
            self.requests += 1
            if self.only and self.only not in path:
                return None
            if self.rng.random() >= self.rate:
                return None
            if self.limit and sum(self.injected.values()) >= self.limit:
                return None
            fault = self.rng.choice(self.kinds)
            self.injected[fault] += 1
            return fault

    def closing(self) -> None:
        self.stop.set()  # stalled handlers give up at once
