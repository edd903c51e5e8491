"""Peer-assisted fetch: the job's nodes pass the code directory down a tree, so the
object store sees about one copy instead of one per node.

Design (chosen by ``bench/peer_sim.py``, see bench/README.md): a 4-ary tree by rank;
node 0 fetches from the store, node i pulls from node ``(i-1)//4``, and every node
forwards files to its children as they land, so the job waits about as long as node 0
alone. Contract (each point is tested):

* **The store stays the source of truth.** Every node lists the prefix itself; a file
  from a peer is kept only when its size and MD5 match that listing's plain-MD5 ETag.
  Objects whose ETag is not a plain MD5 (multipart) come from the store.
* **Never worse than today.** A refused connection, a dead or slow parent, a
  mismatch: that node's remaining files come from the store, with the usual retries;
  a peer failure never fails the job.
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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

from .manifest import Manifest

if TYPE_CHECKING:
    from ..log import Log
    from .listing import RemoteObject

FAN_OUT = 4
MAGIC = b"BRLY1"
MAX_LINE = 64 * 1024
BATCH = 64  # files per request line
CHUNK = 1 << 20
CONNECT_WINDOW = 30.0  # seconds a child keeps trying its parent, and a parent waits for it


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
    """Serves this node's verified files to its children until each has said done."""

    def __init__(self, port: int, key: bytes, root: Path, listing: Mapping[str, int],
                 held: Held, expect: Iterable[int], wait: float, log: Log) -> None:
        super().__init__(daemon=True, name="relay-server")
        self.key, self.root, self.listing, self.held = key, root, listing, held
        self.expect = set(expect)  # children's ranks
        self.wait, self.log = wait, log
        self.done: set[int] = set()
        self.connected: set[int] = set()
        self.started = time.monotonic()
        self.served = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._all_done = threading.Event()
        self.sock = socket.create_server(("", port), reuse_port=False, backlog=64)
        self.sock.settimeout(0.5)
        self._closing = threading.Event()

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                             name="relay-conn").start()

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
        self._closing.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.join(timeout=2)

    def _refuse(self, peer: Any, why: str) -> None:
        with self._lock:
            self.refused += 1
        self.log.warn(f"relay: refused {peer[0]}: {why}")

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        conn.settimeout(self.wait + 30)
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

    def _send(self, conn: socket.socket, rel: str) -> None:
        if not self.held.wait_for(rel, self.wait):
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


def open_server(dest: Path, objects: list[RemoteObject], held: Held, peers_port: int,
                key: bytes, kids: list[int], wait: float, log: Log) -> Optional[RelayServer]:
    """This node's server for its children, started; None when the port cannot open
    (the children then find no parent and use the store)."""
    try:
        server = RelayServer(peers_port, key, dest, {o.rel: o.size for o in objects}, held,
                             kids, wait, log)
    except OSError as exc:
        log.warn(f"relay: cannot serve on port {peers_port} ({exc.strerror}); node(s) "
                 f"{kids} will fetch from the store")
        return None
    server.start()
    return server


def _read_json(reader: BinaryIO) -> dict[str, Any]:
    line = reader.readline(MAX_LINE + 1)
    if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ValueError("no complete request line")
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def pull(address: str, port: int, key: bytes, rank: int, objects: list[RemoteObject],
         root: Path, manifest: Manifest, timeout: float, log: Log) -> list[RemoteObject]:
    """Fetches ``objects`` (plain-MD5 ones) from the parent at ``address``, verifying
    each against the listing; returns those that must come from the store instead."""
    from .download import TMP_SUFFIX
    from .paths import SafeDirs

    dirs = SafeDirs(root)
    pending = list(objects)
    deadline = time.monotonic() + CONNECT_WINDOW
    pause = 0.1
    while True:  # the parent may still be listing: its port opens after that
        try:
            conn = socket.create_connection((address, port), timeout=10)
            break
        except OSError as exc:
            if time.monotonic() + pause > deadline:
                log.info(f"relay: parent {address}:{port} unreachable ({exc}); all from "
                         "the store")
                return pending
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    conn.settimeout(timeout)
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
        while pending:
            batch, pending = pending[:BATCH], pending[BATCH:]
            conn.sendall(json.dumps({"get": [o.rel for o in batch]}).encode() + b"\n")
            for obj in batch:
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
                digest = hashlib.md5(usedforsecurity=False)
                try:
                    with open(tmp, "wb") as out:
                        left = obj.size
                        while left > 0:
                            chunk = reader.read(min(CHUNK, left))
                            if not chunk:
                                raise OSError("the parent closed mid-file")
                            digest.update(chunk)
                            out.write(chunk)
                            left -= len(chunk)
                    if digest.hexdigest() != obj.md5:
                        raise _Mismatch(obj, "MD5 differs")
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, dest)  # verified: only now under its name
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                manifest.record(obj.rel, obj.size, obj.etag, dest)
        conn.sendall(b'{"done": true}\n')
    except (_Mismatch, OSError, ValueError) as exc:
        if isinstance(exc, _Mismatch):
            # A parent that sent one wrong byte is not asked for another.
            log.warn(f"relay: {exc.obj.rel} from the parent {address} does not match the "
                     f"store's listing ({exc}); this node fetches the rest from the store")
        else:
            log.info(f"relay: parent {address} failed ({exc}); the rest from the store")
        failed = [o for o in objects
                  if not manifest.unchanged(o.rel, o.size, o.etag, root / o.rel)]
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    return failed


class _Mismatch(Exception):
    def __init__(self, obj: RemoteObject, why: str) -> None:
        super().__init__(why)
        self.obj = obj
