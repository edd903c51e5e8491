"""Peer-assisted fetch: the job's nodes pass the code directory down a tree, so the
object store sees about one copy instead of one per node.

Design (chosen by ``bench/peer_sim.py`` with per-hop costs measured by
``bench/relay_hop.py``, see bench/README.md): a binary tree by rank; node 0 fetches
from the store, node i pulls from node ``(i-1)//2``, and every node
forwards files to its children as they land, so the job waits about as long as node 0
alone. Contract (each point is tested):

* **The store stays the source of truth.** Every node lists the prefix itself; a file
  from a peer is kept only when its size and checksum match that listing's ETag: the
  MD5 of a plain ETag, or for a multipart ETag (``MD5(part MD5s)-N``) the same sum
  recomputed with part 1's length, which the node asks the store itself (HeadObject
  ``partNumber=1``) and accepts only when N equal parts of it make the object's size.
  An object that cannot be checked (another ETag, a store that does not answer for
  parts) comes from the store.
* **Never worse than today.** A refused connection, a port held by something else
  (no greeting within HANDSHAKE seconds), a parent silent for SILENCE seconds (a live
  parent waiting on its own download says so every HEARTBEAT seconds), a parent slower
  than the store would be (``Pace``), a mismatch: that node's remaining files come from
  the store, with the usual retries; a peer failure never fails the job.
* **Open early.** A node binds its port before it lists the store, so a child knocking
  finds it as soon as the node's process has started, however long the listing takes;
  requests wait (with heartbeats) until the node has its listing.
* **Only the job's nodes, only the job's files.** The server sends a fresh nonce; the
  client answers ``HMAC(key, nonce|rank)``, the key being ``HMAC(secret key, job id)``:
  whoever could read the bucket anyway. Requests name files of this tree's listing
  only (anything else is refused, logged, and the connection closed); request lines are
  capped, connections time out, files stream from disk in 1 MiB chunks.
* Bytes on the wire are not encrypted: they are the code the nodes read from the store
  over the same kind of network, integrity comes from the store's listing, and
  confidentiality is the job network's (the platform's VPC), as for the engines' own
  traffic (NCCL, gloo). The port (``BOOTSTRAP_RELAY_PORT``, 29611) is open only during
  the fetch and closed before the command starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

from .manifest import Manifest

if TYPE_CHECKING:
    import io

    from ..log import Log
    from .listing import RemoteObject

FAN_OUT = 2  # as fast as 4 on 25 Gbit/s, faster on slower links (bench/README.md)
MAGIC = b"BRLY1"
MAX_LINE = 64 * 1024
BATCH = 64  # files per request line
CHUNK = 1 << 20
MAX_CONNECTIONS = 16  # served at once; each holds a thread and at most a line and a chunk
CONNECT_WINDOW = 30.0  # seconds a child keeps trying its parent, and a parent waits for it
HANDSHAKE = 5.0  # seconds for the greeting and the answer to a proof
HEARTBEAT = 2.0  # a parent waiting on its own download says so this often
SILENCE = 10.0  # seconds without a byte or a heartbeat: the parent is stuck
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


def job_key(secret_key: str, job_id: str) -> bytes:
    """The key both ends derive from what every node of the job holds."""
    return hmac.new(secret_key.encode(), f"bootstrap-relay/1|{job_id}".encode(),
                    hashlib.sha256).digest()


def proof(key: bytes, nonce: str, rank: int) -> str:
    return hmac.new(key, f"{nonce}|{rank}".encode(), hashlib.sha256).hexdigest()


class Held:
    """The files this node holds, verified; waiters wake when one lands."""

    def __init__(self) -> None:
        self._have: set[str] = set()
        self._cond = threading.Condition()
        self.closed = False  # no more files will land here

    def add(self, rel: str) -> None:
        with self._cond:
            self._have.add(rel)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def has(self, rel: str) -> bool:
        with self._cond:
            return rel in self._have

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
        self.held.add(rel)


class RelayServer(threading.Thread):
    """Serves this node's verified files to its children until each has said done.

    Bound before the node lists the store; :meth:`offer` hands it the tree once the
    listing is known (until then, a child's requests wait, with heartbeats)."""

    def __init__(self, port: int, key: bytes, expect: Iterable[int], wait: float,
                 log: Log) -> None:
        super().__init__(daemon=True, name="relay-server")
        self.key = key
        self.root: Optional[Path] = None
        self.listing: Mapping[str, int] = {}
        self.held = Held()
        self.expect = set(expect)  # children's ranks
        self.wait, self.log = wait, log
        self.done: set[int] = set()
        self.connected: set[int] = set()
        self.started = time.monotonic()
        self.served = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._all_done = threading.Event()
        self._offered = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._flooded = False
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
            if not self._slots.acquire(blocking=False):
                conn.close()  # a flood: a node has 2 children, a few retries at most
                if not self._flooded:  # one line, not one per connection
                    self._flooded = True
                    self._refuse(peer, f"more than {MAX_CONNECTIONS} connections at once")
                continue
            threading.Thread(target=self._serve_in_slot, args=(conn, peer), daemon=True,
                             name="relay-conn").start()

    def _serve_in_slot(self, conn: socket.socket, peer: Any) -> None:
        try:
            self._serve(conn, peer)
        finally:
            self._slots.release()

    def finish(self, timeout: float) -> None:
        """Waits for every child to finish, then closes the port. A child that has not
        connected within CONNECT_WINDOW went to the store (or is gone): not waited for;
        nor is anyone past ``timeout``."""
        while not self._all_done.wait(0.2):
            now = time.monotonic()
            with self._lock:
                waiting_for_strangers = not (self.expect - self.done) & self.connected
            if now - self.started > timeout or (
                    waiting_for_strangers and now - self.started > CONNECT_WINDOW):
                break
        self.close()

    def close(self) -> None:
        """Closes the port now (the node serves nothing after all: children that knock
        find no parent and use the store)."""
        self._closing.set()
        self._offered.set()  # wakes requests waiting for a tree: there is none
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.is_alive():
            self.join(timeout=2)

    def _refuse(self, peer: Any, why: str) -> None:
        with self._lock:
            self.refused += 1
        self.log.warn(f"relay: refused {peer[0]}: {why}")

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        conn.settimeout(HANDSHAKE)
        rank: Any = None
        try:
            nonce = secrets.token_hex(16)
            conn.sendall(MAGIC + b" " + nonce.encode() + b"\n")
            reader = conn.makefile("rb")
            hello = _read_json(reader)
            rank = hello.get("rank") if isinstance(hello, dict) else None
            if not isinstance(rank, int) or isinstance(rank, bool) or \
                    not hmac.compare_digest(str(hello.get("proof", "")),
                                            proof(self.key, nonce, rank)):
                rank = None
                self._refuse(peer, "no proof of the job's key")
                return
            conn.sendall(b"OK\n")
            conn.settimeout(self.wait + 30)  # a child between requests is busy writing
            with self._lock:
                self.connected.add(rank)
            while True:
                request = _read_json(reader)
                if request.get("done") is True:
                    self._mark_done(rank)
                    return
                wanted = request.get("get")
                if not isinstance(wanted, list) or len(wanted) > BATCH:
                    self._refuse(peer, "a malformed request")
                    return
                if not self._await(conn, self._offered.wait, "(listing)") or \
                        self._closing.is_set():
                    return  # no tree to serve after all: the child uses the store
                for rel in wanted:
                    if not isinstance(rel, str) or rel not in self.listing:
                        self._refuse(peer, f"a path outside the job's tree: {str(rel)[:80]!r}")
                        return
                    self._send(conn, rel)
        except (OSError, ValueError):
            return  # a child that went away; it falls back to the store itself
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if rank is not None and rank in self.expect:
                self._mark_done(rank)  # finished or gone to the store: no need to wait

    def _await(self, conn: socket.socket, ready: Callable[[float], bool], what: str) -> bool:
        """Waits up to ``self.wait`` for ``ready``, telling the child at once and then
        every HEARTBEAT seconds that this node is alive and waiting on its own download
        (so the child neither takes it for stuck nor judges its pace by the store's)."""
        if ready(0):
            return True
        deadline = time.monotonic() + self.wait
        while True:
            conn.sendall(json.dumps({"wait": what}).encode() + b"\n")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if ready(min(HEARTBEAT, left)):
                return True

    def _send(self, conn: socket.socket, rel: str) -> None:
        assert self.root is not None
        held = self.held
        if not self._await(conn, lambda t: held.wait_for(rel, t) or held.closed, rel) \
                or not held.has(rel):
            conn.sendall(json.dumps({"rel": rel, "missing": True}).encode() + b"\n")
            return
        path = self.root / rel
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            conn.sendall(json.dumps({"rel": rel, "missing": True}).encode() + b"\n")
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            conn.sendall(json.dumps({"rel": rel, "size": size}).encode() + b"\n")
            left = size
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise OSError("file shrank while it was served")
                conn.sendall(chunk)
                left -= len(chunk)
        with self._lock:
            self.served += 1

    def _mark_done(self, rank: int) -> None:
        with self._lock:
            self.done.add(rank)
            if self.expect <= self.done:
                self._all_done.set()


def open_server(port: int, key: bytes, kids: list[int], wait: float,
                log: Log) -> Optional[RelayServer]:
    """This node's server for its children, listening (the tree comes later, by
    :meth:`RelayServer.offer`); None when the port cannot open: the children then find
    no parent, or something else that does not greet them, and use the store."""
    try:
        server = RelayServer(port, key, kids, wait, log)
    except OSError as exc:
        log.warn(f"relay: cannot serve on port {port} ({exc.strerror}); node(s) {kids} "
                 "will fetch from the store")
        return None
    server.start()
    return server


class Pace:
    """Is the parent slower than the store would be? Judged over windows of PACE_WINDOW
    seconds of the parent's active time; a window restarts whenever the parent says it
    is waiting on its own download (that wait is the store's pace, not the parent's)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self.since, self.bytes, self.files = self.clock(), 0, 0

    def add(self, nbytes: int, files: int = 0) -> None:
        self.bytes += nbytes
        self.files += files

    def slow(self) -> bool:
        """True when the window just ended fell below both floors; each full window
        starts a new one, so a parent that slows down late is caught too."""
        spent = self.clock() - self.since
        if spent < PACE_WINDOW:
            return False
        too_slow = self.bytes < MIN_BYTES_PER_S * spent and self.files < MIN_FILES_PER_S * spent
        self.restart()
        return too_slow


def _read_json(reader: BinaryIO) -> dict[str, Any]:
    line = reader.readline(MAX_LINE + 1)
    if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ValueError("no complete request line")
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def pull(address: str, port: int, key: bytes, rank: int, objects: list[RemoteObject],
         part_sizes: Mapping[str, int], root: Path, manifest: Manifest, patience: float,
         log: Log) -> list[RemoteObject]:
    """Fetches ``objects`` from the parent at ``address``, verifying each against the
    listing (plain MD5, or multipart with its part size in ``part_sizes``); returns those
    that must come from the store instead. ``patience`` is how long the parent may wait
    for one file (the job's peer wait: the parent's own bound)."""
    conn = _connect(address, port, log)
    if conn is None:
        return list(objects)
    failed: list[RemoteObject] = []
    try:
        reader = conn.makefile("rb")
        greeting = reader.readline(200).split()
        if len(greeting) != 2 or greeting[0] != MAGIC:
            raise ValueError("not a bootstrap relay")
        nonce = greeting[1].decode()
        conn.sendall(json.dumps({"rank": rank, "proof": proof(key, nonce, rank)}).encode()
                     + b"\n")
        if reader.readline(10) != b"OK\n":
            raise ValueError("the parent refused our proof")
        conn.settimeout(SILENCE)
        failed = _receive(conn, reader, list(objects), part_sizes, root, manifest,
                          patience + HEARTBEAT)
        conn.sendall(b'{"done": true}\n')
    except (_Mismatch, _Slow, OSError, ValueError) as exc:
        if isinstance(exc, _Mismatch):
            # A parent that sent one wrong byte is not asked for another.
            log.warn(f"relay: {exc.obj.rel} from the parent {address} does not match the "
                     f"store's listing ({exc}); this node fetches the rest from the store")
        else:
            log.info(f"relay: parent {address} failed ({exc or type(exc).__name__}); the "
                     "rest from the store")
        failed = [o for o in objects
                  if not manifest.unchanged(o.rel, o.size, o.etag, root / o.rel)]
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    return failed


def _connect(address: str, port: int, log: Log) -> Optional[socket.socket]:
    """The connection to the parent, retried for CONNECT_WINDOW (its process may start
    later than ours); None when it never answered."""
    deadline = time.monotonic() + CONNECT_WINDOW
    pause = 0.1
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=HANDSHAKE)
            conn.settimeout(HANDSHAKE)  # a port held by something that never greets us
            return conn
        except OSError as exc:
            if time.monotonic() + pause > deadline:
                log.info(f"relay: parent {address}:{port} unreachable ({exc}); all from "
                         "the store")
                return None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _receive(conn: socket.socket, reader: io.BufferedReader, pending: list[RemoteObject],
             part_sizes: Mapping[str, int], root: Path, manifest: Manifest,
             patience: float) -> list[RemoteObject]:
    """Asks for ``pending`` in batches and keeps each file that verifies; returns the
    ones the parent said it does not have. Raises on anything else, and when the parent
    says it is waiting for one file longer than ``patience`` (its own bound)."""
    from .download import TMP_SUFFIX
    from .paths import SafeDirs

    dirs = SafeDirs(root)
    pace = Pace()
    failed: list[RemoteObject] = []
    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        conn.sendall(json.dumps({"get": [o.rel for o in batch]}).encode() + b"\n")
        for obj in batch:
            header = _read_json(reader)
            waiting_since = time.monotonic()
            while "wait" in header:  # alive, waiting on its own download
                if time.monotonic() - waiting_since > patience:
                    raise ValueError(f"the parent kept waiting for {obj.rel} over {patience:g} s")
                pace.restart()
                header = _read_json(reader)
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
            check = Verifier(obj, part_sizes.get(obj.rel))
            try:
                with open(tmp, "wb") as out:
                    left = obj.size
                    while left > 0:
                        chunk = reader.read1(min(CHUNK, left))  # what has come: paced as it comes
                        if not chunk:
                            raise OSError("the parent closed mid-file")
                        check.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                        pace.add(len(chunk))
                        if pace.slow():
                            raise _Slow()
                if not check.matches():
                    raise _Mismatch(obj, "MD5 differs")
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


def uniform_part_size(size: int, parts: int, first: int, reported: Optional[int]) -> bool:
    """Can ``first`` (part 1's length, from the store) split ``size`` bytes into the
    ETag's ``parts`` equal parts (the last one shorter), as every common uploader does?
    Only then can a peer's bytes be checked against a multipart ETag."""
    return reported in (None, parts) and first > 0 and \
        first * (parts - 1) < size <= first * parts


class Verifier:
    """The store's checksum of one object, recomputed over bytes as they arrive: the MD5
    (a plain ETag) or, given the part size, the MD5 of the parts' MD5s with ``-N`` (a
    multipart ETag, as S3 and OBS compute it)."""

    def __init__(self, obj: RemoteObject, part_size: Optional[int]) -> None:
        self.obj, self.part_size = obj, part_size
        self._part = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        if self.part_size is None:
            self._part.update(data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.part_size:
                self._digests.append(self._part.digest())
                self._part, self._in_part = hashlib.md5(usedforsecurity=False), 0

    def matches(self) -> bool:
        if self.part_size is None:
            return self._part.hexdigest() == self.obj.md5
        digests = self._digests + ([self._part.digest()] if self._in_part else [])
        combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return f"{combined}-{len(digests)}" == self.obj.etag


class _Slow(Exception):
    def __str__(self) -> str:
        return (f"slower than {MIN_BYTES_PER_S >> 20} MiB/s and {MIN_FILES_PER_S:g} files/s "
                f"over {PACE_WINDOW:g} s")


class _Mismatch(Exception):
    def __init__(self, obj: RemoteObject, why: str) -> None:
        super().__init__(why)
        self.obj = obj
