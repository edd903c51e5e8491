"""What a body is checked against: the store's own sum in the listing, in one place for
the download engine and the relay.

* A plain ETag is the object's MD5.
* A multipart ETag (``-N``) is ``MD5(MD5(part 1) ... MD5(part N))-N``, as S3 and OBS sum
  multipart uploads. Checking it needs the parts' lengths, which the listing does not
  give: :func:`layout` asks the store (HeadObject ``partNumber=k``; one request when
  part 1's length splits the object into equal parts, as every common uploader writes
  them, else one per part, up to MAX_HEADS). Each part is then hashed on its own, so
  the engine hashes parts in parallel as their ranges land. With three parts or more,
  equal parts from part 1 alone are a guess (6 + 5 + 6 MiB reads as 6 + 6 + 5): a body
  that does not match a layout that may be one (:func:`guessed`) is checked again
  against every part's length (``every``) before it counts as damaged.
* An object the store encrypts on its side has an ETag of the same shape that is not
  the MD5 of its bytes (OBS: any server-side encryption, SSE-KMS or SSE-OBS, as a
  bucket's default encryption sets it; S3: SSE-KMS and SSE-C, while SSE-S3's ETag is
  still the MD5). Nothing in a listing says which objects those are, so a body whose
  sum does not match has the store asked (:func:`etag_is_not_its_md5`) before it counts
  as damaged; those, and anything else (a store that does not answer for parts), can
  be checked by size only; the fetch says how many were.

MD5 is weak against collisions, not against second preimages: a corrupted or forged
body would have to match a sum the store already fixed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..storage.errors import TransientError

if TYPE_CHECKING:
    from ..log import Log
    from .listing import RemoteObject

Layout = tuple[int, ...]  # the parts' lengths, in order
MAX_HEADS = 100  # uneven parts: at most this many HEADs for one object


def uniform(size: int, parts: int, first: int, reported: int | None) -> Layout | None:
    """The layout when ``first`` (part 1's length, from the store) splits ``size`` bytes
    into the ETag's ``parts`` equal parts, the last one shorter; else None."""
    if reported not in (None, parts) or first <= 0 or \
            not first * (parts - 1) < size <= first * parts:
        return None
    return (first,) * (parts - 1) + (size - first * (parts - 1),)


def layout(obj: RemoteObject, part_length: Callable[[int], tuple[int, int | None]],
           every: bool = False) -> Layout | None:
    """``obj``'s parts, from ``part_length(k)`` (HeadObject ``partNumber=k``: its length
    and the count the store reports); None when the store cannot say (it ignores
    ``partNumber``, or the lengths do not add up to the listed size). ``every``: each
    part's length asked, the equal-parts guess not taken."""
    parts = obj.parts
    assert parts is not None
    first, reported = part_length(1)
    found = None if every else uniform(obj.size, parts, first, reported)
    if found is not None or reported != parts or parts > MAX_HEADS:
        return found
    lengths = [first] + [part_length(k)[0] for k in range(2, parts + 1)]
    if min(lengths) <= 0 or sum(lengths) != obj.size:
        return None
    return tuple(lengths)


def guessed(parts: Layout) -> bool:
    """Whether ``parts`` may be :func:`layout`'s guess from part 1 alone rather than
    every part's length: three parts or more, all but the last of one length."""
    return len(parts) >= 3 and len(set(parts[:-1])) == 1


def truer_parts(obj: RemoteObject, parts: Layout | None,
                ask_every: Callable[[RemoteObject], Layout | None]) -> Layout | None:
    """For a body that did not match ``parts``: when they may be the equal-parts guess
    (see :func:`guessed`), every part's length asked (``ask_every``: :func:`layout` with
    ``every``); the store's answer when it differs from the guess, else None (the
    mismatch stands)."""
    if parts is None or not guessed(parts):
        return None
    exact = ask_every(obj)
    return exact if exact is not None and exact != parts else None


def boundaries(parts: Layout) -> list[tuple[int, int]]:
    """Each part's ``[start, end)``."""
    out, start = [], 0
    for length in parts:
        out.append((start, start + length))
        start += length
    return out


def multipart_etag(digests: Sequence[bytes]) -> str:
    """The ETag S3 (and OBS) give a multipart object: the MD5 of its parts' MD5 digests,
    then ``-`` and the number of parts (downloads check it, uploads expect it)."""
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(digests)}"


def combined(obj: RemoteObject, digests: Sequence[bytes]) -> bool:
    """Do the parts' MD5 digests make ``obj``'s multipart ETag?"""
    return multipart_etag(digests) == obj.etag


def hash_range(path: str | os.PathLike[str], digest: Any, start: int, end: int) -> None:
    """Adds bytes ``[start, end)`` of the file at ``path`` to ``digest`` (a hashlib object;
    on a thread the GIL is free while reading and hashing); a file cut short adds what
    it has (the size check says so)."""
    view = memoryview(bytearray(1 << 20))
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        while start < end:
            n = fh.readinto(view[: min(len(view), end - start)])
            if not n:
                return
            digest.update(view[:n])
            start += n


def file_matches(obj: RemoteObject, path: str | os.PathLike[str], parts: Layout) -> bool:
    """Do the parts of the file at ``path``, cut at ``parts``, make ``obj``'s ETag? (A
    body already written, checked again against a layout learnt after it landed.)"""
    if os.path.getsize(path) != sum(parts):
        return False
    digests = []
    for start, end in boundaries(parts):
        digest = hashlib.md5(usedforsecurity=False)
        hash_range(path, digest, start, end)
        digests.append(digest.digest())
    return combined(obj, digests)


def etag_is_not_its_md5(encryption: str, server: str) -> bool:
    """Whether an object the store says is encrypted with ``encryption`` (HeadObject's
    ``x-amz-server-side-encryption``, "" for none) by a server named ``server`` has an
    ETag that is not the MD5 of its bytes: every server-side encryption of OBS; S3's
    SSE-KMS (``aws:kms``, ``aws:kms:dsse``) and SSE-C, not its SSE-S3 (``AES256``, which
    S3 now applies to every object: its ETags stay checkable)."""
    if not encryption:
        return False
    return encryption.upper() != "AES256" or server.upper().startswith("OBS")


def checkable(obj: RemoteObject, parts: Layout | None) -> bool:
    return obj.md5 is not None or parts is not None


class Verifier:
    """The store's sum of one object, recomputed over bytes as they arrive, however the
    stream is cut: the MD5 (a plain ETag, ``parts`` None) or the parts' MD5s cut at the
    lengths in ``parts`` (a multipart ETag)."""

    def __init__(self, obj: RemoteObject, parts: Layout | None) -> None:
        self.obj = obj
        self.parts = list(parts) if parts is not None else None
        self._part: Any = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._digests: list[bytes] = []
        self.seen = 0

    def update(self, data: bytes | memoryview) -> None:
        self.seen += len(data)
        if self.parts is None:
            self._part.update(data)
            return
        view = memoryview(data)
        while view:
            index = len(self._digests)
            if index >= len(self.parts):  # more bytes than the parts: matches() says no
                self._in_part += len(view)
                return
            take = min(len(view), self.parts[index] - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.parts[index]:
                self._digests.append(self._part.digest())
                self._part, self._in_part = hashlib.md5(usedforsecurity=False), 0

    def matches(self) -> bool:
        if self.seen != self.obj.size:
            return False
        if self.parts is None:
            return bool(self._part.hexdigest() == self.obj.md5)
        return self._in_part == 0 and combined(self.obj, self._digests)

    def why_not(self) -> str:
        if self.seen != self.obj.size:
            return f"{self.seen} bytes, not {self.obj.size}"
        return "MD5 differs" if self.parts is None else "the parts' MD5s differ from the ETag"


class SumDiffers(TransientError):
    """A body of the listed length whose sum is not the listing's (retried, unless the
    store explains it: see :meth:`Doubts.explained`)."""


def check_body(obj: RemoteObject, data: memoryview, parts: Layout | None) -> None:
    """A whole body in memory against the listing; raises TransientError (retried), or
    SumDiffers when its length is right and its sum is not."""
    if len(data) != obj.size:
        raise TransientError(f"{obj.key!r}: received {len(data)} bytes but the listing says "
                             f"{obj.size}")
    if obj.md5 is not None:
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != obj.md5:
            raise SumDiffers(f"{obj.key!r}: MD5 {got} does not match the ETag {obj.md5}")
    elif parts is not None and not body_matches(obj, data, parts):
        raise SumDiffers(f"{obj.key!r}: the parts' MD5s do not make the ETag {obj.etag}")


def body_matches(obj: RemoteObject, data: memoryview, parts: Layout) -> bool:
    """Do ``data``'s parts, cut at ``parts``, make ``obj``'s multipart ETag?"""
    return combined(obj, [hashlib.md5(data[s:e], usedforsecurity=False).digest()
                          for s, e in boundaries(parts)])


def sums_mismatch(obj: RemoteObject, size: int, digests: Sequence[Any]) -> str | None:
    """Why a large object's file (``size`` bytes, its segments' ``digests``: None where
    only the size can be checked) does not match its listing, or None."""
    if size != obj.size:
        return f"{size} bytes, not the listed {obj.size}"
    if digests[0] is None:
        return None  # nothing to check but the size
    if obj.md5 is not None:
        got = digests[0].hexdigest()
        return None if got == obj.md5 else f"MD5 {got} does not match the ETag {obj.md5}"
    if combined(obj, [d.digest() for d in digests]):
        return None
    return f"the parts' MD5s do not make the ETag {obj.etag}"


class Asks(Protocol):
    """The questions a fetch asks its store about one object (any thread)."""

    def parts_of(self, obj: RemoteObject, every: bool = False) -> Layout | None: ...

    def encrypted(self, obj: RemoteObject) -> bool: ...


class Doubts:
    """What one fetch knows and asks about its objects' sums: the multipart objects'
    parts (``layouts``), asked once an object, and, when a body of the listed length does
    not match, whether the store explains it (:meth:`explained`). Any thread."""

    def __init__(self, store: Asks | None, log: Log, label: str,
                 layouts: Mapping[str, Layout] | None = None) -> None:
        self.store = store  # None: nothing to ask (sizes and known layouts only)
        self.log, self.label = log, label
        self.layouts = dict(layouts or {})
        self._asked: set[str] = set()
        self._asked_every: set[str] = set()
        self._encrypted: dict[str, bool] = {}
        self.encrypted_count = 0  # objects the store encrypts: checked by size only
        self._lock = threading.Lock()

    def will_ask(self, obj: RemoteObject) -> bool:
        """Whether ``obj``'s parts are yet to be asked of the store (once an object)."""
        return (self.store is not None and obj.md5 is None and obj.parts is not None
                and obj.rel not in self.layouts and obj.rel not in self._asked)

    def asking(self, obj: RemoteObject) -> None:
        """``obj``'s parts are being asked (see :meth:`will_ask`)."""
        with self._lock:
            self._asked.add(obj.rel)

    def parts(self, obj: RemoteObject) -> Layout | None:
        """``obj``'s parts as the store gives them (kept as its layout), or None."""
        found = self.store.parts_of(obj, False) if self.store is not None else None
        if found is not None:
            with self._lock:
                self.layouts.setdefault(obj.rel, found)
        return found

    def explained(self, obj: RemoteObject, recheck: Callable[[Layout], bool]) -> bool:
        """Whether a body of the listed length whose sum is not the listing's is sound all
        the same, the store asked: its parts were the equal-parts guess and their lengths
        from the store make it match (``recheck`` hashes it again, cut at them: see
        :meth:`asked_again`), or the store encrypts it, so its ETag is not its MD5 (see
        :meth:`encrypted_by_store`). False: damaged on the way."""
        exact = self.asked_again(obj)
        if exact is not None and recheck(exact):
            return True
        return self.encrypted_by_store(obj)

    def asked_again(self, obj: RemoteObject) -> Layout | None:
        """A multipart body did not match ``obj``'s known parts, which may be the
        equal-parts guess from part 1 alone (see :func:`guessed`): every part's length is
        asked of the store, once an object. Returns the store's answer when it differs
        from the guess (the layout from then on), else None."""
        store = self.store
        with self._lock:
            parts = self.layouts.get(obj.rel)
            if store is None or obj.rel in self._asked_every:
                return None
            self._asked_every.add(obj.rel)
        exact = truer_parts(obj, parts, lambda o: store.parts_of(o, True))
        if exact is None:
            return None
        with self._lock:
            self.layouts[obj.rel] = exact
        self.log.info(f"{self.label}: {obj.key!r}: its parts are not of equal lengths "
                      f"({len(exact)} parts); checked again against each part's length")
        return exact

    def encrypted_by_store(self, obj: RemoteObject) -> bool:
        """Whether the store encrypts ``obj`` on its side, so that its ETag is not the MD5
        of its bytes and the size is all there is to check (see
        :func:`etag_is_not_its_md5`); asked once an object, counted once."""
        with self._lock:
            known = self._encrypted.get(obj.rel)
        if known is None:
            known = self.store is not None and self.store.encrypted(obj)
            with self._lock:
                if obj.rel not in self._encrypted:
                    self._encrypted[obj.rel] = known
                    self.encrypted_count += known
        return known
