"""The download engine reversed: a local tree to an object-store prefix.

Same core as downloads (:mod:`bootstrap.storage`): one event loop, up to
``BOOTSTRAP_DOWNLOAD_WORKERS`` requests in flight, object bytes in memory bounded by
a quarter of ``BOOTSTRAP_TRANSFER_MEMORY_MB`` (uploads run beside the training).
Files of at least the multipart threshold (and 5 MiB) stream as multipart uploads
in 5 MiB parts (larger past 50 GB: at most 10,000 parts), 8 in flight for a lone
file, fewer each when several share the budget (``LARGE_AT_ONCE``): each part is
read and hashed once, never the whole file in memory, and the upload is aborted on
failure, so no half object and no dangling upload is left behind.

Integrity: the engine computes each file's MD5 (and each part's) while reading it
and checks the ETag the store returns: a plain MD5 for one PUT, MD5-of-part-MD5s
``-N`` for a multipart upload (S3's and OBS's rule); a mismatch is retried, then an
error. On the wire each request is protected too: ``Content-MD5`` on the boto3
fallback, the SigV4-signed payload SHA-256 on the native backend.

Consistency while the job still writes (periodic sync): files modified in the last
``settle`` seconds are left for the next round, and a file whose size or mtime
changed while it was being uploaded is not recorded as synced, so it goes again.
Only files that changed since the last successful upload are sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import landing
from ..config.location import Location
from ..config.settings import Transfer
from ..errors import BootstrapError
from ..log import Log
from ..storage import retry
from ..storage.base import credentials, open_store
from ..storage.errors import TransientError
from .explain import explain
from .loop import ByteBudget, run_stoppable, run_workers
from .verify import multipart_etag

if TYPE_CHECKING:
    from ..storage.base import Store

MIN_PART = 5 * 2**20  # S3's (and OBS's) smallest part but the last
MAX_PARTS = 10_000  # S3's (and OBS's) most parts in one upload
PART_STREAMS = 8  # parts in flight per file; each is held whole (its SHA-256 is signed
# before it is sent), so parts stay small: 8 x 5 MiB measured as fast as 4 x 8 MiB on
# 4 x 64 MiB, with 85 instead of 130 MiB peak RSS
# Large files whose parts share the budget at once. Each file's window is held from its
# first part to its last, so with one window filling the budget files went one after
# another, their CreateMultipartUpload and Complete waits end to end: 4 x 64 MiB took
# 4.67 s (median of 5) against s5cmd's 2.17 s; with 3 windows of 4 parts 2.54 s, peak
# RSS 87 -> 133 MiB (order drawn at random; bench/README.md). A lone file keeps its 8.
LARGE_AT_ONCE = 3
MANIFEST_NAME = "complete.json"  # under <DLS_TRAIN_URL>/.bootstrap/<rank>/
OWNER_NAME = "owner.json"  # beside it: the job (and attempt) whose outputs these are
UPLOAD_MEMORY_SHARE = 4  # uploads run beside the training: a quarter of the budget
_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


@dataclass(slots=True)
class SyncState:
    """What the store holds of the outputs: ``done``, ``rel -> (size, mtime_ns, etag)``,
    uploaded to (or restored from) this node's own destination, whose ETags make the
    completion manifest; ``restored``, ``rel -> (size, mtime_ns)``, files a restart
    brought back from another node's tree (node 0's checkpoint on node 1), not sent
    again while unchanged and not this node's to list. Persisted beside the outputs."""

    path: Path | None = None
    done: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    restored: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> SyncState:
        state = cls(path=path)
        if path is not None:
            try:
                raw = json.loads(path.read_text())
                state.done = {k: (int(v[0]), int(v[1]), str(v[2]))
                              for k, v in raw["done"].items()}
                state.restored = {k: (int(v[0]), int(v[1])) for k, v in raw["restored"].items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError, KeyError):
                pass  # no record: everything is uploaded once more, which is safe
        return state

    def unchanged(self, rel: str, size: int, mtime: int) -> bool:
        """Whether the store already holds ``rel`` as it is on disk now."""
        return self.done.get(rel, (-1, -1, ""))[:2] == (size, mtime) or \
            self.restored.get(rel) == (size, mtime)

    def save(self) -> None:
        if self.path is None:
            return
        landing.write_text(self.path, json.dumps({"done": self.done, "restored": self.restored}))


@dataclass(slots=True)
class UploadStats:
    """What one upload pass did: files and bytes sent, unchanged files left alone, files
    skipped while still being written, retries."""

    files: int = 0
    bytes: int = 0
    unchanged: int = 0
    settling: int = 0
    retries: int = 0
    seconds: float = 0.0

    def fields(self) -> dict[str, float]:
        """The counts as JSON log fields."""
        return {"files": self.files, "bytes": self.bytes, "unchanged": self.unchanged,
                "settling": self.settling, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB uploaded, {self.unchanged} "
                f"unchanged, {self.settling} still being written")


def multipart(size: int, settings: Transfer) -> bool:
    """Whether a file of ``size`` bytes goes as a multipart upload."""
    return size >= max(settings.multipart_threshold, MIN_PART)


class Uploader:
    """Uploads files to one destination through one store, on the running loop."""

    def __init__(self, store: Store, dest: Location, settings: Transfer,
                 stats: UploadStats, journal: str | None = None, large_files: int = 1) -> None:
        self.store, self.dest, self.settings, self.stats = store, dest, settings, stats
        self.journal = journal  # where multipart uploads in flight are noted (outputs)
        self.large_files = large_files  # how many files of this batch go as multipart
        self.memory = max(settings.memory // UPLOAD_MEMORY_SHARE, MIN_PART)
        self._budget = ByteBudget(self.memory)

    def _on_retry(self, exc: BaseException) -> None:
        self.stats.retries += 1

    async def put_file(self, path: Path, key: str) -> tuple[int, str]:
        """Uploads one file; returns the bytes sent and the object's ETag."""
        size = os.stat(path).st_size
        if multipart(size, self.settings):
            return await self._multipart(path, key, size)
        await self._budget.acquire(size)
        try:
            data = _read(path, size) if size <= 1 << 20 else \
                await asyncio.to_thread(_read, path, size)
            return len(data), await self.put_bytes(key, data)
        finally:
            await self._budget.release(size)

    async def put_bytes(self, key: str, data: bytes) -> str:
        md5 = hashlib.md5(data, usedforsecurity=False)
        etag = ""

        async def put() -> None:
            nonlocal etag
            etag = await self.store.put(key, data, md5.digest())
            _check_etag(key, etag, md5.hexdigest())

        await retry.call_async(put, self.settings.retry_attempts,
                               self.settings.retry_deadline, self._on_retry)
        return etag or md5.hexdigest()

    async def delete(self, key: str) -> None:
        await retry.call_async(lambda: self.store.delete(key), self.settings.retry_attempts,
                               self.settings.retry_deadline, self._on_retry)

    async def _multipart(self, path: Path, key: str, size: int) -> tuple[int, str]:
        part_size = max(MIN_PART, -(-size // MAX_PARTS))  # past 50 GB, parts grow
        together = max(min(LARGE_AT_ONCE, self.large_files), 1)
        streams = max(min(PART_STREAMS, self.memory // (part_size * together)), 1)
        held = min(size, streams * part_size)
        marker = None
        if self.journal is not None:
            # Noted before it starts: a run killed mid-upload (the platform's grace ran
            # out) leaves this behind, and the next run aborts what it names.
            marker = f"{self.journal}uploads/{hashlib.md5(key.encode()).hexdigest()}"
            await self.put_bytes(marker, key.encode())
        await self._budget.acquire(held)
        etag = ""
        try:
            async def put() -> None:
                nonlocal etag
                md5s: list[bytes] = []
                etag = await self.store.put_parts(key, _parts(path, size, part_size, md5s),
                                                  part_size, streams)
                _check_etag(key, etag, multipart_etag(md5s))

            await retry.call_async(put, self.settings.retry_attempts,
                                   self.settings.retry_deadline, self._on_retry)
        finally:
            await self._budget.release(held)
        if marker is not None:
            await self.delete(marker)
        return size, etag


async def _parts(path: Path, size: int, part_size: int,
                 md5s: list[bytes]) -> AsyncIterator[tuple[bytes, bytes]]:
    """The file in parts, each read and hashed once in a thread (GIL released)."""
    with open(path, "rb", buffering=0) as fh:
        for start in range(0, size, part_size):
            want = min(part_size, size - start)
            data, md5 = await asyncio.to_thread(_read_part, fh, want)
            if len(data) != want:
                raise TransientError(f"{path} changed size while it was being uploaded")
            md5s.append(md5)
            yield data, md5


def _check_etag(key: str, etag: str, want: str) -> None:
    """A store's ETag that is an MD5 (or a multipart MD5) must be ours; others (SSE-KMS
    objects, servers of other lineages) say nothing and are accepted."""
    if _ETAG.match(etag) and ("-" in etag) == ("-" in want) and etag != want:
        raise TransientError(f"upload of {key!r} did not verify (ETag {etag}, local {want})")


def _read(path: Path, size: int) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        return fh.read()  # all of it, even if it grew since the scan: the state says so


def _read_part(fh: Any, n: int) -> tuple[bytes, bytes]:
    data = fh.read(n)
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def scan(root: Path) -> dict[str, tuple[int, int, Path]]:
    """Regular files under ``root`` (symlinks are not followed out of it)."""
    found: dict[str, tuple[int, int, Path]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in names:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except OSError:
                continue  # vanished while scanning: the next round sees the truth
            if not path.is_symlink() and os.path.isfile(path):
                found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, path)
    return found


def _transfer(dest: Location, settings: Transfer, work: Any) -> None:
    """Opens the store for ``dest`` and runs ``work(store)`` (a coroutine function) to
    the end; every failure becomes an :class:`UploadError` with one line."""

    endpoint = settings.endpoint
    try:
        store = open_store(settings, credentials(settings), dest.bucket)
        try:
            run_stoppable(work(store))
        finally:
            store.close()
    except BootstrapError:
        raise
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one clear line
        raise explain(exc, dest, endpoint.where, "upload") from None


def sync_tree(src: Path, dest: Location, settings: Transfer, log: Log,
              state: SyncState | None = None, settle: float = 0.0,
              journal: str | None = None) -> UploadStats:
    """Uploads the files of ``src`` that changed since ``state`` recorded them;
    ``journal`` (a key prefix) notes multipart uploads in flight there."""
    state = state or SyncState()
    stats = UploadStats()
    started = time.monotonic()
    now = time.time_ns()
    todo = []
    for rel, (size, mtime, path) in sorted(scan(src).items()):
        if state.unchanged(rel, size, mtime):
            stats.unchanged += 1
        elif settle > 0 and now - mtime < settle * 1e9:
            stats.settling += 1
        else:
            todo.append((rel, size, mtime, path))

    async def work(store: Store) -> None:
        uploader = Uploader(store, dest, settings, stats, journal, large_files=sum(
            1 for _, size, _, _ in todo if multipart(size, settings)))

        async def one(rel: str, size: int, mtime: int, path: Path) -> None:
            sent, etag = await uploader.put_file(path, dest.prefix + rel)
            try:
                st = path.stat()
            except OSError:
                return
            if (st.st_size, st.st_mtime_ns) == (size, mtime):  # unchanged while we sent it
                state.done[rel] = (size, mtime, etag)
                state.restored.pop(rel, None)
            stats.files += 1
            stats.bytes += sent

        queue = deque(todo)

        async def worker() -> None:
            while queue:
                await one(*queue.popleft())

        await run_workers(min(settings.workers, len(todo)), worker)

    try:
        if todo:
            _transfer(dest, settings, work)
    finally:
        state.save()
        stats.seconds = time.monotonic() - started
    return stats


def upload_file(path: Path, dest: Location, key: str, settings: Transfer) -> UploadStats:
    """One file to ``key`` (the log upload)."""
    stats = UploadStats()

    async def work(store: Store) -> None:
        stats.bytes, _ = await Uploader(store, dest, settings, stats).put_file(path, key)
        stats.files = 1

    _transfer(dest, settings, work)
    return stats


def put_objects(dest: Location, settings: Transfer, items: dict[str, bytes | Path]) -> None:
    """Small objects (``bytes``) and files (``Path``) to their keys in ``dest``'s bucket,
    in one store session, one after another (markers, records, an attempt's evidence)."""

    async def work(store: Store) -> None:
        uploader = Uploader(store, dest, settings, UploadStats())
        for key, body in items.items():
            if isinstance(body, Path):
                await uploader.put_file(body, key)
            else:
                await uploader.put_bytes(key, body)

    _transfer(dest, settings, work)


def begin_outputs(dest: Location, settings: Transfer, journal: str, log: Log,
                  owner: bytes | None = None) -> int:
    """The first duty of an output sync: withdraw the previous run's completion
    manifest (a reader must never trust it while this run writes), say which job writes
    here now (``owner``, the journal's ``owner.json``: what a restarted job's restore
    asks), and abort the multipart uploads the journal says a killed run of this node
    left dangling. Returns how many were aborted."""
    from ..storage.base import credentials
    from ..storage.signed import SignedClient

    aborted = 0

    async def work(store: Store) -> None:
        nonlocal aborted
        uploader = Uploader(store, dest, settings, UploadStats())
        await uploader.delete(journal + MANIFEST_NAME)
        if owner is not None:
            await uploader.put_bytes(journal + OWNER_NAME, owner)
        client = SignedClient(settings.endpoint, credentials(settings),
                              settings.connect_timeout, settings.read_timeout)
        try:
            notes, _ = await asyncio.to_thread(client.page, dest.bucket, journal + "uploads/",
                                               None)
            for note, size, _etag in notes:
                key = bytes(await store.get(note, size)).decode() if size else ""
                ids = await asyncio.to_thread(client.uploads, dest.bucket, key) if key else []
                for upload_id in ids:
                    await asyncio.to_thread(client.abort, dest.bucket, key, upload_id)
                    aborted += 1
                await uploader.delete(note)
        finally:
            client.close()

    _transfer(dest, settings, work)
    if aborted:
        log.info(f"output sync: aborted {aborted} multipart upload(s) a killed run of this "
                 "node left dangling")
    return aborted


def write_manifest(dest: Location, settings: Transfer, journal: str,
                   state: SyncState, exit_code: int) -> str:
    """The completion manifest, written last: every output object with its size and
    ETag, the command's exit code and the time. Returns its key."""
    body = {"exit_code": exit_code, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "objects": {dest.prefix + rel: {"size": size, "etag": etag}
                        for rel, (size, _mtime, etag) in sorted(state.done.items())}}
    key = journal + MANIFEST_NAME

    async def work(store: Store) -> None:
        await Uploader(store, dest, settings, UploadStats()).put_bytes(
            key, (json.dumps(body, indent=1) + "\n").encode())

    _transfer(dest, settings, work)
    return key
