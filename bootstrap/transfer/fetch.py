"""Fetch a tree: the code directory (or ``bootstrap sync``'s source) onto this node.

One call, :func:`fetch`: a local source is copied, a remote one is listed
(:mod:`.listing`) and downloaded (:mod:`.download`, whose docstring is the
contract). Every failure leaves as a :class:`~bootstrap.errors.DownloadError` with
one line saying what to fix.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.location import Location
from ..errors import BootstrapError, DownloadError
from ..log import Log
from ..storage import retry
from ..storage.base import Store, credentials, open_store
from ..storage.errors import StorageError
from .download import Engine, Stats
from .explain import explain
from .listing import RemoteObject, list_objects
from .loop import run_threads
from .manifest import Manifest
from .verify import Layout, etag_is_not_its_md5, layout

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..config.settings import Transfer
    from ..config.storage import Credentials
    from ..storage.signed import SignedClient, WriteAt


def copy_local(src: Path, dest: Path) -> Stats:
    """The ``file://`` / plain-path case: the tree is copied, as an object store's would be."""
    stats = Stats(backend="local copy")
    started = time.monotonic()
    if not src.is_dir():
        raise DownloadError(f"code directory {src} does not exist or is not a folder; check "
                            "DLS_APP_URL")
    if src.resolve() == dest.resolve():
        return stats
    import shutil  # here: it imports zlib, bz2 and lzma, ~3 ms every object-store fetch would pay

    try:
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        raise DownloadError(f"cannot copy {src} to {dest}: {exc}") from None
    for _, _, names in os.walk(dest):
        stats.files += len(names)
    stats.seconds = time.monotonic() - started
    return stats


def manifest_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.bootstrap-manifest.jsonl"


def fetch(location: Location, dest: Path, settings: Transfer, log: Log) -> Stats:
    """Brings the tree at ``location`` to ``dest``; raises DownloadError with the reason."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check that "
                            "BOOTSTRAP_HOME is writable") from None
    if not location.is_remote:
        assert location.path is not None
        return copy_local(location.path, dest)
    with remote(location, settings, log) as source:
        objects, folders = list_objects(source.client, location, settings)
        return source.download(objects, folders, dest,
                               Manifest(manifest_path(dest), location.url), log)


class Remote:
    """A remote tree being fetched, the one face of the store the engine sees: it lists
    (through :func:`.listing.list_objects`), reads whole objects and ranges, and answers
    HEADs (an object's parts, its encryption). Credentials are resolved once; one signed
    client serves the listing, the large objects' ranges, a few files' GETs and the
    HEADs; the store (the native core or boto3) is opened only when many whole objects
    need it, and closed with the session."""

    def __init__(self, location: Location, settings: Transfer, creds: Credentials,
                 client: SignedClient, log: Log | None = None) -> None:
        self.location, self.settings, self.creds, self.client = location, settings, creds, client
        self.log = log
        self._store: Store | None = None

    @property
    def backend(self) -> str:
        """What served the whole objects, for the fetch's line."""
        return self._store.backend if self._store is not None else "signed GETs"

    def store(self) -> Store:
        """The store, opened on first use: a tree of large objects and a few small ones
        never loads the native core (obstore's import and its TLS roots: ~20-30 ms of
        the job's start). Not thread-safe: opened before the workers start."""
        if self._store is None:
            self._store = open_store(self.settings, self.creds, self.location.bucket, self.log)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self.client.close()

    @staticmethod
    def unchanged(objects: list[RemoteObject], dest: Path, manifest: Manifest) -> set[str]:
        """The objects ``manifest`` vouches for in ``dest`` (same size and ETag as listed,
        the file as it was recorded): asked once a tree, and handed on."""
        return {o.rel for o in objects if manifest.unchanged(o.rel, o.size, o.etag, dest / o.rel)}

    def download(self, objects: list[RemoteObject], folders: list[str], dest: Path,
                 manifest: Manifest, log: Log, label: str = "fetch",
                 stats: Stats | None = None, layouts: dict[str, Layout] | None = None,
                 unchanged: set[str] | None = None, pulled: set[str] | None = None) -> Stats:
        """Fetches ``objects`` into ``dest``, but the ``unchanged`` ones (judged here when
        not given, see :meth:`unchanged`) and those a peer already gave (``pulled``), each
        verified against its ETag (``layouts``: multipart objects' parts already known;
        the rest are asked for: a whole object's before the fetch, as its body is checked
        in one piece, a large one's by the engine beside its first range); ``stats``,
        when given, is the one the engine counts into as it goes."""
        if unchanged is None:
            unchanged = self.unchanged(objects, dest, manifest)
        done = unchanged | (pulled or set())
        known = dict(layouts or {})
        known.update(self.layouts([o for o in objects if o.parts and o.rel not in known
                                   and o.size < self.settings.multipart_threshold
                                   and o.rel not in done]))

        engine = Engine(self, dest, manifest, log, label, stats, known)
        engine.plan(objects, folders, unchanged, pulled or set())
        manifest.open_for_append()
        return engine.run()

    # -- reads (any thread)
    def get_object(self, key: str, size: int) -> bytes:
        return self.client.get_object(self.location.bucket, key, size)

    def read_range_into(self, key: str, start: int, end: int, write_at: WriteAt,
                        buf: memoryview, stop: Callable[[], bool], digest: Any = None,
                        wrote: Callable[[int], None] | None = None) -> int:
        return self.client.read_range_into(self.location.bucket, key, start, end, write_at,
                                           buf, stop, digest, wrote)

    def read_whole_into(self, key: str, size: int, write_at: WriteAt, buf: memoryview,
                        stop: Callable[[], bool], digest: Any = None) -> int:
        return self.client.read_whole_into(self.location.bucket, key, size, write_at, buf,
                                           stop, digest)

    # -- HEADs (any thread)
    def parts_of(self, obj: RemoteObject, every: bool = False) -> Layout | None:
        """``obj``'s parts, asked of the store (retried; ``every``: each part's length,
        see :func:`~.verify.layout`); None when it cannot answer for them: the size is
        then all there is to check. Any thread."""
        try:
            return layout(obj, lambda k: retry.call(
                lambda: self.client.part_length(self.location.bucket, obj.key, k),
                self.settings.retry_attempts, self.settings.retry_deadline), every)
        except Exception:  # noqa: BLE001 - unanswered: the size is all we can check
            return None

    def encrypted(self, obj: RemoteObject) -> bool:
        """Whether the store encrypts ``obj`` on its side, so that its ETag is not the MD5
        of its bytes (see :func:`~.verify.etag_is_not_its_md5`): asked with a HEAD
        (retried); False when it cannot say, so a mismatch stands. Any thread."""
        try:
            found, server = retry.call(
                lambda: self.client.encryption(self.location.bucket, obj.key),
                self.settings.retry_attempts, self.settings.retry_deadline)
        except (StorageError, OSError):
            return False
        return etag_is_not_its_md5(found, server)

    def layouts(self, objects: list[RemoteObject]) -> dict[str, Layout]:
        """The parts of each multipart object in ``objects`` (what lets its bytes be
        checked against its ETag, see :mod:`.verify`), asked of the store, a few at a
        time; an object the store cannot answer for is left out (size check only)."""

        todo = deque(o for o in objects if o.parts)
        found: dict[str, Layout] = {}

        def worker() -> None:
            try:
                while True:
                    try:
                        obj = todo.popleft()  # atomic: the threads share the queue
                    except IndexError:
                        return
                    parts = self.parts_of(obj)
                    if parts is not None:
                        found[obj.rel] = parts
            finally:
                self.client.close()  # this worker thread's connection ends with it

        run_threads(min(8, len(todo)), worker, threading.Event())
        return found


@contextmanager
def remote(location: Location, settings: Transfer,
           log: Log | None = None) -> Iterator[Remote]:
    """The session for one remote tree; every store failure inside it leaves as one
    clear DownloadError line."""
    from ..storage.signed import SignedClient

    try:
        creds = credentials(settings)
        client = SignedClient(settings.endpoint, creds, settings.connect_timeout,
                              settings.read_timeout)
        source = Remote(location, settings, creds, client, log)
        try:
            yield source
        finally:
            source.close()
    except BootstrapError:
        raise
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one clear line
        raise explain(exc, location, settings.endpoint.where) from None
