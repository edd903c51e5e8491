"""The relay's pulling end: a child takes its files from its parent, verifies each
against the store's listing, and leaves the parent at the first bound it crosses (see
:mod:`.protocol`); whatever it did not get comes from the store."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import backoff, landing
from ..cluster import auth
from ..cluster.wire import Wire, hang_up
from ..transfer.manifest import Manifest
from ..transfer.paths import SafeDirs
from ..transfer.verify import Doubts, Verifier, file_matches
from .protocol import (
    BATCH,
    CHUNK,
    CONNECT_WINDOW,
    HANDSHAKE,
    LAG,
    MIN_BYTES_PER_S,
    MIN_FILES_PER_S,
    PACE_WINDOW,
    SILENCE,
    STALL,
    Peers,
    parent,
)

if TYPE_CHECKING:
    from ..log import Log
    from ..transfer.listing import RemoteObject

class Pace:
    """Is the parent slower than the store would be? Judged over windows of PACE_WINDOW
    seconds of the parent's active time: the clock pauses while the parent says it is
    waiting on its own download (that wait is the store's pace, bounded by STALL), and
    a window restarts when this node finds itself behind (its own stall)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self.since, self.bytes, self.files = self.clock(), 0, 0
        self.paused = 0.0
        self.paused_at: float | None = None

    def pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.clock()

    def resume(self) -> None:
        if self.paused_at is not None:
            self.paused += self.clock() - self.paused_at
            self.paused_at = None

    def add(self, nbytes: int, files: int = 0) -> None:
        self.bytes += nbytes
        self.files += files

    def slow(self) -> bool:
        """True when the window just ended fell below both floors; each full window
        starts a new one, so a parent that slows down late is caught too."""
        now = self.clock()
        spent = now - self.since - self.paused - \
            (now - self.paused_at if self.paused_at is not None else 0.0)
        if spent < PACE_WINDOW:
            return False
        too_slow = self.bytes < MIN_BYTES_PER_S * spent and self.files < MIN_FILES_PER_S * spent
        self.restart()
        return too_slow


class ParentClock:
    """What the parent's stamps say: whether this node reads behind them (``lagging``:
    what arrives now was sent a while ago, so the parent is ahead of us) and whether the
    parent's own progress has stood still for STALL seconds of its clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.offset: float | None = None  # the least (our clock - theirs) seen
        self.moved: tuple[Any, Any] = (None, None)
        self.moved_at = 0.0

    def lagging(self, stamp: Any) -> bool:
        if not isinstance(stamp, (int, float)):
            return False
        offset = self.clock() - stamp
        if self.offset is None or offset < self.offset:
            self.offset = offset
        return offset - self.offset > LAG

    def start_wait(self) -> None:
        self.moved = (None, None)

    def stalled(self, heartbeat: Mapping[str, Any]) -> bool:
        now, stamp = (heartbeat.get("files"), heartbeat.get("bytes")), heartbeat.get("t")
        if not isinstance(stamp, (int, float)):
            return False
        if now != self.moved:
            self.moved, self.moved_at = now, stamp
            return False
        return stamp - self.moved_at > STALL


def pull(peers: Peers, objects: list[RemoteObject], doubts: Doubts, root: Path,
         manifest: Manifest, log: Log, server: int | None = None) -> list[RemoteObject]:
    """Fetches ``objects`` from this node's parent (or node ``server``), verifying each
    against the listing (plain MD5, or multipart with its parts in ``doubts.layouts``);
    returns those that must come from the store instead. A body whose sum differs has
    the store asked why (:class:`~bootstrap.transfer.verify.Doubts`): each part's length
    of an object whose parts may be the equal-parts guess (the answer replaces the
    guess); whether the store encrypts it, so that its ETag is no MD5: then no peer's
    copy of it can be checked, and it and the rest come from the store."""
    up = parent(peers.rank) if server is None else server
    assert up is not None
    address, port = peers.hosts[up], peers.ports[up]
    conn = _connect(address, port, log)
    if conn is None:
        return list(objects)
    failed: list[RemoteObject] = []
    wire = Wire(conn)
    try:
        auth.connect(wire, peers.key, peers.protocol, peers.rank, up,
                     time.monotonic() + HANDSHAKE)
        failed = _receive(wire, list(objects), doubts, root, manifest)
        wire.send(b'{"done":true}\n', SILENCE)
    except (_Mismatch, _Slow, _Stalled, auth.Refused, OSError, ValueError) as exc:
        if isinstance(exc, _Encrypted):
            log.info(f"relay: {exc.obj.rel} is encrypted by the store (server-side "
                     "encryption: its ETag is not its MD5), so a peer's copy cannot be "
                     "checked; this node fetches the rest from the store")
        elif isinstance(exc, _Mismatch):
            # A parent that sent one wrong byte is not asked for another.
            log.warn(f"relay: {exc.obj.rel} from the parent {address} does not match the "
                     f"store's listing ({exc}); this node fetches the rest from the store")
        elif isinstance(exc, auth.Refused):
            log.warn(f"relay: {address}:{port} is not this node's parent (node {up}): {exc}; "
                     "all from the store")
        else:
            log.info(f"relay: parent {address} failed ({exc or type(exc).__name__}); the "
                     "rest from the store")
        failed = [o for o in objects
                  if not manifest.unchanged(o.rel, o.size, o.etag, root / o.rel)]
    finally:
        hang_up(conn)
    return failed


def _connect(address: str, port: int, log: Log) -> socket.socket | None:
    """The connection to the parent, retried for CONNECT_WINDOW (its process may start
    later than ours); None when it never answered."""
    why: OSError | None = None
    for left in backoff.tries(time.monotonic() + CONNECT_WINDOW, 0.1, 1.0):
        try:
            return socket.create_connection((address, port), timeout=min(left, HANDSHAKE))
        except OSError as exc:
            why = exc
    log.info(f"relay: parent {address}:{port} unreachable ({why}); all from the store")
    return None


def _receive(wire: Wire, pending: list[RemoteObject], doubts: Doubts, root: Path,
             manifest: Manifest) -> list[RemoteObject]:
    """Asks for ``pending`` in batches and keeps each file that verifies; returns the
    ones the parent said it does not have. Raises on anything else, and when a bound
    of the module's contract is crossed."""

    dirs = SafeDirs(root)
    pace, theirs = Pace(), ParentClock()
    failed: list[RemoteObject] = []

    def next_line() -> dict[str, Any]:
        line = wire.json(time.monotonic() + SILENCE)
        if theirs.lagging(line.get("t")):
            pace.restart()  # we read late what was sent long ago: our stall, not theirs
        return line

    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        wire.send_json({"get": [o.rel for o in batch]}, SILENCE)
        for obj in batch:
            header = next_line()
            if "wait" in header:  # alive, waiting on its own download: judged by progress
                pace.pause()
                theirs.start_wait()
                while "wait" in header:
                    if theirs.stalled(header):
                        raise _Stalled(str(header.get("wait"))[:80])
                    header = next_line()
                pace.resume()
            if header.get("rel") != obj.rel:
                raise ValueError("answers out of order")
            if header.get("missing"):
                failed.append(obj)
                continue
            size = header.get("size")
            if size != obj.size:
                raise _Mismatch(obj, f"{size} bytes, not {obj.size}")
            dest = dirs.ensure(obj.rel.rpartition("/")[0]) / obj.rel.rpartition("/")[2]
            tmp = Path(landing.temporary(dest.parent))
            check = Verifier(obj, doubts.layouts.get(obj.rel))
            try:
                with open(tmp, "wb") as out:
                    left = obj.size
                    while left > 0:
                        chunk = wire.chunk(min(CHUNK, left), time.monotonic() + SILENCE)
                        check.update(chunk)
                        view = memoryview(chunk)
                        for at in range(0, len(view), landing.WRITE_SLICE):  # see there
                            out.write(view[at:at + landing.WRITE_SLICE])
                        left -= len(chunk)
                        pace.add(len(chunk))
                        if pace.slow():
                            raise _Slow()
                if not check.matches() and not _sound_after_all(obj, tmp, doubts, check.seen):
                    if check.seen == obj.size and doubts.encrypted_by_store(obj):
                        raise _Encrypted(obj, check.why_not())
                    raise _Mismatch(obj, check.why_not())
                landing.commit(tmp, dest)  # verified: only now under its name
            finally:
                landing.discard(tmp)
            manifest.record(obj.rel, obj.size, obj.etag, dest)
            pace.add(0, files=1)
            if pace.slow():
                raise _Slow()
    return failed


def _sound_after_all(obj: RemoteObject, tmp: Path, doubts: Doubts, seen: int) -> bool:
    """A whole body that did not match parts that may be the equal-parts guess: checked
    again against each part's length from the store (which then replaces the guess)."""
    if seen != obj.size:
        return False
    exact = doubts.asked_again(obj)
    return exact is not None and file_matches(obj, tmp, exact)


class _Slow(Exception):
    def __str__(self) -> str:
        return (f"slower than {MIN_BYTES_PER_S >> 20} MiB/s and {MIN_FILES_PER_S:g} files/s "
                f"over {PACE_WINDOW:g} s")


class _Stalled(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(f"its own download made no progress for {STALL:g} s while it "
                         f"waited for {what}")


class _Mismatch(Exception):
    def __init__(self, obj: RemoteObject, why: str) -> None:
        super().__init__(why)
        self.obj = obj


class _Encrypted(_Mismatch):
    """The store encrypts the object: its ETag says nothing of a peer's bytes."""
