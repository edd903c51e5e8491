"""The plan of a large object's fetch: its ranges, and the segments its sums are kept in.

Pure: what to fetch and in which pieces, never how. The download engine
(:mod:`.download`) runs the work items on its threads and calls these functions holding
its lock.

* A **segment** is one stretch hashed on its own: a part of a multipart object, or the
  whole object for a plain MD5. Ranges finish out of order; whichever range completes
  the stretch that continues the hashed prefix hashes it forward, so by the last range
  only its own tail is left to hash.
* A **work item** is a range (bytes ``[start, end)``, cut at the parts' boundaries so
  each range feeds one segment's sum) or a question: ask the store for the object's
  parts, when they are not known yet (:func:`ahead`); the rest of its ranges are
  planned from the answer (:func:`learned`).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .listing import RemoteObject
from .verify import Layout, boundaries, checkable


@dataclass(slots=True)
class Segment:
    """A stretch of a large object hashed on its own (see the module)."""

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
class LargeFile:
    """One object fetched as ranges: its temporary file and its segments' sums."""

    obj: RemoteObject
    remaining: int
    segments: list[Segment]
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

    def segment_of(self, offset: int) -> Segment:
        starts = [seg.start for seg in self.segments]
        return self.segments[bisect.bisect_right(starts, offset) - 1]

    @property
    def given_up(self) -> bool:
        """Failed, or fetched whole instead: its ranges have nothing left to do."""
        return self.failed or self.streamed


@dataclass(frozen=True, slots=True)
class Range:
    """Work: bytes ``[start, end)`` of a large object."""

    state: LargeFile
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class AskParts:
    """Work: ask the store for a large object's parts (see :func:`learned`)."""

    state: LargeFile


Work = Range | AskParts


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)


def cut(obj: RemoteObject, parts: Layout | None, range_size: int,
        attempt: int = 0) -> list[Work]:
    """``obj``'s ranges, cut at its parts' boundaries (known, or none: a plain MD5)."""
    spans = boundaries(parts) if parts is not None and obj.md5 is None else [(0, obj.size)]
    hashed = checkable(obj, parts)
    cuts = [(s, min(s + range_size, end)) for start, end in spans
            for s in range(start, end, range_size)]
    state = LargeFile(obj, remaining=len(cuts), attempt=attempt, segments=[
        Segment(start, end, _md5() if hashed else None) for start, end in spans])
    return [Range(state, s, e) for s, e in cuts]


def ahead(obj: RemoteObject, range_size: int) -> list[Work]:
    """A multipart object whose parts are not known yet: the store is asked for them
    (HeadObject ``partNumber``, a round trip) while the object's first range is already
    under way, so that round trip is off the fetch's critical path. The first range ends
    where part 1 surely still runs when the parts are equal, as every common uploader
    writes them (``ceil(size / parts)``); it is hashed as the start of part 1. The other
    ranges are planned once the parts are known (:func:`learned`), which also mends the
    rare first range that ran past part 1 (uneven parts)."""
    assert obj.parts is not None
    lead = min(range_size, -(-obj.size // obj.parts))
    state = LargeFile(obj, remaining=2, asking=True, lead=lead,
                      segments=[Segment(0, obj.size, _md5())])
    return [AskParts(state), Range(state, 0, lead)]


def learned(state: LargeFile, parts: Layout | None,
            range_size: int) -> tuple[list[Range], list[Segment]]:
    """The answer to :class:`AskParts`: ``state``'s segments cut at ``parts`` (None:
    the store could not say, the size is all there is to check), and the ranges left to
    fetch; with the segments whose landed bytes are to be hashed forward."""
    obj, first = state.obj, state.segments[0]
    state.asking = False
    if parts is None:
        first.digest = None
        spans = [(0, obj.size)]
    else:
        spans = boundaries(parts)
        first.end = spans[0][1]
        state.segments.extend(Segment(start, end, _md5()) for start, end in spans[1:])
    if state.given_up:
        return [], []
    lead = state.lead
    cuts = [(s, min(s + range_size, end)) for start, end in spans
            for s in range(max(start, lead), end, range_size)]
    state.remaining += len(cuts) - 1  # the ask is answered
    touched = _split_first(state) if lead > first.end else [first]
    return [Range(state, s, e) for s, e in cuts], touched


def _split_first(state: LargeFile) -> list[Segment]:
    """Uneven parts: the first range ran past part 1. What of it landed is moved to the
    segments it belongs to, part 1's sum started again (read back from the file). A
    first range still in flight is left alone: it will not keep its sum and files its
    bytes the same way when it ends."""
    first = state.segments[0]
    if first.hashing:
        return []
    landed = first.hashed if first.hashed > first.start else first.done.pop(0, 0)
    if not landed:
        return []  # it has not started yet
    first.digest, first.hashed = _md5(), first.start
    first.done.clear()
    return file_landed(state, 0, landed)


def file_landed(state: LargeFile, start: int, end: int) -> list[Segment]:
    """Records bytes ``[start, end)`` as written and not yet hashed, in each segment they
    overlap; returns those segments."""
    touched = []
    for seg in state.segments:
        if seg.start < end and start < seg.end:
            seg.done[max(start, seg.start)] = min(end, seg.end)
            touched.append(seg)
    return touched


def in_turn(objects: list[list[Work]]) -> Iterator[Work]:
    """The objects' work taken in turn (a's first, b's first, ..., a's second, ...):
    ranges in flight together land in different files, so they seldom wait for each
    other's writes (:attr:`LargeFile.writing`; 4 x 64 MiB in object order, before that
    lock, when they spun on the inode lock instead, cost 40% more CPU)."""
    for wave in itertools.zip_longest(*objects):
        yield from (w for w in wave if w is not None)


def threads_for(queue: Iterable[Work], range_size: int, most: int) -> int:
    """Threads for the ranges: one a range, at most ``most``, counting those an object
    whose parts are still asked for will have once they are known."""
    work = list(queue)
    later = sum(-(-w.state.obj.size // range_size) + (w.state.obj.parts or 0)
                for w in work if isinstance(w, AskParts))
    return min(most, len(work) + later)
