"""The download engine: an object-store prefix to a local tree, in parallel, atomically.

Contract (each point is tested):

* Listing is paginated ListObjectsV2 (:mod:`bootstrap.transfer.listing`, over
  :mod:`bootstrap.storage.signed`); a listing that repeats a continuation token or
  a key, or exceeds ``BOOTSTRAP_MAX_FILES``, is refused rather than followed forever.
* Whole objects go through one :class:`~bootstrap.storage.base.Store` (native obstore,
  else boto3) from one event loop: up to ``BOOTSTRAP_DOWNLOAD_WORKERS`` requests in
  flight (hundreds: a store tens of milliseconds away needs them), and never more
  than ``BOOTSTRAP_TRANSFER_MEMORY_MB`` of object bytes held in memory at once. A tree
  with few of them (``THREADED_SMALLS``, all within the budget, the backend left to
  ``auto``) fetches them on threads over the signed client instead, a thread each beside
  the ranges' threads: no event loop, no native core, ~80 ms less of a job's start
  (bench/README.md), and all of them in flight at once as on the loop.
* Every object is checked against the store's sum (:mod:`.verify`): the MD5 of a plain
  ETag, or for a multipart ETag the parts' MD5s with their lengths from the store (for
  a large object asked while its first range already runs: that round trip is off the
  critical path; see :func:`.plan.ahead`; equal parts from part 1's length alone
  are a guess, which a body that does not match has every part's length asked to
  overrule before it counts as damaged: :meth:`.verify.Doubts.explained`); an
  object the store encrypts on its side (an ETag of an MD5's shape that is not its MD5:
  asked of the store when a sum differs, :meth:`.verify.Doubts.explained`) or an ETag that is
  neither (a store that does not answer for parts) leaves the size alone to check, and
  the fetch says how many objects that was (``unverified``). Objects smaller than the
  multipart threshold are one GET each, verified in memory before a byte is written.
  Larger ones are split into byte ranges (at most ``RANGE_STREAMS`` at once, on threads,
  read into reused buffers: measured faster than the native library's streams), aligned to
  the object's parts, written in place with ``pwrite`` (one writer a file at a time, in
  :func:`bootstrap.landing.write_all`'s slices), the objects' ranges taken in turn; each
  part (the whole object, for a plain MD5) is hashed in order as its contiguous prefix
  grows, parts in parallel: a range that starts at its part's hashed prefix is hashed from
  its buffer as it arrives, a later one read back from the page cache once the prefix
  reaches it. A range cut short (a reset, a stall, a short body) is asked again from the
  byte it reached, its sum continued. A body that does not match is fetched again whole,
  up to the retry attempts, and never lands. A range answer is accepted when its
  Content-Range is the one asked for, whatever its 2xx status (``rclone serve s3`` answers
  200); a server that ignores Range has its large objects streamed whole instead, never
  written at the wrong offsets.
* Every file lands under a hidden temporary name beside its destination and is renamed
  into place only once verified (:mod:`bootstrap.landing`). A killed or failed run never
  leaves a truncated file under a final name; temporaries of a killed run are swept by the
  next one. SIGTERM/SIGINT/SIGHUP stop the transfers, remove the temporaries and surface
  as :class:`~bootstrap.errors.Terminated`.
* Transient failures are retried (:mod:`bootstrap.storage.retry`); anything else
  becomes a :class:`DownloadError` with one line saying what to fix (exit 127).
* A rerun skips files whose size and ETag match the manifest.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import landing
from ..log import Log
from ..storage import retry
from .listing import RemoteObject
from .loop import ByteBudget, run_stoppable, run_threads, run_workers
from .manifest import Manifest
from .paths import SafeDirs
from .plan import AskParts, Work, ahead, cut, in_turn, threads_for
from .ranges import LargeObjects
from .verify import Doubts, Layout, SumDiffers, body_matches, check_body, checkable

if TYPE_CHECKING:
    from .source import Remote

RANGE_STREAMS = 8  # concurrent ranged GETs of large objects (measured: 8 beat 32)
# At most this many whole objects go on threads, one each (no loop): the crossing point,
# measured (bench/README.md, 2026-12-02): threads ahead at 10 and 24 files, even at 48,
# the loop ahead from 96.
THREADED_SMALLS = 32
CHUNK = 1 << 20  # each range thread's buffer
ASKERS = 32  # threads asking the store why a sum differs, for the event loop's objects


@dataclass(slots=True)
class Stats:
    """What one fetch did, counted as it goes: files and bytes fetched, unchanged files
    skipped, retries, files a peer passed on, files checked by size only."""

    files: int = 0
    bytes: int = 0
    skipped: int = 0
    total_files: int = 0
    total_bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    backend: str = ""
    peer_files: int = 0  # files a parent node passed on (peer-assisted fetch)
    unverified: int = 0  # fetched, but with no sum to check but the size (see .verify)

    def fields(self) -> dict[str, int]:
        """The counts as JSON log fields (what tests and log pipelines read)."""
        return {"files": self.files, "bytes": self.bytes, "skipped": self.skipped,
                "total_files": self.total_files, "retries": self.retries,
                "peer_files": self.peer_files, "unverified": self.unverified}

    def progress(self, elapsed: float) -> str:
        """Where a fetch under way stands, ``elapsed`` seconds in."""
        todo = max(self.total_bytes - self.bytes, 0)
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        eta = f"{todo / rate:.0f} s" if rate > 0 else "?"
        return (f"{self.files + self.skipped}/{self.total_files} files, "
                f"{self.bytes / 2**20:.0f}/{self.total_bytes / 2**20:.0f} MiB, "
                f"{rate / 2**20:.1f} MiB/s, ETA {eta}")

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 2**20 if self.seconds > 0 else 0.0
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB fetched, "
                f"{self.skipped} unchanged skipped, {rate:.1f} MiB/s, {self.retries} retries"
                + (f", {self.unverified} checked by size only" if self.unverified else "")
                + (f", via {self.backend}" if self.backend else ""))


class Engine:
    """Runs the planned transfers; see the module's contract. Large objects' ranges run
    on threads, always (:func:`~.loop.run_threads`, :mod:`.ranges`); whole objects on one
    event loop in the calling thread through the store, unless they are few (see
    :meth:`_threaded`), when they ride the same threads over the signed client and no
    loop is started. ``source`` is the store's one face (it reads and answers HEADs);
    ``layouts``: multipart objects' parts already known."""

    def __init__(self, source: Remote, dest: Path, manifest: Manifest, log: Log,
                 label: str = "fetch", stats: Stats | None = None,
                 layouts: dict[str, Layout] | None = None) -> None:
        self.source, self.settings = source, source.settings
        self.dest, self.manifest, self.log = dest, manifest, log
        self.label = label  # what progress lines say: "fetch", or "data" when staging
        self.stats = stats if stats is not None else Stats()
        self.doubts = Doubts(source, log, label, layouts)
        self.dirs = SafeDirs(dest)
        self.queue: deque[Work] = deque()  # the range threads' work
        self.asking = 0  # parts asked and not yet answered: idle threads wait for them
        self.late_unverified = 0  # objects found checkable by size only once asked
        self.lock = threading.Lock()  # the shared state the threads change: stats, segments
        self.more = threading.Condition(self.lock)  # work was added (parts answered)
        self.stop = threading.Event()  # set on the way out: threads stop at their next chunk
        self.large = LargeObjects(self)
        self._smalls: deque[RemoteObject] = deque()
        self._temps: set[str] = set()  # every temporary that may exist: removed on the way out
        self._ranging = 0  # ranges in flight on the threads (at most RANGE_STREAMS)
        self._asking_pool: Any | None = None  # see _askers

    # -- planning
    def plan(self, objects: list[RemoteObject], folders: list[str],
             unchanged: Collection[str] = (), pulled: Collection[str] = ()) -> None:
        """Every object counted; the ``unchanged`` ones skipped (counted so), those a
        peer gave (``pulled``) left alone; the rest planned."""
        large: list[list[Work]] = []
        for obj in objects:
            self.stats.total_files += 1
            self.stats.total_bytes += obj.size
            if obj.rel in unchanged:
                self.stats.skipped += 1
                continue
            if obj.rel in pulled:
                continue
            large_object = obj.size >= self.settings.multipart_threshold
            if not checkable(obj, self.doubts.layouts.get(obj.rel)) \
                    and not (large_object and self.doubts.will_ask(obj)):
                self.stats.unverified += 1
            if large_object:
                large.append(self.plan_large(obj))
            else:
                self._smalls.append(obj)
        self.queue.extend(in_turn(large))
        for rel in folders:
            self.dirs.ensure(rel)
        if self.stats.unverified:
            self.log.info(f"{self.label}: {self.stats.unverified} object(s) can be checked by "
                          "size only: their ETag is not an MD5 and the store gave no parts "
                          "for it (an encrypted object, or a store that ignores partNumber)")

    def plan_large(self, obj: RemoteObject, attempt: int = 0) -> list[Work]:
        """``obj``'s work: its ranges, or its parts asked beside its first range."""
        if self.doubts.will_ask(obj):
            self.doubts.asking(obj)
            self.asking += 1
            return ahead(obj, self.settings.range_size)
        return cut(obj, self.doubts.layouts.get(obj.rel), self.settings.range_size,
                        attempt)

    def _threaded(self) -> bool:
        """Whether the whole objects ride the range threads too (no event loop, no native
        core): at most THREADED_SMALLS of them, all within the memory budget, and no
        backend named (a named one is what the user asked whole objects to go through)."""
        return (len(self._smalls) <= THREADED_SMALLS
                and sum(o.size for o in self._smalls) <= self.settings.memory
                and self.settings.backend == "auto")

    # -- counters, retries, temporaries and commits (any thread)
    def count(self, files: int = 0, got: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.stats.files += files
            self.stats.bytes += got
            self.stats.retries += retries

    def _on_retry(self, exc: BaseException) -> None:
        self.count(retries=1)

    def retrying(self, fn: Callable[[], Any]) -> Any:
        """``fn`` under the retry policy, on a thread; a stop cuts its pauses short."""
        return retry.call(fn, self.settings.retry_attempts, self.settings.retry_deadline,
                          self._on_retry, sleep=self.stop.wait)

    def _temp_name(self, obj: RemoteObject) -> str:
        """A hidden temporary name beside ``obj``'s destination, known to the cleanup
        before anything is created under it."""
        tmp = landing.temporary(os.path.join(self.dest, obj.rel.rpartition("/")[0]))
        self._temps.add(tmp)
        return tmp

    def new_temp(self, obj: RemoteObject) -> tuple[str, int]:
        """A new hidden temporary beside ``obj``'s destination, open for writing."""
        self.dirs.ensure(obj.rel.rpartition("/")[0])
        tmp = self._temp_name(obj)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return tmp, fd

    def drop_temp(self, tmp: str) -> None:
        self._temps.discard(tmp)
        landing.discard(tmp)

    def commit(self, obj: RemoteObject, tmp: str) -> None:
        """A checked temporary under its name, recorded and counted."""
        final = self.dest / obj.rel
        try:
            landing.commit(tmp, final)
        finally:
            self._temps.discard(tmp)  # landed, or removed by the failed commit
        self.manifest.record(obj.rel, obj.size, obj.etag, final)
        self.count(files=1)

    def _land(self, obj: RemoteObject, data: memoryview, tmp: str, may_ask: bool = True) -> None:
        """Verify, write, rename, record: a whole object's body in memory. On the loop's
        thread for many small objects: handing each file to a worker thread was measured
        slower there (2,000 files: 3.0 s instead of 1.5 s, mostly futex system time),
        although creating a file is the costliest call of the lot (~0.35 ms here). A sum
        that differs is explained by asking the store (see :meth:`.Doubts.explained`)
        unless ``may_ask`` is False (the loop's thread must not wait on the store): then
        SumDiffers is raised for the caller to land it again on a thread."""
        try:
            check_body(obj, data, self.doubts.layouts.get(obj.rel))
        except SumDiffers:
            if not may_ask or not self.doubts.explained(
                    obj, lambda parts: body_matches(obj, data, parts)):
                raise
        self.dirs.ensure(obj.rel.rpartition("/")[0])
        final = self.dest / obj.rel
        landing.land(tmp, final, data)
        self.manifest.record(obj.rel, obj.size, obj.etag, final)

    # -- the threads: ranges, and a few whole objects
    def _thread_worker(self, smalls: bool) -> None:
        """Takes work, at most RANGE_STREAMS ranges at once among the threads (and whole
        objects, when ``smalls``) until none is left or the run stops. A thread that
        reads a range does it through its own reused buffer, made when it first needs it
        (a thread of small objects only needs none)."""
        buf: memoryview | None = None
        while not self.stop.is_set():
            with self.lock:
                work = obj = None
                if self.queue and self._ranging < RANGE_STREAMS:
                    work = self.queue.popleft()
                    self._ranging += 1
                elif smalls and self._smalls:
                    obj = self._smalls.popleft()
                elif self.asking and not self.queue:
                    self.more.wait(0.1)  # the answer plans more ranges; a stop ends the wait
                    continue
            if work is not None:
                if buf is None:
                    buf = memoryview(bytearray(CHUNK))
                try:
                    if isinstance(work, AskParts):
                        self.large.learn_parts(work.state)
                    else:
                        self.large.fetch_range(work.state, work.start, work.end, buf)
                finally:
                    with self.lock:
                        self._ranging -= 1
            elif obj is not None:
                self._fetch_small_here(obj)
            else:
                return  # nothing, or ranges enough in flight: their threads take the rest

    def _fetch_small_here(self, obj: RemoteObject) -> None:
        """A whole object over the signed client, on this thread."""
        tmp = self._temp_name(obj)

        def attempt() -> bool:
            if self.stop.is_set():
                return False
            # An empty object needs no request: the listing already says all of it.
            data = memoryview(self.source.get_object(obj.key, obj.size) if obj.size else b"")
            self.count(got=len(data))
            self._land(obj, data, tmp)
            return True

        try:
            landed = self.retrying(attempt)
        except BaseException:
            self.drop_temp(tmp)
            raise
        self._temps.discard(tmp)
        if landed:
            self.count(files=1)

    # -- the event loop: many whole objects through the store
    async def _fetch_small(self, obj: RemoteObject) -> None:
        import asyncio

        tmp = self._temp_name(obj)
        store = self.source.store()

        async def attempt() -> None:
            # An empty object needs no request: the listing already says all of it.
            data = await store.get(obj.key, obj.size) if obj.size else memoryview(b"")
            self.count(got=len(data))
            if len(data) < 1 << 20:
                try:
                    self._land(obj, data, tmp, may_ask=False)
                except SumDiffers:  # the store is asked why: on a thread, not the loop's
                    await asyncio.get_running_loop().run_in_executor(
                        self._askers(), self._land, obj, data, tmp)
            else:  # hashing a large buffer would stall the loop: a thread, GIL released
                await asyncio.to_thread(self._land, obj, data, tmp)

        await self._budget.acquire(obj.size)
        try:
            await retry.call_async(attempt, self.settings.retry_attempts,
                                   self.settings.retry_deadline, self._on_retry)
        except BaseException:
            self.drop_temp(tmp)
            raise
        finally:
            await self._budget.release(obj.size)
        self._temps.discard(tmp)
        self.count(files=1)

    async def _worker(self) -> None:
        while self._smalls and not self.stop.is_set():  # a range thread's failure stops it
            await self._fetch_small(self._smalls.popleft())

    async def _progress(self, started: float, every: float) -> None:
        import asyncio

        while True:
            await asyncio.sleep(every)
            self._report(started)

    def _report(self, started: float) -> None:
        self.log.info(f"{self.label}: {self.stats.progress(time.monotonic() - started)}")

    def _range_threads(self) -> int:
        return threads_for(self.queue, self.settings.range_size, RANGE_STREAMS)

    async def _main(self, started: float, progress_every: float) -> None:
        import asyncio

        self._budget = ByteBudget(self.settings.memory)
        if self._smalls:
            self.source.store()  # opened before the workers start, not inside one of them
        progress = asyncio.ensure_future(self._progress(started, progress_every))
        ranges = asyncio.ensure_future(asyncio.to_thread(
            run_threads, self._range_threads(),
            lambda: self._thread_worker(smalls=False), self.stop))
        try:
            await run_workers(min(self.settings.workers, len(self._smalls)), self._worker)
            await ranges
        finally:
            self.stop.set()
            progress.cancel()
            await asyncio.gather(progress, ranges, return_exceptions=True)
            if self._asking_pool is not None:
                self._asking_pool.shutdown(wait=True, cancel_futures=True)

    def _askers(self) -> Any:
        """The threads that land the loop's objects whose sum differs, asking the store
        why (see :meth:`.Doubts.explained`): a pool of their own, made on the first, as
        wide as ASKERS. A bucket whose default encryption gives every object an ETag that
        is not its MD5 has every object asked; the loop's default pool (cores + 4 threads)
        would take 2,000 of them 20 s with the store 30 ms away."""
        if self._asking_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._asking_pool = ThreadPoolExecutor(ASKERS, thread_name_prefix="ask")
        return self._asking_pool

    # -- running
    def run(self, progress_every: float = 5.0) -> Stats:
        started = time.monotonic()
        try:
            if self._threaded():
                # A thread for each whole object, beside those of the ranges: all of them
                # in flight at once, as the loop would have them (a store 30 ms away).
                run_threads(self._range_threads() + len(self._smalls),
                            lambda: self._thread_worker(smalls=True), self.stop,
                            lambda: self._report(started), progress_every)
            else:
                run_stoppable(self._main(started, progress_every))
        finally:
            self.stop.set()
            for tmp in list(self._temps):
                self.drop_temp(tmp)
            self.manifest.close()
            self.stats.backend = self.source.backend
            self.stats.unverified += self.doubts.encrypted_count
            self.stats.seconds = time.monotonic() - started
        landing.sweep(self.dest)  # what a killed run left (SIGKILL cannot clean up)
        _say_unverified(self.log, self.label, self.doubts.encrypted_count, self.late_unverified)
        return self.stats


def _say_unverified(log: Log, label: str, encrypted: int, late: int) -> None:
    """Why objects found during the fetch were checked by size only."""
    if encrypted:
        log.info(f"{label}: {encrypted} object(s) are encrypted by the store (server-side "
                 "encryption): their ETags are not MD5s, so they were checked by size only")
    if late:
        log.info(f"{label}: {late} large object(s) were checked by size only: the store gave "
                 "no parts for their ETag (a store that ignores partNumber)")
