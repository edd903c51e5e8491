"""The relay's serving end: a node's verified files to its children, each child
proven (:mod:`bootstrap.cluster.auth`), every wait bounded (see :mod:`.protocol`)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cluster import auth
from ..cluster.wire import Wire, hang_up
from ..transfer.manifest import Manifest
from .protocol import (
    BATCH,
    CHUNK,
    CONNECT_WINDOW,
    HANDSHAKE,
    HEARTBEAT,
    MAX_PENDING,
    SILENCE,
    Peers,
    children,
)

if TYPE_CHECKING:
    from ..log import Log

class Held:
    """The files this node holds, verified; waiters wake when one lands. ``progress`` is
    what the heartbeats tell children: files held, and a count that grows with every
    byte landed or in flight (the download's running count; only its movement counts)."""

    def __init__(self) -> None:
        self._have: set[str] = set()
        self._cond = threading.Condition()
        self.closed = False  # no more files will land here
        self.landed_bytes = 0
        self.live_bytes: Callable[[], int] | None = None  # the download's running count

    def add(self, rel: str, size: int = 0) -> None:
        with self._cond:
            self._have.add(rel)
            self.landed_bytes += size
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def has(self, rel: str) -> bool:
        with self._cond:
            return rel in self._have

    def progress(self) -> tuple[int, int]:
        live = self.live_bytes() if self.live_bytes is not None else 0
        with self._cond:
            return len(self._have), self.landed_bytes + live

    def wait_for(self, rel: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while rel not in self._have and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return rel in self._have


class AnnouncingManifest(Manifest):
    """A manifest whose every recorded file is also offered to this node's children."""

    def __init__(self, path: Path, source: str, held: Held) -> None:
        super().__init__(path, source)
        self.held = held

    def record(self, rel: str, size: int, etag: str, local: Path) -> None:
        super().record(rel, size, etag, local)
        self.held.add(rel, size)


class RelayServer(threading.Thread):
    """Serves this node's verified files to its children until each has said done.

    Bound before the node lists the store; :meth:`offer` hands it the tree once the
    listing is known (until then, a child's requests wait, with heartbeats)."""

    def __init__(self, port: int, key: bytes, protocol: str, rank: int, expect: Iterable[int],
                 wait: float, log: Log) -> None:
        super().__init__(daemon=True, name="relay-server")
        self.key, self.protocol, self.rank = key, protocol, rank
        self.root: Path | None = None
        self.listing: Mapping[str, int] = {}
        self.held = Held()
        self.expect = frozenset(expect)  # children's ranks
        self.wait, self.log = wait, log
        self.done: set[int] = set()
        self.connected: set[int] = set()
        self.let_go: set[int] = set()  # children dropped for going quiet
        self.started = time.monotonic()
        self.served = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._said: set[str] = set()  # refusals already logged (a stranger may retry)
        self._all_done = threading.Event()
        self._offered = threading.Event()
        self._pending: dict[socket.socket, float] = {}  # handshakes in progress: since
        self._children: dict[int, socket.socket] = {}
        self.sock = socket.create_server(("", port), reuse_port=False, backlog=64)
        self.sock.settimeout(0.5)
        self._closing = threading.Event()

    def offer(self, root: Path, listing: Mapping[str, int], held: Held) -> None:
        """The tree this node serves: files under ``root`` named in ``listing``, each as
        soon as ``held`` has it."""
        self.root, self.listing, self.held = root, listing, held
        self._offered.set()

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self._lock:
                if len(self._pending) >= MAX_PENDING:
                    # Full of handshakes nobody finishes: the oldest has had longest to
                    # prove itself, so it goes, and a child knocking now still gets in.
                    oldest = min(self._pending, key=self._pending.__getitem__)
                    del self._pending[oldest]
                    hang_up(oldest)
                    self._say(peer, f"more than {MAX_PENDING} handshakes at once: the oldest "
                              "closed")
                self._pending[conn] = time.monotonic()
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                             name="relay-conn").start()

    def finish(self, timeout: float) -> None:
        """Waits for every child to finish, then closes the port. A child that has not
        connected within CONNECT_WINDOW went to the store (or is gone): not waited for;
        one that goes quiet is dropped by its connection within SILENCE; nobody is
        waited for past ``timeout`` from now."""
        began = time.monotonic()
        while not self._all_done.wait(0.2):
            now = time.monotonic()
            with self._lock:
                still_taking = (self.expect - self.done) & self.connected
            if not still_taking and now - self.started > CONNECT_WINDOW:
                break
            if now - began > timeout:
                self.log.info(f"relay: stopped waiting for node(s) {sorted(still_taking)} "
                              f"after {timeout:g} s; they take the rest from the store")
                break
        self.close()

    def close(self) -> None:
        """Closes the port now (the node serves nothing after all: children that knock
        find no parent and use the store)."""
        self._closing.set()
        self._offered.set()  # wakes requests waiting for a tree: there is none
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            for conn in [*self._pending, *self._children.values()]:
                hang_up(conn)
        if self.is_alive():
            self.join(timeout=2)

    def _say(self, peer: Any, why: str) -> None:
        """Logs one refusal once per address and reason (the caller holds the lock)."""
        self.refused += 1
        said = f"relay: refused {peer[0]}: {why}"
        if said not in self._said:
            self._said.add(said)
            self.log.warn(said)

    def _refuse(self, peer: Any, why: str) -> None:
        with self._lock:
            self._say(peer, why)

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        wire = Wire(conn)
        rank: int | None = None
        try:
            try:
                rank = auth.accept(wire, self.key, self.protocol, self.rank, self.expect,
                                   time.monotonic() + HANDSHAKE)
            except auth.Refused as exc:
                self._refuse(peer, str(exc))
                return
            except (OSError, ValueError) as exc:
                with self._lock:
                    evicted = conn not in self._pending
                if not evicted:
                    why = "timed out" if isinstance(exc, TimeoutError) else "broken"
                    self._refuse(peer, f"handshake {why} (the whole of it has "
                                 f"{HANDSHAKE:g} s)")
                return
            with self._lock:
                self._pending.pop(conn, None)
                older = self._children.pop(rank, None)
                self._children[rank] = conn
                self.connected.add(rank)
            if older is not None:
                hang_up(older)  # the same child again: its newer connection counts
            self._requests(wire, peer, rank)
        except TimeoutError:
            if rank is not None:
                with self._lock:
                    self.let_go.add(rank)
                self.log.info(f"relay: node {rank} neither read nor asked for {SILENCE:g} s; "
                              "let go (it takes the rest from the store)")
        except (OSError, ValueError):
            return  # a child that went away; it falls back to the store itself
        finally:
            hang_up(conn)
            with self._lock:
                self._pending.pop(conn, None)
                if rank is not None and self._children.get(rank) is conn:
                    del self._children[rank]
            if rank is not None:
                self._mark_done(rank)  # finished or gone to the store: no need to wait

    def _requests(self, wire: Wire, peer: Any, rank: int) -> None:
        while True:
            request = wire.json(time.monotonic() + SILENCE)  # a quiet child frees its slot
            if request.get("done") is True:
                return
            wanted = request.get("get")
            if not isinstance(wanted, list) or len(wanted) > BATCH:
                self._refuse(peer, "a malformed request")
                return
            if not self._await(wire, self._offered.wait, "(listing)") or \
                    self._closing.is_set():
                return  # no tree to serve after all: the child uses the store
            outside = [rel for rel in wanted if not isinstance(rel, str)
                       or rel not in self.listing]
            if outside:
                self._refuse(peer, f"a path outside the job's tree: {str(outside[0])[:80]!r}")
                return
            for rel in wanted:
                self._send(wire, rel)

    def _await(self, wire: Wire, ready: Callable[[float], bool], what: str) -> bool:
        """Waits for ``ready``, telling the child at once and then every HEARTBEAT
        seconds that this node is alive, what it waits for and how far its own download
        has come (the child judges that progress, and leaves when it stops)."""
        while not ready(0):
            if self._closing.is_set():
                return False
            files, fetched = self.held.progress()
            wire.send_json({"wait": what, "files": files, "bytes": fetched,
                            "t": round(time.monotonic(), 3)}, SILENCE)
            if ready(HEARTBEAT):
                return True
        return True

    def _send(self, wire: Wire, rel: str) -> None:
        assert self.root is not None
        held = self.held
        if not self._await(wire, lambda t: held.wait_for(rel, t) or held.closed, rel) \
                or not held.has(rel):
            wire.send_json({"rel": rel, "missing": True}, SILENCE)
            return
        try:
            fh = open(self.root / rel, "rb")  # noqa: SIM115 - closed below
        except OSError:
            wire.send_json({"rel": rel, "missing": True}, SILENCE)
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            wire.send_json({"rel": rel, "size": size, "t": round(time.monotonic(), 3)},
                           SILENCE)
            left = size
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise OSError("file shrank while it was served")
                wire.send(chunk, SILENCE)  # a child that stops reading is found out
                left -= len(chunk)
        with self._lock:
            self.served += 1

    def _mark_done(self, rank: int) -> None:
        with self._lock:
            self.done.add(rank)
            if self.expect <= self.done:
                self._all_done.set()


def open_server(peers: Peers, log: Log) -> RelayServer | None:
    """This node's server for its children, listening (the tree comes later, by
    :meth:`RelayServer.offer`); None when it has no children or the port cannot open:
    the children then find no parent, or something that is not their parent, and use
    the store."""
    kids = children(peers.rank, len(peers.hosts))
    if not kids:
        return None
    port = peers.ports[peers.rank]
    try:
        server = RelayServer(port, peers.key, peers.protocol, peers.rank, kids, peers.wait,
                             log)
    except OSError as exc:
        log.warn(f"relay: cannot serve on port {port} ({exc.strerror}); node(s) {kids} "
                 "will fetch from the store")
        return None
    server.start()
    return server
