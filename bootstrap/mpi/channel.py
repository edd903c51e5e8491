"""The launch agent's frames: every byte after the handshake encrypted and
authenticated, in order, once.

Why: MPI launchers put the job's environment on the remote command line (Horovod and
``mpirun -x`` export variables, secrets included, that way), and the remote command's
output is the job's. So a frame is AES-256-GCM (the ``cryptography`` package, no
home-made cipher) under a key per direction, both derived from the handshake's session
key (bound to both fresh nonces: :func:`bootstrap.cluster.auth.session_key`). The GCM
nonce is the frame's sequence number in that direction, never sent, so a frame dropped,
repeated, reordered or moved from another connection fails to decrypt and the
connection ends.

On the wire: a 4-byte big-endian length, then the sealed frame; inside, one byte of
kind and the payload. Frames are at most :data:`MAX_FRAME` bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import socket
import struct
import threading
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import backoff
from ..cluster import auth
from ..cluster.wire import Wire, hang_up
from .plan import PROTOCOL

MAX_FRAME = 1 << 20
HANDSHAKE = 5.0  # seconds for a handshake, on each end
# Kinds of frame.
JSON = b"J"  # a request or an answer: {"op": ...}, {"exit": n}, {"signal": n}
STDIN = b"I"  # bytes for the remote command's stdin; empty: its end (EOF)
STDOUT = b"O"
STDERR = b"E"


class Broken(Exception):
    """The other end sent something that is not the next frame of this session."""


class Channel:
    """A proven connection's frames; ``send`` is safe from several threads, ``recv``
    is for one reader."""

    def __init__(self, wire: Wire, session: bytes, side: str) -> None:
        if side not in ("server", "client"):
            raise ValueError(side)
        mine, theirs = (b"server->client", b"client->server")[:: 1 if side == "server" else -1]
        self.wire = wire
        self._sock = wire.sock
        # Blocking from here on, for both directions: a socket timeout is shared by the
        # threads that read and write it, so reads wait with select (when they have a
        # deadline) and writes block while the reader is slow (back-pressure).
        self._sock.settimeout(None)
        self._seal = AESGCM(hmac.new(session, mine, hashlib.sha256).digest())
        self._open = AESGCM(hmac.new(session, theirs, hashlib.sha256).digest())
        self._sent = 0
        self._received = 0
        self._lock = threading.Lock()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        if len(payload) + 1 > MAX_FRAME:
            raise ValueError("frame too large")
        with self._lock:
            nonce = struct.pack(">4xQ", self._sent)
            self._sent += 1
            sealed = self._seal.encrypt(nonce, kind + payload, None)
            self._sock.sendall(struct.pack(">I", len(sealed)) + sealed)

    def send_json(self, value: dict[str, Any]) -> None:
        self.send(JSON, json.dumps(value).encode())

    def recv(self, deadline: float = float("inf")) -> tuple[bytes, bytes]:
        """The next frame as (kind, payload); raises :class:`Broken` on a frame that does
        not open, ``ConnectionError`` when the other end closed, ``TimeoutError`` past
        ``deadline``."""
        head = self._exactly(4, deadline)
        (size,) = struct.unpack(">I", head)
        if not 17 <= size <= MAX_FRAME + 16:
            raise Broken(f"a frame of {size} bytes")
        sealed = self._exactly(size, deadline)
        nonce = struct.pack(">4xQ", self._received)
        try:
            plain = self._open.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise Broken("a frame that does not open with this session's key") from None
        self._received += 1
        return plain[:1], plain[1:]

    def recv_json(self, deadline: float = float("inf")) -> dict[str, Any]:
        kind, payload = self.recv(deadline)
        if kind != JSON:
            raise Broken(f"a {kind!r} frame where a request was due")
        value = json.loads(payload)
        if not isinstance(value, dict):
            raise Broken("a request that is not a JSON object")
        return value

    def _exactly(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        buf = self.wire._buf  # bytes the handshake's reader already took off the socket
        if buf:
            out += buf[:n]
            del buf[:n]
        while len(out) < n:
            if deadline != float("inf"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError("timed out")
            data = self._sock.recv(min(n - len(out), 1 << 16))
            if not data:
                raise ConnectionError("the connection was closed")
            out += data
        return bytes(out)

    def close(self) -> None:
        hang_up(self._sock)


class Unreachable(Exception):
    """No proven session with that agent; ``str()`` says why."""


def dial(target: tuple[str, int], key: bytes, rank: int, agent: int,
         window: float) -> Channel:
    """A proven, sealed session with node ``agent``'s launch agent, as node ``rank``.

    A failed connect or a handshake cut short is tried again for ``window`` seconds (the
    agent listens before the barrier and greets once it starts); a handshake that
    refuses ends at once (a wrong key does not get better). Raises :class:`Unreachable`."""
    why = "no answer"
    for _ in backoff.tries(time.monotonic() + window, 0.1, 0.5):
        try:
            sock = socket.create_connection(target, timeout=HANDSHAKE)
        except OSError as exc:
            why = exc.strerror or str(exc)
            continue
        try:
            wire = Wire(sock)
            session = auth.connect_session(wire, key, PROTOCOL, rank, agent,
                                           time.monotonic() + HANDSHAKE)
            return Channel(wire, session, "client")
        except auth.Refused as exc:
            hang_up(sock)
            raise Unreachable(str(exc)) from None
        except (ValueError, OSError) as exc:  # not accepting yet (before its start), a reset
            hang_up(sock)
            why = str(exc) or type(exc).__name__
    raise Unreachable(why)
