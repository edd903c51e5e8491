"""Peer-assisted fetch: the job's nodes pass the code directory (and staged data) down
a tree, so the object store sees about one copy instead of one per node.

Design (chosen by ``bench/peer_sim.py`` with per-hop costs measured by
``bench/relay_hop.py``, see bench/README.md): a binary tree by rank; node 0 fetches
from the store, node i pulls from node ``(i-1)//2``, and every node
forwards files to its children as they land, so the job waits about as long as node 0
alone. Contract (each point is tested):

* **The store stays the source of truth.** Every node lists the prefix itself; a file
  from a peer is kept only when its size and checksum match that listing's ETag, as
  :mod:`.verify` checks every download: the MD5 of a plain ETag, or for a multipart
  ETag (``MD5(part MD5s)-N``) the same sum recomputed with the parts' lengths, which the
  node asks the store itself (HeadObject ``partNumber``). An object that cannot be
  checked (another ETag, a store that does not answer for parts) comes from the store.
* **Each node its own port, each end proven.** Node r serves on
  ``BOOTSTRAP_RELAY_PORT + 2r`` (its data tree on the next port), so nodes sharing a
  host (the host-network pools) each serve their own children. Both ends prove
  themselves with :mod:`bootstrap.cluster.auth` (a key per protocol, derived from the
  store's secret key and the job's id; the server first, its rank bound in): a child
  talks only to its parent, a server only to its children.
* **Never worse than today, every wait bounded** (the README's relay table lists each
  bound): a refused connection, a listener that is not the parent, a handshake not
  done within HANDSHAKE seconds, a parent silent for SILENCE seconds, a parent whose
  own progress (files and bytes landed, carried by its heartbeats) has not moved for
  STALL seconds of its own clock, a parent serving slower than the store would
  (``Pace``), a mismatch: that node's remaining files come from the store, with the
  usual retries; a peer failure never fails the job. A child that itself falls behind
  (stopped, starved of CPU) sees it in the parent's clock stamps and does not blame the
  parent. A parent drops a child that has not read or asked for SILENCE seconds, and
  waits for its children, once its own fetch is done, only while they make progress.
* **Open early.** A node binds its port before it lists the store, so a child knocking
  finds it as soon as the node's process has started, however long the listing takes;
  requests wait (with heartbeats) until the node has its listing.
* **Only the job's nodes, only the job's files.** Requests name files of this tree's
  listing only (anything else is refused, logged, and the connection closed); lines
  are capped, handshakes in progress are capped at MAX_PENDING (a new one evicts the
  oldest, so strangers holding slots cannot starve a child), files stream from disk in
  1 MiB chunks.
* Bytes on the wire are not encrypted: they are the code the nodes read from the store
  over the same kind of network, integrity comes from the store's listing, and
  confidentiality is the job network's (the platform's VPC), as for the engines' own
  traffic (NCCL, gloo). The ports are open only during the fetch and closed before
  the command starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..cluster import auth
from ..cluster.wire import Wire
from ..errors import ConfigError
from .manifest import Manifest
from .verify import Layout, Verifier

if TYPE_CHECKING:
    from ..config.platform import Cluster
    from ..config.settings import Settings
    from ..log import Log
    from .listing import RemoteObject
    from .location import Location

FAN_OUT = 2  # as fast as 4 on 25 Gbit/s, faster on slower links (bench/README.md)
PROTOCOLS = ("relay-code", "relay-data")  # one derived key and one port each
BATCH = 64  # files per request line
CHUNK = 1 << 20
MAX_PENDING = 16  # handshakes in progress at once; proven children do not count
CONNECT_WINDOW = 30.0  # seconds a child keeps trying its parent, and a parent waits for it
HANDSHAKE = 5.0  # seconds for the whole handshake, on each end
HEARTBEAT = 2.0  # a parent waiting on its own download says so (with its progress) this often
SILENCE = 10.0  # seconds without a byte (either way): the other end is stuck
STALL = 20.0  # seconds of the parent's clock in which its own progress did not move
LAG = 1.0  # seconds behind the parent's stamps: this node, not the parent, is slow
# A parent slower than this over a PACE_WINDOW of its active time (bytes or files) is
# slower than the store would be: the rest comes from there. Both floors sit well below
# what one store connection gives (tens of MB/s, tens of small objects per second).
MIN_BYTES_PER_S = 2 << 20
MIN_FILES_PER_S = 20.0
PACE_WINDOW = 5.0


def parent(rank: int) -> Optional[int]:
    return None if rank == 0 else (rank - 1) // FAN_OUT


def children(rank: int, size: int) -> list[int]:
    return [c for c in range(rank * FAN_OUT + 1, rank * FAN_OUT + FAN_OUT + 1) if c < size]


def port_of(base: int, rank: int, protocol: str) -> int:
    """Where node ``rank`` serves ``protocol``: two ports a node, code then data."""
    return base + 2 * rank + PROTOCOLS.index(protocol)


@dataclass(frozen=True)
class Peers:
    """Where this node sits in the job's relay tree for one protocol, and its key."""

    rank: int
    hosts: tuple[str, ...]  # by rank
    ports: tuple[int, ...]  # by rank: where each node serves this protocol
    key: bytes
    protocol: str
    wait: float  # seconds at most a parent waits for children still taking files


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections (a relay port there may be taken by
    any client socket on the host)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_conflict(base: int, cluster: Cluster, ephemeral: tuple[int, int]) -> Optional[str]:
    """Why the job's relay ports (every node's code and data port) cannot be used, or
    None: they must stay clear of MASTER_PORT, the nodes' own ports in the contract
    and the ephemeral range, and fit under 65536."""
    taken = {m.port: f"node {m.rank}'s port in the job's host list" for m in cluster.nodes}
    taken[cluster.master.port] = "the engines' MASTER_PORT"
    top = base + 2 * cluster.size - 1
    if top > 65535:
        return f"the ports {base}-{top} (two a node) go past 65535"
    for port in range(base, top + 1):
        if port in taken:
            return f"port {port} (node {(port - base) // 2}'s) is {taken[port]}"
        if ephemeral[0] <= port <= ephemeral[1]:
            return (f"port {port} (node {(port - base) // 2}'s) is in the ephemeral range "
                    f"{ephemeral[0]}-{ephemeral[1]}, where outgoing connections take ports")
    return None


def plan(settings: Settings, url: Location, protocol: str, log: Log) -> Optional[Peers]:
    """This node's place in the relay tree, when peer-assisted fetch applies
    (BOOTSTRAP_PEER_FETCH): a remote tree, several nodes, static keys every node shares
    (the proofs are derived from them) and ports clear of the job's others; else None,
    and the log says why when it was asked for. A port conflict with the switch set to
    ``on`` is a usage error (exit 2); under ``auto`` the relay stays off and says why."""
    from ..config.settings import PEER_FETCH_NODES

    cluster, mode = settings.cluster.layout, settings.cluster.peer_fetch
    if mode == "off" or not url.is_remote or cluster.size == 1:
        return None
    if mode == "auto" and cluster.size < PEER_FETCH_NODES:
        return None
    base = settings.cluster.relay_port
    conflict = port_conflict(base, cluster, ephemeral_ports())
    if conflict is not None:
        fix = (f"BOOTSTRAP_RELAY_PORT={base} leaves no room for {cluster.size} nodes: "
               f"{conflict}; choose another base (node r serves on base + 2r and base + 2r + 1)")
        if mode == "on":
            raise ConfigError(fix)
        log.warn(f"relay: off: {fix}")
        return None
    creds = settings.transfer.credentials
    if creds is None or creds.token:
        log.info("relay: off: the nodes hold no shared static keys (a role or a session "
                 "token), so membership cannot be proven; every node fetches from the store")
        return None
    return Peers(cluster.rank, tuple(m.host for m in cluster.nodes),
                 tuple(port_of(base, r, protocol) for r in range(cluster.size)),
                 auth.derive(creds.secret_key, cluster.job_id, protocol), protocol,
                 min(settings.cluster.peer_timeout, 300.0))


class Held:
    """The files this node holds, verified; waiters wake when one lands. ``progress`` is
    what the heartbeats tell children: files held, and a count that grows with every
    byte landed or in flight (the download's running count; only its movement counts)."""

    def __init__(self) -> None:
        self._have: set[str] = set()
        self._cond = threading.Condition()
        self.closed = False  # no more files will land here
        self.landed_bytes = 0
        self.live_bytes: Optional[Callable[[], int]] = None  # the download's running count

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
        self.root: Optional[Path] = None
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
                    _hang_up(oldest)
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
                _hang_up(conn)
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
        rank: Optional[int] = None
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
                _hang_up(older)  # the same child again: its newer connection counts
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
            _hang_up(conn)
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


def _hang_up(conn: socket.socket) -> None:
    """Ends a connection another thread may be blocked on (``close`` alone would not
    wake its ``recv``)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()


def open_server(peers: Peers, log: Log) -> Optional[RelayServer]:
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
        self.paused_at: Optional[float] = None

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
        self.offset: Optional[float] = None  # the least (our clock - theirs) seen
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


def pull(peers: Peers, objects: list[RemoteObject], layouts: Mapping[str, Layout], root: Path,
         manifest: Manifest, log: Log, server: Optional[int] = None) -> list[RemoteObject]:
    """Fetches ``objects`` from this node's parent (or node ``server``), verifying each
    against the listing (plain MD5, or multipart with its parts in ``layouts``);
    returns those that must come from the store instead."""
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
        failed = _receive(wire, list(objects), layouts, root, manifest)
        wire.send(b'{"done":true}\n', SILENCE)
    except (_Mismatch, _Slow, _Stalled, auth.Refused, OSError, ValueError) as exc:
        if isinstance(exc, _Mismatch):
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
        _hang_up(conn)
    return failed


def _connect(address: str, port: int, log: Log) -> Optional[socket.socket]:
    """The connection to the parent, retried for CONNECT_WINDOW (its process may start
    later than ours); None when it never answered."""
    deadline = time.monotonic() + CONNECT_WINDOW
    pause = 0.1
    while True:
        try:
            return socket.create_connection((address, port), timeout=HANDSHAKE)
        except OSError as exc:
            if time.monotonic() + pause > deadline:
                log.info(f"relay: parent {address}:{port} unreachable ({exc}); all from "
                         "the store")
                return None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _receive(wire: Wire, pending: list[RemoteObject], layouts: Mapping[str, Layout],
             root: Path, manifest: Manifest) -> list[RemoteObject]:
    """Asks for ``pending`` in batches and keeps each file that verifies; returns the
    ones the parent said it does not have. Raises on anything else, and when a bound
    of the module's contract is crossed."""
    from .download import TMP_SUFFIX
    from .paths import SafeDirs

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
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
            check = Verifier(obj, layouts.get(obj.rel))
            try:
                with open(tmp, "wb") as out:
                    left = obj.size
                    while left > 0:
                        chunk = wire.chunk(min(CHUNK, left), time.monotonic() + SILENCE)
                        check.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                        pace.add(len(chunk))
                        if pace.slow():
                            raise _Slow()
                if not check.matches():
                    raise _Mismatch(obj, check.why_not())
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)  # verified: only now under its name
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            manifest.record(obj.rel, obj.size, obj.etag, dest)
            pace.add(0, files=1)
            if pace.slow():
                raise _Slow()
    return failed


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
