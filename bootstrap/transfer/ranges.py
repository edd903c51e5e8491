"""Large objects on the engine's threads: each range read into place, each part's sum
carried forward as its ranges land, the object committed once all of it is in and
checked (the contract is :mod:`.download`'s; the plan is :mod:`.plan`'s).

A range is read over the signed client into the thread's reused buffer and written in
place with ``pwrite`` (one writer a file at a time). A range that starts where its
segment's sum has got to is hashed as it arrives; a later one is read back from the
page cache once the prefix reaches it. A range cut short is asked again from the byte
it reached, its sum continued. A body that does not match is fetched again whole, up
to the retry attempts, and never lands. A server that ignores Range has its large
objects streamed whole instead, never written at the wrong offsets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import landing
from ..errors import DownloadError
from ..storage.errors import StorageError, TransientError
from . import plan
from .verify import Verifier, checkable, file_matches, hash_range, sums_mismatch

if TYPE_CHECKING:
    from .download import Engine


class LargeObjects:
    """The engine's large objects (``engine``: the fetch they are part of, whose lock,
    counters, retries, temporaries and commits they share)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.source, self.settings = engine.source, engine.settings
        self.can_range = True  # until a server answers a range with the whole object

    def learn_parts(self, state: plan.LargeFile) -> None:
        """Asks the store for ``state``'s parts, then plans the rest of its ranges; with
        no answer, the object can be checked by size only."""
        engine = self.engine
        parts = engine.doubts.parts(state.obj)
        with engine.lock:
            engine.asking -= 1
            engine.more.notify_all()
            if parts is None:
                engine.stats.unverified += 1
                engine.late_unverified += 1
            ranges, touched = plan.learned(state, parts, self.settings.range_size)
            engine.queue.extend(ranges)
        for seg in touched:
            self._advance(state, seg)

    def fetch_range(self, state: plan.LargeFile, start: int, end: int,
                    buf: memoryview) -> None:
        if state.given_up:
            return
        if not self.can_range:
            self._stream_whole(state, buf)
            return
        engine = self.engine
        with engine.lock:
            if state.tmp is None:  # the first range to start creates the file
                state.tmp, fd = engine.new_temp(state.obj)
                os.ftruncate(fd, state.obj.size)
                os.close(fd)
        tmp = state.tmp
        try:
            try:
                hashed = self._get_range(state, tmp, start, end, buf)
            except StorageError as exc:
                if exc.kind != "not_partial":
                    raise
                with engine.lock:
                    first, self.can_range = self.can_range, False
                if first:  # this server cannot: stream them whole
                    engine.log.info(f"fetch: {exc.message}; large objects are streamed whole")
                self._stream_whole(state, buf)
                return
        except BaseException:
            state.failed = True
            engine.drop_temp(tmp)
            raise
        if state.given_up or engine.stop.is_set():
            return
        with engine.lock:
            state.remaining -= 1
            touched = [state.segment_of(start)] if hashed \
                else plan.file_landed(state, start, end)
        for seg in touched:
            self._advance(state, seg)

    def _get_range(self, state: plan.LargeFile, tmp: str, start: int, end: int,
                   buf: memoryview) -> bool:
        """Bytes ``[start, end)`` into place (see
        :meth:`~bootstrap.storage.signed.SignedClient.read_range_into` for why not the
        store), retried from the bytes that landed: a reset or a stall 60 MiB into a range
        asks for the rest, not the whole range again. A range that starts where its
        segment's sum has got to is hashed as it arrives, from the thread's buffer (no
        read back, no hashing left after it), into a copy of the sum that continues across
        the retries and is kept only once every byte came. Returns whether it hashed."""
        engine = self.engine
        with engine.lock:
            seg = state.segment_of(start)
            inline = seg.digest is not None and not seg.hashing and seg.hashed == start
            digest = seg.digest.copy() if inline else None
            if inline:
                seg.hashing = True  # claimed: the readers-back leave this segment to it
        landed = _Landed(start)

        def gave_up() -> bool:
            return state.given_up or engine.stop.is_set()

        def attempt() -> None:
            before = landed.offset
            try:
                fd = os.open(tmp, os.O_WRONLY)
            except FileNotFoundError:
                if gave_up():
                    return  # another range gave this file up meanwhile
                raise
            try:
                self.source.read_range_into(state.obj.key, landed.offset, end,
                                            _writer(fd, state.writing), buf, gave_up, digest,
                                            landed.add)
            finally:
                os.close(fd)
                engine.count(got=landed.offset - before)
            if landed.offset != end and not gave_up():
                raise TransientError(f"range {start}-{end - 1} of {state.obj.key!r}: received "
                                     f"{landed.offset - start} of {end - start} bytes")

        try:
            engine.retrying(attempt)
        finally:
            kept = False
            if inline:
                with engine.lock:
                    seg.hashing = False
                    # Not kept when its parts turned out uneven meanwhile and the range
                    # ran past its segment, or the object is to be checked by size only.
                    kept = landed.offset == end and end <= seg.end and seg.digest is not None
                    if kept:
                        seg.digest, seg.hashed = digest, end
        return kept

    def _advance(self, state: plan.LargeFile, seg: plan.Segment) -> None:
        """Hashes ``seg`` forward over every finished range that continues its hashed
        prefix (reading back from the page cache), one hasher a segment, segments in
        parallel on their threads; the object is finished once every range is written,
        its parts known and every segment hashed (whichever thread sees that last)."""
        lock = self.engine.lock
        while True:
            with lock:
                end = None if seg.digest is None or seg.hashing else seg.done.pop(seg.hashed,
                                                                                  None)
                if end is None:
                    finish = (state.remaining == 0 and not state.finished
                              and not state.given_up and all(s.complete for s in state.segments))
                    state.finished |= finish
                    break
                seg.hashing, offset = True, seg.hashed
            try:
                assert state.tmp is not None
                hash_range(state.tmp, seg.digest, offset, end)
            finally:
                with lock:
                    seg.hashing, seg.hashed = False, end
        if finish:
            self._finish(state)

    def _stream_whole(self, state: plan.LargeFile, buf: memoryview) -> None:
        """The object in one streamed GET (a server without proper ranges)."""
        engine = self.engine
        with engine.lock:
            if state.streamed:
                return
            state.streamed = True
            asking = state.asking
        if state.tmp is not None:
            engine.drop_temp(state.tmp)
        obj = state.obj
        if asking:  # its parts are still being asked for: this GET needs them now
            engine.doubts.parts(obj)

        def attempt() -> str:
            tmp, fd = engine.new_temp(obj)
            parts = engine.doubts.layouts.get(obj.rel)  # as asked again after a guess
            check = Verifier(obj, parts) if checkable(obj, parts) else None
            try:
                got = self.source.read_whole_into(obj.key, obj.size, _writer(fd, state.writing),
                                                  buf, engine.stop.is_set, check)
                engine.count(got=got)
                if got != obj.size and not engine.stop.is_set():
                    raise TransientError(f"{obj.key!r}: received {got} bytes but the listing "
                                         f"says {obj.size}")
                if check is not None and not check.matches() and not engine.stop.is_set() \
                        and not engine.doubts.explained(
                            obj, lambda parts: file_matches(obj, tmp, parts)):
                    raise TransientError(f"{obj.key!r}: {check.why_not()} (ETag {obj.etag})")
            except BaseException:
                engine.drop_temp(tmp)
                raise
            finally:
                os.close(fd)
            return tmp

        tmp = engine.retrying(attempt)
        if not engine.stop.is_set():
            engine.commit(obj, tmp)

    def _finish(self, state: plan.LargeFile) -> None:
        """Every range in and hashed: the object lands, or (its sums do not match, and
        the store does not explain it) is fetched again whole, first of the queue."""
        engine, obj, tmp = self.engine, state.obj, state.tmp
        assert tmp is not None
        size = os.path.getsize(tmp)
        why = sums_mismatch(obj, size, [seg.digest for seg in state.segments])
        if why is not None and size == obj.size \
                and engine.doubts.explained(obj, lambda parts: file_matches(obj, tmp, parts)):
            why = None
        if why is None:
            engine.commit(obj, tmp)
            return
        engine.drop_temp(tmp)  # it never lands
        if state.attempt + 1 < self.settings.retry_attempts:
            # Bytes damaged on the way (or a store that served a bad range): the sum is
            # the whole object's, so the whole object comes again (this thread takes it
            # first: the others may have run out of work and ended).
            engine.count(retries=1)
            engine.log.info(f"{engine.label}: {obj.key!r}: {why}; fetching it again "
                            f"(attempt {state.attempt + 2} of {self.settings.retry_attempts})")
            with engine.lock:
                engine.queue.extendleft(reversed(engine.plan_large(obj, state.attempt + 1)))
            return
        raise DownloadError(f"{obj.key!r}: {why} after {state.attempt + 1} whole fetches; the "
                            "object store serves a broken object: check it, or upload it "
                            "again")


@dataclass(slots=True)
class _Landed:
    """How far one range has landed: where its next attempt starts."""

    offset: int

    def add(self, length: int) -> None:
        self.offset += length


def _writer(fd: int, lock: threading.Lock) -> Callable[[memoryview, int], None]:
    """Writes a whole chunk at its offset in ``fd``, holding ``lock`` (one a file)."""
    def write_at(data: memoryview, offset: int) -> None:
        with lock:
            landing.write_all(fd, data, offset)
    return write_at
