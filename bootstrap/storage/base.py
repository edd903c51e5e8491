"""The one interface every transfer goes through, whichever library is underneath.

A :class:`Store` is bound to one bucket and speaks in whole keys. Its methods are
coroutines: the engines (:mod:`bootstrap.transfer.fetch`, :mod:`bootstrap.transfer.upload`) keep
hundreds of requests in flight from one thread, bounded by a memory budget, not by
a thread count. Every failure is a :class:`~.errors.StorageError`; verifying bytes
(size, MD5) is the engines' job, so it happens the same way on every backend.

Backends (:func:`open_store`):

* ``native`` (:mod:`.native`): obstore, the Python binding of the Rust
  ``object_store`` crate. Requests run on its own Tokio threads, off the GIL.
* ``boto3`` (:mod:`.boto`): the fallback where no obstore wheel exists (Python < 3.11,
  an exotic platform), on a thread pool.

``BOOTSTRAP_S3_BACKEND`` picks one (``auto``: native when it imports). Two kinds of
request go around the store, through :mod:`.signed`, whatever the backend: listing
(object_store rewrites keys) and the ranged GETs of large objects (measured faster
into reused buffers on threads).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from ..config.storage import Credentials
from ..errors import ConfigError
from .errors import StorageError
from .tls import own_certificate_in_bundle

if TYPE_CHECKING:
    from ..config.settings import Transfer
    from ..log import Log


class Store(Protocol):
    """The one storage interface: the native and the boto3 stores are checked against it."""

    backend: str  # for logs: "native (obstore 0.12.1)", "boto3 1.40.0"

    async def get(self, key: str, size: int) -> memoryview:
        """The whole object, whose listed size is ``size`` (> 0)."""

    async def put(self, key: str, data: bytes, md5: bytes) -> str:
        """One PUT; returns the ETag the store reports (without quotes)."""

    async def put_parts(self, key: str, parts: AsyncIterator[tuple[bytes, bytes]],
                        part_size: int, concurrency: int) -> str:
        """A multipart upload of ``(part, its MD5)`` in order; completed, or aborted on
        any failure (no dangling upload); returns the final ETag."""

    async def delete(self, key: str) -> None:
        """Removes one object (absent is fine: S3 answers 204 either way)."""

    def close(self) -> None:
        """Releases connections and threads."""


def credentials(transfer: Transfer) -> Credentials:
    """The environment's keys, else botocore's chain (config files, container and
    instance roles; imported only then: ~100 ms), frozen for one transfer."""
    if transfer.credentials is not None:
        return transfer.credentials
    import botocore.session

    creds = botocore.session.Session().get_credentials()
    if creds is None:
        raise StorageError("credentials", kind="credentials",
                           message="no object-store credentials found")
    frozen = creds.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def open_store(transfer: Transfer, creds: Credentials, bucket: str,
               log: Log | None = None) -> Store:
    """The store for ``bucket`` on the backend BOOTSTRAP_S3_BACKEND picks (``auto``:
    native when obstore imports, unless the endpoint's certificate is one the native
    core cannot verify: see :mod:`.tls`; ``log`` hears that reason)."""
    backend = transfer.backend
    if backend in ("auto", "native"):
        try:
            from .native import NativeStore, endpoint_url
        except ImportError:
            if backend == "native":
                raise ConfigError("BOOTSTRAP_S3_BACKEND=native but obstore is not installed "
                                  "for this Python; pip install obstore (Python >= 3.11), "
                                  "or unset it for the boto3 fallback") from None
        else:
            endpoint = transfer.endpoint
            why = None
            if endpoint.verify and endpoint.ca_bundle and backend == "auto":
                why = own_certificate_in_bundle(endpoint_url(endpoint, bucket),
                                                endpoint.ca_bundle, transfer.connect_timeout)
            if why is None:
                return NativeStore(endpoint, creds, bucket, transfer)
            if log is not None:
                log.info(f"storage: boto3 engine for {endpoint.where}: {why}")
    from .boto import BotoStore

    return BotoStore(transfer.endpoint, creds, bucket, transfer)
