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
  critical path; see :meth:`Engine._plan_ahead`; equal parts from part 1's length alone
  are a guess, which a body that does not match has every part's length asked to
  overrule before it counts as damaged: :meth:`Engine._parts_asked_again`); an
  object the store encrypts on its side (an ETag of an MD5's shape that is not its MD5:
  asked of the store when a sum differs, :meth:`Engine._explained`) or an ETag that is
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

import bisect
import hashlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import landing
from ..config.location import Location
from ..errors import DownloadError
from ..log import Log
from ..storage import retry
from ..storage.errors import StorageError, TransientError
from .listing import RemoteObject
from .loop import ByteBudget, run_stoppable, run_threads, run_workers
from .manifest import Manifest
from .paths import SafeDirs
from .verify import (
    Layout,
    Verifier,
    boundaries,
    checkable,
    combined,
    file_matches,
    hash_range,
    truer_parts,
)

if TYPE_CHECKING:
    from typing import Any

    from ..config.settings import Transfer
    from ..storage.base import Store
    from ..storage.signed import SignedClient

RANGE_STREAMS = 8  # concurrent ranged GETs of large objects (measured: 8 beat 32)
# At most this many whole objects go on threads, one each (no loop): the crossing point,
# measured (bench/README.md, 2026-12-02): threads ahead at 10 and 24 files, even at 48,
# the loop ahead from 96.
THREADED_SMALLS = 32
CHUNK = 1 << 20  # each range thread's buffer
# The most one write(2) hands the page cache. Linux sizes a buffered write's page-cache
# folios by the write's length; on a VM whose free memory goes back to the host (free
# page reporting, as on the benchmark machine) large folios come from memory the host
# must fault in again: writing 1 GiB took 0.2-2.5 s in 1 MiB writes, 0.19-0.24 s in
# 128 KiB ones (6-8 runs a size, order drawn at random; bench/README.md).
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

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 2**20 if self.seconds > 0 else 0.0
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB fetched, "
                f"{self.skipped} unchanged skipped, {rate:.1f} MiB/s, {self.retries} retries"
                + (f", {self.unverified} checked by size only" if self.unverified else "")
                + (f", via {self.backend}" if self.backend else ""))


@dataclass(slots=True)
class _Segment:
    """One stretch of a large object hashed on its own: a part of a multipart object,
    or the whole object for a plain MD5. Ranges finish out of order; whichever range
    completes the stretch that continues the hashed prefix hashes it forward (see
    :meth:`Engine._advance`), so by the last range only its own tail is left to hash."""

    start: int
    end: int
    digest: Any  # None: nothing to check but the size
    hashed: int = 0  # bytes [start, hashed) are in the digest
    done: dict[int, int] = field(default_factory=dict)  # written, not yet hashed: start -> end
    hashing: bool = False

    def __post_init__(self) -> None:
        self.hashed = self.start

    @property
    def complete(self) -> bool:
        return self.digest is None or self.hashed == self.end


@dataclass(slots=True)
class _Landed:
    """How far one range has landed: where its next attempt starts."""

    offset: int

    def add(self, length: int) -> None:
        self.offset += length


@dataclass(slots=True)
class _LargeFile:
    """One object fetched as ranges: its temporary file and its segments' sums."""

    obj: RemoteObject
    remaining: int
    segments: list[_Segment]
    attempt: int = 0  # how many whole fetches of it failed verification before this one
    tmp: str | None = None  # created by the first range to start
    finished: bool = False
    streamed: bool = False  # the server cannot do ranges: fetched whole instead
    failed: bool = False
    asking: bool = False  # its parts are being asked of the store; its first range runs
    lead: int = 0  # where that first range ends
    # Its ranges' writes, one at a time. The kernel serializes buffered writes of one
    # file anyway (ext4 and XFS hold its inode lock), but its waiters spin on the lock:
    # 7-15% of a one1g fetch's CPU samples were in rwsem_spin_on_owner, none with this
    # lock, whose waiters sleep (bench/README.md).
    writing: threading.Lock = field(default_factory=threading.Lock)

    def segment_of(self, offset: int) -> _Segment:
        starts = [seg.start for seg in self.segments]
        return self.segments[bisect.bisect_right(starts, offset) - 1]


@dataclass(frozen=True, slots=True)
class _Range:
    """Work for a range thread: bytes ``[start, end)`` of a large object."""

    state: _LargeFile
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _AskParts:
    """Work for a range thread: ask the store for a large object's parts (the rest of its
    ranges are planned from the answer: :meth:`Engine._learn_parts`)."""

    state: _LargeFile


_Work = _Range | _AskParts


class Engine:
    """Runs the planned transfers; see the module's contract. Large objects' ranges run
    on threads, always (:func:`~.loop.run_threads`); whole objects on one event loop in
    the calling thread through the store, unless they are few (see :meth:`_threaded`),
    when they ride the same threads over the signed client and no loop is started."""

    def __init__(self, open_store: Callable[[], Store], ranges: SignedClient,
                 location: Location, dest: Path, settings: Transfer, log: Log,
                 manifest: Manifest, stats: Stats | None = None,
                 layouts: Mapping[str, Layout] | None = None,
                 ask_parts: Callable[[RemoteObject, bool], Layout | None] | None = None,
                 encrypted: Callable[[RemoteObject], bool] | None = None) -> None:
        self._open_store = open_store
        self._store: Store | None = None
        self.ranges = ranges  # ranged GETs of large objects (threads, reused buffers)
        self.location = location
        self.dest = dest
        self.settings = settings
        self.label = "fetch"  # what progress lines say: "fetch", or "data" when staging
        self.log = log
        self.manifest = manifest
        self.layouts = dict(layouts or {})  # multipart objects' parts (see .verify)
        # Asks the store for a large multipart object's parts (None: it cannot say),
        # beside its first range rather than before it (see _plan_ahead); with True,
        # every part's length (see _parts_asked_again).
        self._ask_parts = ask_parts
        self._asked: set[str] = set()
        self._asked_every: set[str] = set()
        # Asks the store whether it encrypts an object, so that its ETag is not its MD5
        # (see _explained); the answers, an object each, and how many were encrypted.
        self._ask_encrypted = encrypted
        self._encrypted: dict[str, bool] = {}
        self._encrypted_count = 0
        self._asking_pool: Any | None = None  # see _askers
        self._asking = 0  # asks not yet answered: threads without work wait for them
        self._late_unverified = 0  # objects found checkable by size only once asked
        self.dirs = SafeDirs(dest)
        self.stats = stats if stats is not None else Stats()
        self._ranges: deque[_Work] = deque()
        self._smalls: deque[RemoteObject] = deque()
        self._temps: set[str] = set()  # every temporary that may exist: removed on the way out
        self._can_range = True
        self._dest = str(dest)
        self._lock = threading.Lock()  # the shared state the threads change: stats, segments
        self._more = threading.Condition(self._lock)  # ranges were added (parts answered)
        self._stop = threading.Event()  # set on the way out: threads stop at their next chunk
        self._ranging = 0  # ranges in flight on the threads (at most RANGE_STREAMS)

    @property
    def store(self) -> Store:
        """The store, opened on first use: whole objects need it when there are many of
        them, ranged GETs go through the signed client, so a tree of large objects and a
        few small ones never loads the native core (obstore's import and its TLS roots:
        ~20-30 ms of the job's start). The engine closes it at the end of :meth:`run`."""
        if self._store is None:
            self._store = self._open_store()
            self.stats.backend = self._store.backend
        return self._store

    # -- planning
    def plan(self, objects: list[RemoteObject], folders: list[str]) -> None:
        large: list[list[_Work]] = []
        for obj in objects:
            self.stats.total_files += 1
            self.stats.total_bytes += obj.size
            if self.manifest.unchanged(obj.rel, obj.size, obj.etag, self.dest / obj.rel):
                self.stats.skipped += 1
            else:
                large_object = obj.size >= self.settings.multipart_threshold
                if not checkable(obj, self.layouts.get(obj.rel)) \
                        and not (large_object and self._will_ask(obj)):
                    self.stats.unverified += 1
                if large_object:
                    large.append(self._plan_large(obj))
                else:
                    self._smalls.append(obj)
        # Objects' ranges taken in turn (a's first, b's first, ..., a's second, ...): ranges
        # in flight together land in different files, so they seldom wait for each
        # other's writes (_LargeFile.writing; 4 x 64 MiB in object order, before that
        # lock, when they spun on the inode lock instead, cost 40% more CPU).
        for wave in itertools.zip_longest(*large):
            self._ranges.extend(r for r in wave if r is not None)
        for rel in folders:
            self.dirs.ensure(rel)
        if self.stats.unverified:
            self.log.info(f"{self.label}: {self.stats.unverified} object(s) can be checked by "
                          "size only: their ETag is not an MD5 and the store gave no parts "
                          "for it (an encrypted object, or a store that ignores partNumber)")

    def _will_ask(self, obj: RemoteObject) -> bool:
        """Whether ``obj``'s parts are yet to be asked of the store (once an object)."""
        return (self._ask_parts is not None and obj.md5 is None and obj.parts is not None
                and obj.rel not in self.layouts and obj.rel not in self._asked)

    def _plan_large(self, obj: RemoteObject,
                    attempt: int = 0) -> list[_Work]:
        """``obj``'s ranges, cut at its parts' boundaries so each range feeds one
        segment's sum."""
        if self._will_ask(obj):
            return self._plan_ahead(obj)
        parts = self.layouts.get(obj.rel)
        spans = boundaries(parts) if parts is not None and obj.md5 is None else [(0, obj.size)]
        hashed = checkable(obj, parts)
        size = self.settings.range_size
        cuts = [(s, min(s + size, end)) for start, end in spans for s in range(start, end, size)]
        state = _LargeFile(obj, remaining=len(cuts), attempt=attempt, segments=[
            _Segment(start, end, hashlib.md5(usedforsecurity=False) if hashed else None)
            for start, end in spans])
        return [_Range(state, s, e) for s, e in cuts]

    def _plan_ahead(self, obj: RemoteObject) -> list[_Work]:
        """A multipart object whose parts are not known yet: the store is asked for them
        (HeadObject ``partNumber``, a round trip) while the object's first range is
        already under way, so that round trip is off the fetch's critical path. The first
        range ends where part 1 surely still runs when the parts are equal, as every
        common uploader writes them (``ceil(size / parts)``); it is hashed as the start
        of part 1. The other ranges are planned once the parts are known
        (:meth:`_learn_parts`), which also mends the rare first range that ran past
        part 1 (uneven parts)."""
        assert obj.parts is not None
        self._asked.add(obj.rel)
        self._asking += 1
        lead = min(self.settings.range_size, -(-obj.size // obj.parts))
        state = _LargeFile(obj, remaining=2, asking=True, lead=lead, segments=[
            _Segment(0, obj.size, hashlib.md5(usedforsecurity=False))])
        return [_AskParts(state), _Range(state, 0, lead)]

    def _learn_parts(self, state: _LargeFile) -> None:
        """Asks the store for ``state``'s parts, then cuts its segments and plans the
        rest of its ranges; with no answer, the object can be checked by size only."""
        obj = state.obj
        parts = self._ask_parts(obj, False) if self._ask_parts is not None else None
        with self._lock:
            self._asking -= 1
            state.asking = False
            self._more.notify_all()
            first = state.segments[0]
            if parts is None:
                first.digest = None
                self.stats.unverified += 1
                self._late_unverified += 1
                spans = [(0, obj.size)]
            else:
                self.layouts[obj.rel] = parts
                spans = boundaries(parts)
                first.end = spans[0][1]
                state.segments.extend(_Segment(start, end, hashlib.md5(usedforsecurity=False))
                                      for start, end in spans[1:])
            if state.failed or state.streamed:
                return
            size, lead = self.settings.range_size, state.lead
            cuts = [(s, min(s + size, end)) for start, end in spans
                    for s in range(max(start, lead), end, size)]
            state.remaining += len(cuts) - 1  # the ask is answered
            self._ranges.extend(_Range(state, s, e) for s, e in cuts)
            touched = self._split_first(state) if lead > first.end else [first]
        for seg in touched:
            self._advance(state, seg)

    def _split_first(self, state: _LargeFile) -> list[_Segment]:
        """Uneven parts: the first range ran past part 1. What of it landed is moved to
        the segments it belongs to, part 1's sum started again (read back from the
        file). A first range still in flight is left alone: it will not keep its sum
        (see :meth:`_get_range`) and files its bytes the same way when it ends.
        Holding the lock."""
        first = state.segments[0]
        if first.hashing:
            return []
        landed = first.hashed if first.hashed > first.start else first.done.pop(0, 0)
        if not landed:
            return []  # it has not started yet
        first.digest, first.hashed = hashlib.md5(usedforsecurity=False), first.start
        first.done.clear()
        return self._file_landed(state, 0, landed)

    def _file_landed(self, state: _LargeFile, start: int, end: int) -> list[_Segment]:
        """Records bytes ``[start, end)`` as written and not yet hashed, in each segment
        they overlap; returns those segments. Holding the lock."""
        touched = []
        for seg in state.segments:
            if seg.start < end and start < seg.end:
                seg.done[max(start, seg.start)] = min(end, seg.end)
                touched.append(seg)
        return touched

    def _range_threads(self) -> int:
        """Threads for the ranges: one a range, at most RANGE_STREAMS, counting those
        an object whose parts are still asked for will have once they are known."""
        later = sum(-(-work.state.obj.size // self.settings.range_size)
                    + (work.state.obj.parts or 0)
                    for work in self._ranges if isinstance(work, _AskParts))
        return min(RANGE_STREAMS, len(self._ranges) + later)

    def _threaded(self) -> bool:
        """Whether the whole objects ride the range threads too (no event loop, no native
        core): when there are at most THREADED_SMALLS of them, all of them fit in the
        memory budget at once, and no backend was named (a named one is what the user
        asked whole objects to come through)."""
        return (len(self._smalls) <= THREADED_SMALLS
                and sum(o.size for o in self._smalls) <= self.settings.memory
                and self.settings.backend == "auto")

    # -- counters, temporaries and commits (any thread)
    def _count(self, files: int = 0, got: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.stats.files += files
            self.stats.bytes += got
            self.stats.retries += retries

    def _on_retry(self, exc: BaseException) -> None:
        self._count(retries=1)

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """``fn`` under the retry policy, on a thread; a stop cuts its pauses short."""
        return retry.call(fn, self.settings.retry_attempts, self.settings.retry_deadline,
                          self._on_retry, sleep=self._stop.wait)

    def _temp_name(self, obj: RemoteObject) -> str:
        """A hidden temporary name beside ``obj``'s destination, known to the cleanup
        before anything is created under it."""
        tmp = landing.temporary(os.path.join(self._dest, obj.rel.rpartition("/")[0]))
        self._temps.add(tmp)
        return tmp

    def _new_temp(self, obj: RemoteObject) -> tuple[str, int]:
        """A new hidden temporary beside ``obj``'s destination, open for writing."""
        self.dirs.ensure(obj.rel.rpartition("/")[0])
        tmp = self._temp_name(obj)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return tmp, fd

    def _drop_temp(self, tmp: str) -> None:
        self._temps.discard(tmp)
        landing.discard(tmp)

    def _commit(self, obj: RemoteObject, tmp: str) -> None:
        final = self.dest / obj.rel
        try:
            landing.commit(tmp, final)
        finally:
            self._temps.discard(tmp)  # landed, or removed by the failed commit
        self.manifest.record(obj.rel, obj.size, obj.etag, final)
        self._count(files=1)

    def _land(self, obj: RemoteObject, data: memoryview, tmp: str, may_ask: bool = True) -> None:
        """Verify, write, rename, record: a whole object's body in memory. On the loop's
        thread for many small objects: handing each file to a worker thread was measured
        slower there (2,000 files: 3.0 s instead of 1.5 s, mostly futex system time),
        although creating a file is the costliest call of the lot (~0.35 ms here). A sum
        that differs is explained by asking the store (see :meth:`_explained`) unless
        ``may_ask`` is False (the loop's thread must not wait on the store): then
        _SumDiffers is raised for the caller to land it again on a thread."""
        try:
            _verify(obj, data, self.layouts.get(obj.rel))
        except _SumDiffers:
            if not may_ask or not self._explained(
                    obj, lambda parts: _matches(obj, data, parts)):
                raise
        self.dirs.ensure(obj.rel.rpartition("/")[0])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            landing.write_all(fd, data)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        final = os.path.join(self._dest, obj.rel)
        landing.commit(tmp, final, mode=None)
        self.manifest.record(obj.rel, obj.size, obj.etag, Path(final))

    # -- the threads: ranges, and a few whole objects
    def _thread_worker(self, smalls: bool) -> None:
        """Takes ranges, at most RANGE_STREAMS at once among the threads (and whole
        objects, when ``smalls``) until none is left or the run stops. A thread that
        reads a range does it through its own reused buffer, made when it first needs it
        (a thread of small objects only needs none)."""
        buf: memoryview | None = None
        while not self._stop.is_set():
            with self._lock:
                work = obj = None
                if self._ranges and self._ranging < RANGE_STREAMS:
                    work = self._ranges.popleft()
                    self._ranging += 1
                elif smalls and self._smalls:
                    obj = self._smalls.popleft()
                elif self._asking and not self._ranges:
                    self._more.wait(0.1)  # the answer plans more ranges; a stop ends the wait
                    continue
            if work is not None:
                if buf is None:
                    buf = memoryview(bytearray(CHUNK))
                try:
                    if isinstance(work, _AskParts):
                        self._learn_parts(work.state)
                    else:
                        self._fetch_range(work.state, work.start, work.end, buf)
                finally:
                    with self._lock:
                        self._ranging -= 1
            elif obj is not None:
                self._fetch_small_here(obj)
            else:
                return  # nothing, or ranges enough in flight: their threads take the rest

    def _fetch_small_here(self, obj: RemoteObject) -> None:
        """A whole object over the signed client, on this thread."""
        tmp = self._temp_name(obj)

        def attempt() -> bool:
            if self._stop.is_set():
                return False
            data = memoryview(self.ranges.get_object(self.location.bucket, obj.key, obj.size)
                              if obj.size else b"")  # an empty object needs no request
            self._count(got=len(data))
            self._land(obj, data, tmp)
            return True

        try:
            landed = self._retrying(attempt)
        except BaseException:
            self._drop_temp(tmp)
            raise
        self._temps.discard(tmp)
        if landed:
            self._count(files=1)

    def _fetch_range(self, state: _LargeFile, start: int, end: int, buf: memoryview) -> None:
        if state.failed or state.streamed:
            return
        if not self._can_range:
            self._stream_whole(state, buf)
            return
        with self._lock:
            if state.tmp is None:  # the first range to start creates the file
                state.tmp, fd = self._new_temp(state.obj)
                os.ftruncate(fd, state.obj.size)
                os.close(fd)
        tmp = state.tmp
        try:
            try:
                hashed = self._get_range(state, tmp, start, end, buf)
            except StorageError as exc:
                if exc.kind != "not_partial":
                    raise
                with self._lock:
                    first, self._can_range = self._can_range, False
                if first:  # this server cannot: stream them whole
                    self.log.info(f"fetch: {exc.message}; large objects are streamed whole")
                self._stream_whole(state, buf)
                return
        except BaseException:
            state.failed = True
            self._drop_temp(tmp)
            raise
        if state.failed or state.streamed or self._stop.is_set():
            return
        with self._lock:
            state.remaining -= 1
            touched = [state.segment_of(start)] if hashed \
                else self._file_landed(state, start, end)
        for seg in touched:
            self._advance(state, seg)

    def _get_range(self, state: _LargeFile, tmp: str, start: int, end: int,
                   buf: memoryview) -> bool:
        """Bytes ``[start, end)`` into place (see
        :meth:`~bootstrap.storage.signed.SignedClient.read_range_into` for why not the store),
        retried from the bytes that landed: a reset or a stall 60 MiB into a range asks
        for the rest, not the whole range again. A range that starts where its segment's
        sum has got to is hashed as it arrives, from the thread's buffer (no read back, no
        hashing left after it), into a copy of the sum that continues across the retries
        and is kept only once every byte came. Returns whether it hashed."""
        with self._lock:
            seg = state.segment_of(start)
            inline = seg.digest is not None and not seg.hashing and seg.hashed == start
            digest = seg.digest.copy() if inline else None
            if inline:
                seg.hashing = True  # claimed: the readers-back leave this segment to it
        landed = _Landed(start)

        def gave_up() -> bool:
            return state.failed or state.streamed or self._stop.is_set()

        def attempt() -> None:
            before = landed.offset
            try:
                fd = os.open(tmp, os.O_WRONLY)
            except FileNotFoundError:
                if gave_up():
                    return  # another range gave this file up meanwhile
                raise
            try:
                self.ranges.read_range_into(self.location.bucket, state.obj.key,
                                            landed.offset, end, _writer(fd, state.writing),
                                            buf, gave_up, digest, landed.add)
            finally:
                os.close(fd)
                self._count(got=landed.offset - before)
            if landed.offset != end and not gave_up():
                raise TransientError(f"range {start}-{end - 1} of {state.obj.key!r}: received "
                                     f"{landed.offset - start} of {end - start} bytes")

        try:
            self._retrying(attempt)
        finally:
            kept = False
            if inline:
                with self._lock:
                    seg.hashing = False
                    # Not kept when its parts turned out uneven meanwhile and the range
                    # ran past its segment, or the object is to be checked by size only.
                    kept = landed.offset == end and end <= seg.end and seg.digest is not None
                    if kept:
                        seg.digest, seg.hashed = digest, end
        return kept

    def _advance(self, state: _LargeFile, seg: _Segment) -> None:
        """Hashes ``seg`` forward over every finished range that continues its hashed
        prefix (reading back from the page cache), one hasher a segment, segments in
        parallel on their threads; the object is finished once every range is written,
        its parts known and every segment hashed (whichever thread sees that last)."""
        while True:
            with self._lock:
                end = None if seg.digest is None or seg.hashing else seg.done.pop(seg.hashed,
                                                                                  None)
                if end is None:
                    finish = (state.remaining == 0 and not state.finished and not state.failed
                              and not state.streamed
                              and all(s.complete for s in state.segments))
                    state.finished |= finish
                    break
                seg.hashing, offset = True, seg.hashed
            try:
                assert state.tmp is not None
                hash_range(state.tmp, seg.digest, offset, end)
            finally:
                with self._lock:
                    seg.hashing, seg.hashed = False, end
        if finish:
            self._finish_large(state)

    def _parts_asked_again(self, obj: RemoteObject) -> Layout | None:
        """A multipart body did not match ``obj``'s known parts, which may be the
        equal-parts guess from part 1 alone (see :func:`~.verify.guessed`): every part's
        length is asked of the store, once an object. Returns the store's answer when it
        differs from the guess (the layout from then on), else None."""
        ask = self._ask_parts
        with self._lock:
            parts = self.layouts.get(obj.rel)
            if ask is None or obj.rel in self._asked_every:
                return None
            self._asked_every.add(obj.rel)
        exact = truer_parts(obj, parts, lambda o: ask(o, True))
        if exact is None:
            return None
        with self._lock:
            self.layouts[obj.rel] = exact
        self.log.info(f"{self.label}: {obj.key!r}: its parts are not of equal lengths "
                      f"({len(exact)} parts); checked again against each part's length")
        return exact

    def _encrypted_by_store(self, obj: RemoteObject) -> bool:
        """Whether the store encrypts ``obj`` on its side, so that its ETag is not the MD5
        of its bytes and the size is all there is to check (see
        :func:`~.verify.etag_is_not_its_md5`); asked once an object, counted once."""
        with self._lock:
            known = self._encrypted.get(obj.rel)
        if known is None:
            known = self._ask_encrypted is not None and self._ask_encrypted(obj)
            with self._lock:
                if obj.rel not in self._encrypted:
                    self._encrypted[obj.rel] = known
                    self.stats.unverified += known
                    self._encrypted_count += known
        return known

    def _explained(self, obj: RemoteObject, recheck: Callable[[Layout], bool]) -> bool:
        """Whether a body of the listed length whose sum is not the listing's is sound
        all the same, the store asked: its parts were the equal-parts guess and their
        lengths from the store make it match (``recheck`` hashes it again, cut at them:
        see :meth:`_parts_asked_again`), or the store encrypts it, so its ETag is not
        its MD5 (see :meth:`_encrypted_by_store`). False: damaged on the way."""
        exact = self._parts_asked_again(obj)
        if exact is not None and recheck(exact):
            return True
        return self._encrypted_by_store(obj)

    def _stream_whole(self, state: _LargeFile, buf: memoryview) -> None:
        """The object in one streamed GET (a server without proper ranges)."""
        with self._lock:
            if state.streamed:
                return
            state.streamed = True
        if state.tmp is not None:
            self._drop_temp(state.tmp)
        obj = state.obj
        with self._lock:
            asking = state.asking
        if asking:  # its parts are still being asked for: this GET needs them now
            known = self._ask_parts(obj, False) if self._ask_parts is not None else None
            with self._lock:
                if known is not None:
                    self.layouts.setdefault(obj.rel, known)

        def attempt() -> str:
            tmp, fd = self._new_temp(obj)
            with self._lock:
                parts = self.layouts.get(obj.rel)  # as asked again after a guess, if it was
            check = Verifier(obj, parts) if checkable(obj, parts) else None
            try:
                got = self.ranges.read_whole_into(self.location.bucket, obj.key, obj.size,
                                                  _writer(fd, state.writing), buf,
                                                  self._stop.is_set, check)
                self._count(got=got)
                if got != obj.size and not self._stop.is_set():
                    raise TransientError(f"{obj.key!r}: received {got} bytes but the listing "
                                         f"says {obj.size}")
                if check is not None and not check.matches() and not self._stop.is_set() \
                        and not self._explained(obj, lambda parts: file_matches(obj, tmp, parts)):
                    raise TransientError(f"{obj.key!r}: {check.why_not()} (ETag {obj.etag})")
            except BaseException:
                self._drop_temp(tmp)
                raise
            finally:
                os.close(fd)
            return tmp

        tmp = self._retrying(attempt)
        if not self._stop.is_set():
            self._commit(obj, tmp)

    def _finish_large(self, state: _LargeFile) -> None:
        obj, tmp = state.obj, state.tmp
        assert tmp is not None
        size = os.path.getsize(tmp)
        why = _mismatch(obj, size, state.segments)
        if why is not None and size == obj.size \
                and self._explained(obj, lambda parts: file_matches(obj, tmp, parts)):
            why = None
        if why is None:
            self._commit(obj, tmp)
            return
        self._drop_temp(tmp)  # it never lands
        if state.attempt + 1 < self.settings.retry_attempts:
            # Bytes damaged on the way (or a store that served a bad range): the sum is
            # the whole object's, so the whole object comes again (this thread takes it
            # first: the others may have run out of work and ended).
            self._count(retries=1)
            self.log.info(f"{self.label}: {obj.key!r}: {why}; fetching it again "
                          f"(attempt {state.attempt + 2} of {self.settings.retry_attempts})")
            with self._lock:
                self._ranges.extendleft(reversed(self._plan_large(obj, state.attempt + 1)))
            return
        raise DownloadError(f"{obj.key!r}: {why} after {state.attempt + 1} whole fetches; the "
                            "object store serves a broken object: check it, or upload it "
                            "again")

    # -- the event loop: many whole objects through the store
    async def _fetch_small(self, obj: RemoteObject) -> None:
        import asyncio

        tmp = self._temp_name(obj)

        async def attempt() -> None:
            # An empty object needs no request: the listing already says all of it.
            data = await self.store.get(obj.key, obj.size) if obj.size else memoryview(b"")
            self._count(got=len(data))
            if len(data) < 1 << 20:
                try:
                    self._land(obj, data, tmp, may_ask=False)
                except _SumDiffers:  # the store is asked why: on a thread, not the loop's
                    await asyncio.get_running_loop().run_in_executor(
                        self._askers(), self._land, obj, data, tmp)
            else:  # hashing a large buffer would stall the loop: a thread, GIL released
                await asyncio.to_thread(self._land, obj, data, tmp)

        await self._budget.acquire(obj.size)
        try:
            await retry.call_async(attempt, self.settings.retry_attempts,
                                   self.settings.retry_deadline, self._on_retry)
        except BaseException:
            self._drop_temp(tmp)
            raise
        finally:
            await self._budget.release(obj.size)
        self._temps.discard(tmp)
        self._count(files=1)

    async def _worker(self) -> None:
        while self._smalls and not self._stop.is_set():  # a range thread's failure stops it
            await self._fetch_small(self._smalls.popleft())

    async def _progress(self, started: float, every: float) -> None:
        import asyncio

        while True:
            await asyncio.sleep(every)
            self._report(started)

    def _report(self, started: float) -> None:
        s = self.stats
        elapsed = time.monotonic() - started
        todo = max(s.total_bytes - s.bytes, 0)
        rate = s.bytes / elapsed if elapsed > 0 else 0.0
        eta = f"{todo / rate:.0f} s" if rate > 0 else "?"
        self.log.info(f"{self.label}: {s.files + s.skipped}/{s.total_files} files, "
                      f"{s.bytes / 2**20:.0f}/{s.total_bytes / 2**20:.0f} MiB, "
                      f"{rate / 2**20:.1f} MiB/s, ETA {eta}")

    async def _main(self, started: float, progress_every: float) -> None:
        import asyncio

        self._budget = ByteBudget(self.settings.memory)
        if self._smalls:
            _ = self.store  # opened before the workers start, not inside one of them
        progress = asyncio.ensure_future(self._progress(started, progress_every))
        ranges = asyncio.ensure_future(asyncio.to_thread(
            run_threads, self._range_threads(),
            lambda: self._thread_worker(smalls=False), self._stop))
        try:
            await run_workers(min(self.settings.workers, len(self._smalls)), self._worker)
            await ranges
        finally:
            self._stop.set()
            progress.cancel()
            await asyncio.gather(progress, ranges, return_exceptions=True)
            if self._asking_pool is not None:
                self._asking_pool.shutdown(wait=True, cancel_futures=True)

    def _askers(self) -> Any:
        """The threads that land the loop's objects whose sum differs, asking the store
        why (see :meth:`_explained`): a pool of their own, made on the first, as wide as
        ASKERS. A bucket whose default encryption gives every object an ETag that is not
        its MD5 has every object asked; the loop's default pool (cores + 4 threads) would
        take 2,000 of them 20 s with the store 30 ms away."""
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
                            lambda: self._thread_worker(smalls=True), self._stop,
                            lambda: self._report(started), progress_every)
            else:
                run_stoppable(self._main(started, progress_every))
        finally:
            self._stop.set()
            for tmp in list(self._temps):
                self._drop_temp(tmp)
            self.manifest.close()
            if self._store is not None:
                self._store.close()
            elif not self.stats.backend:
                self.stats.backend = "signed GETs"
            self.stats.seconds = time.monotonic() - started
        landing.sweep(self.dest)  # what a killed run left (SIGKILL cannot clean up)
        if self._encrypted_count:
            self.log.info(f"{self.label}: {self._encrypted_count} object(s) are encrypted by the "
                          "store (server-side encryption): their ETags are not MD5s, so they "
                          "were checked by size only")
        if self._late_unverified:
            self.log.info(f"{self.label}: {self._late_unverified} large object(s) were checked "
                          "by size only: the store gave no parts for their ETag (a store "
                          "that ignores partNumber)")
        return self.stats


class _SumDiffers(TransientError):
    """A body of the listed length whose sum is not the listing's (retried, unless the
    store explains it: see :meth:`Engine._explained`)."""


def _verify(obj: RemoteObject, data: memoryview, parts: Layout | None) -> None:
    """A whole body in memory against the listing; raises TransientError (retried)."""
    if len(data) != obj.size:
        raise TransientError(f"{obj.key!r}: received {len(data)} bytes but the listing says "
                             f"{obj.size}")
    if obj.md5 is not None:
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != obj.md5:
            raise _SumDiffers(f"{obj.key!r}: MD5 {got} does not match the ETag {obj.md5}")
    elif parts is not None and not _matches(obj, data, parts):
        raise _SumDiffers(f"{obj.key!r}: the parts' MD5s do not make the ETag {obj.etag}")


def _matches(obj: RemoteObject, data: memoryview, parts: Layout) -> bool:
    """Do ``data``'s parts, cut at ``parts``, make ``obj``'s multipart ETag?"""
    return combined(obj, [hashlib.md5(data[s:e], usedforsecurity=False).digest()
                          for s, e in boundaries(parts)])


def _mismatch(obj: RemoteObject, size: int, segments: list[_Segment]) -> str | None:
    """Why a large object's hashed segments do not match its listing, or None."""
    if size != obj.size:
        return f"{size} bytes, not the listed {obj.size}"
    if segments[0].digest is None:
        return None  # nothing to check but the size
    if obj.md5 is not None:
        got = segments[0].digest.hexdigest()
        return None if got == obj.md5 else f"MD5 {got} does not match the ETag {obj.md5}"
    if combined(obj, [seg.digest.digest() for seg in segments]):
        return None
    return f"the parts' MD5s do not make the ETag {obj.etag}"


def _writer(fd: int, lock: threading.Lock) -> Callable[[memoryview, int], None]:
    """Writes a whole chunk at its offset in ``fd``, holding ``lock`` (one a file)."""
    def write_at(data: memoryview, offset: int) -> None:
        with lock:
            landing.write_all(fd, data, offset)
    return write_at
