"""The plumbing the test servers share (the hostile S3 server, the fault-injecting
proxy, the throttling front): a threaded HTTP server on a free 127.0.0.1 port, run in
the background and stopped by its context manager, and the relay of one request to
the real S3 server behind it (buffered, for a fault that rewrites the answer, or
streamed, as a real store answers)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypeVar

S = TypeVar("S", bound="LocalServer")
HOP_BY_HOP = ("transfer-encoding", "connection", "content-length")


class _Server(ThreadingHTTPServer):
    # A real store's front takes bursts of connections (Go's net listens with the
    # system's somaxconn). socketserver's default backlog is 5: a node's engine opening
    # its hundreds of connections at once overflowed it (1,291 dropped SYNs in one run
    # of two relay tests, `nstat TcpExtListenOverflows`), and each dropped SYN costs its
    # client a 1, 3, 7 s retransmission: on a loaded run a request stalled past the
    # relay's STALL (20 s) and its children left for the store.
    request_queue_size = 4096
    daemon_threads = True


class LocalServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler], ip: str = "127.0.0.1") -> None:
        self.server = _Server((ip, 0), handler)
        self.endpoint = f"http://{ip}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def closing(self) -> None:
        """Called before the server stops (wake up handlers that are waiting)."""

    def __enter__(self: S) -> S:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closing()
        self.server.shutdown()
        self.server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
         headers: Mapping[str, str] = {}, declared_length: int | None = None) -> None:
    """Answers with ``body``; ``declared_length`` lets a fault promise more than it sends."""
    if declared_length is None and handler.command == "HEAD":
        # A HEAD's length is the object's (or the part's), not the empty body's.
        declared_length = int(headers.get("Content-Length", headers.get("content-length",
                                                                        len(body))))
    _start(handler, status, headers, len(body) if declared_length is None else declared_length)
    handler.wfile.write(body)


def relay(handler: BaseHTTPRequestHandler, conn: http.client.HTTPConnection,
          body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Sends the handler's request, headers unchanged (signatures still verify)."""
    resp = _forward(handler, conn, body)
    return resp.status, dict(resp.getheaders()), resp.read()


def stream(handler: BaseHTTPRequestHandler, conn: http.client.HTTPConnection,
           body: bytes = b"") -> int:
    """:func:`relay` and :func:`send` in one, the answer's body passed on as it arrives
    (what a real store's client sees: the first bytes at once, whatever the body's size)
    when it declares its length; returns the status. Buffered, a 40 MiB body's first
    byte waits for the whole body (84 ms on an idle machine, 15 ms streamed), which on a
    loaded one can pass a client's 1 s read timeout on every attempt."""
    resp = _forward(handler, conn, body)
    headers = dict(resp.getheaders())
    length = resp.getheader("Content-Length")
    if length is None or handler.command == "HEAD":
        send(handler, resp.status, resp.read(), headers)
        return resp.status
    _start(handler, resp.status, headers, int(length))
    while chunk := resp.read1(1 << 20):
        handler.wfile.write(chunk)
    return resp.status


def _forward(handler: BaseHTTPRequestHandler, conn: http.client.HTTPConnection,
             body: bytes) -> http.client.HTTPResponse:
    conn.request(handler.command, handler.path, body=body or None,
                 headers=dict(handler.headers.items()))
    return conn.getresponse()


def _start(handler: BaseHTTPRequestHandler, status: int, headers: Mapping[str, str],
           length: int) -> None:
    """The status line and headers (the hop-by-hop ones are the server's own)."""
    handler.send_response(status)
    for name, value in headers.items():
        if name.lower() not in HOP_BY_HOP:
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
