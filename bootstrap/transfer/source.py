"""The store's one face for a tree being fetched: :class:`Remote`, opened by :func:`remote`.

It lists (through :func:`.listing.list_objects`), reads whole objects and ranges, and
answers HEADs (an object's parts, its encryption). The download engine takes it and
nothing else of the store's. Every store failure inside :func:`remote` leaves as one
clear :class:`~bootstrap.errors.DownloadError` line.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..config.location import Location
from ..errors import BootstrapError
from ..log import Log
from ..storage import retry
from ..storage.base import Store, credentials, open_store
from ..storage.errors import StorageError
from .explain import explain
from .listing import RemoteObject
from .loop import run_threads
from .verify import Layout, etag_is_not_its_md5, layout

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..config.settings import Transfer
    from ..config.storage import Credentials
    from ..storage.signed import SignedClient, WriteAt


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
