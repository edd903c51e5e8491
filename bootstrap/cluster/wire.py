"""A TCP connection read as JSON lines and byte runs, every read bounded by a deadline.

A socket timeout bounds one ``recv``, so a peer that sends one byte every few seconds
keeps a plain ``readline`` alive for ever (measured: a stranger holding the relay's
slots far past its 5 s handshake). Here each read names the moment it must be done by,
and each ``recv`` gets only what is left of it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

MAX_LINE = 64 * 1024


class Wire:
    """``sock`` with a read buffer; lines are capped at ``MAX_LINE`` bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _recv(self, most: int, deadline: float) -> bytes:
        """One ``recv`` of at most ``most`` bytes, given what is left of ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)
        data = self.sock.recv(most)
        if not data:
            raise ConnectionError("the connection was closed")
        return data

    def line(self, deadline: float, limit: int = MAX_LINE) -> bytes:
        """The next line (without its newline), complete by ``deadline``."""
        while (line := self._take(limit)) is None:
            self._buf += self._recv(1 << 16, deadline)
        return line

    def line_ready(self, limit: int = MAX_LINE) -> bytes | None:
        """For a socket ``select`` found readable (a server reading many at once): one
        ``recv``, then the next line if it is complete now, else None (ask again when
        it is readable). Raises as :meth:`line` does."""
        self._buf += self._recv(1 << 16, time.monotonic() + 1.0)
        return self._take(limit)

    def _take(self, limit: int) -> bytes | None:
        """The next complete line out of the buffer, or None; ValueError past ``limit``."""
        end = self._buf.find(b"\n")
        if end > limit or (end < 0 and len(self._buf) > limit):
            raise ValueError(f"a line over {limit} bytes")
        if end < 0:
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return line

    def json(self, deadline: float, limit: int = MAX_LINE) -> dict[str, Any]:
        """The next line as a JSON object."""
        value = json.loads(self.line(deadline, limit))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    def chunk(self, most: int, deadline: float) -> bytes:
        """Up to ``most`` bytes: what is buffered, else what one ``recv`` brings."""
        if not self._buf:
            return self._recv(most, deadline)
        data = bytes(self._buf[:most])
        del self._buf[:most]
        return data

    def send(self, data: bytes, timeout: float) -> None:
        """All of ``data`` within ``timeout`` seconds (Python bounds the whole
        ``sendall``, not each ``send``): a peer that stops reading is found out."""
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def send_json(self, value: dict[str, Any], timeout: float) -> None:
        self.send(json.dumps(value, separators=(",", ":")).encode() + b"\n", timeout)


def hang_up(conn: socket.socket) -> None:
    """Ends a connection another thread may be blocked on (``close`` alone would not
    wake its ``recv``)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()
