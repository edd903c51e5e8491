"""The native backend: obstore (Python bindings of the Rust ``object_store`` crate).

Chosen by measurement (bench/README.md, "Library decision"): requests, TLS, SigV4
and body transfer run on obstore's Tokio threads, so hundreds of requests are in
flight while the Python thread only plans, hashes and renames; ~6 ms of import.

How the OBS quirks are met (each asserted at a recording proxy in
tests/test_storage.py): SigV4 always; virtual-hosted addressing for domain
endpoints (object_store wants the bucket in the endpoint's host then), path style
for IPs and single-label hosts; no flexible-checksum headers (object_store sends
none unless asked); a session token as ``x-amz-security-token``; ``S3_VERIFY_SSL=0``
accepts any certificate; ``AWS_CA_BUNDLE`` adds its roots to the trusted ones.

Integrity of uploads: object_store cannot send a per-request ``Content-MD5``.
Every PUT and part is instead signed with its SHA-256 (SigV4's signed payload:
the server refuses a body that does not match), and the engine checks the ETag
the store returns against the MD5 it computed itself.

Its own retries are off: :mod:`.retry` bounds attempts and time for every backend.
Its errors are text; :func:`translate` reads the status, S3 code and failure kind
out of them, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import obstore
import obstore.exceptions

from ..errors import ConfigError
from .errors import StorageError
from .signed import SignedClient

if TYPE_CHECKING:
    from ..config.settings import Transfer
    from ..config.storage import Credentials, Endpoint

# The error classifier's patterns, as text: compiled on the first failure (re caches
# them), not on every download's start (~2 ms for the four).
_STATUS = r"status code: (\d{3})"
_CODE = r"<Code>([^<]{1,100})</Code>"
_MESSAGE = r"<Message>([^<]{0,300})</Message>"
_TLS = r"(?i)certificate|UnknownIssuer|InvalidCertificate|tls handshake|TLS"


def translate(exc: BaseException, operation: str) -> StorageError:
    """obstore's exception (its text: the library has no structured fields) in the
    one error model. Only the library's own failures are translated: anything else (an
    AttributeError, a TypeError: a bug of ours) is raised again as it is, so that it
    surfaces as an internal error (exit 70), never as a network or TLS failure; an
    option this obstore does not know is a usage error that names the version."""
    if not isinstance(exc, (obstore.exceptions.BaseError, OSError)):
        unknown = re.match(r"Invalid key: (\w+)", str(exc))
        if isinstance(exc, ValueError) and unknown:
            raise ConfigError(f"the installed obstore {obstore.__version__} does not know "
                              f"the option {unknown.group(1)!r}: the bootstrap needs obstore "
                              ">= 0.12 (pip install -U obstore), or set "
                              "BOOTSTRAP_S3_BACKEND=boto3") from None
        raise exc
    text = str(exc)
    head = text.split("\n\nDebug source:")[0]
    if "non-partial response" in text or "NotPartial" in text:
        return StorageError(operation, kind="not_partial",
                            message="a ranged GET was answered with the whole object")
    status = re.search(_STATUS, head)
    if status is not None:
        code = re.search(_CODE, text)
        message = re.search(_MESSAGE, text)
        return StorageError(operation, kind="http", status=int(status.group(1)),
                            code=code.group(1) if code else status.group(1),
                            message=message.group(1) if message else "")
    if re.search(_TLS, text):
        found = re.search(r"(invalid peer certificate: \w+|certificate verify failed[^\n]*)",
                          text)
        return StorageError(operation, kind="tls",
                            message=found.group(1) if found else "certificate not trusted")
    if "kind: Timeout" in text or "timed out" in text.lower():
        return StorageError(operation, kind="timeout", message="timed out")
    if "kind: Connect" in text or "Connection refused" in text or "dns error" in text:
        reason = re.search(r"(Connection refused|dns error[^\n,)]*|No route to host"
                           r"|Network is unreachable)", text)
        return StorageError(operation, kind="connect",
                            message=reason.group(1) if reason else "no connection")
    return StorageError(operation, kind="io", message=head.splitlines()[0][:300]
                        if head else type(exc).__name__)


def endpoint_url(endpoint: Endpoint, bucket: str) -> str:
    """object_store's endpoint: with virtual-hosted addressing the bucket is part of
    the host (``https://bucket.obs.region.myhuaweicloud.com``)."""
    url = endpoint.effective_url
    if endpoint.addressing != "virtual":
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{bucket}.{parts.netloc}", parts.path, "", ""))


class NativeStore:
    def __init__(self, endpoint: Endpoint, creds: Credentials, bucket: str,
                 settings: Transfer) -> None:
        from obstore.store import S3Store

        self.backend = f"native (obstore {obstore.__version__})"
        self._bucket = bucket
        self._signed: SignedClient | None = None  # made on the first delete
        self._signed_args = (endpoint, creds, settings.connect_timeout, settings.read_timeout)
        self._ranges = True  # False once the server answered a range with the whole object
        url = endpoint_url(endpoint, bucket)
        client: dict[str, Any] = {
            "allow_http": urlsplit(url).scheme == "http",
            "connect_timeout": f"{settings.connect_timeout}s",
            "read_timeout": f"{settings.read_timeout}s",
            # A whole request (a 16 MiB range on a slow link) may take long; stalls
            # are caught by read_timeout, so this is only a backstop.
            "timeout": "3600s",
            "user_agent": "modelarts-bootstrap",
        }
        if not endpoint.verify:
            client["allow_invalid_certificates"] = True
        elif endpoint.ca_bundle:
            try:
                client["root_certificate"] = Path(endpoint.ca_bundle).read_text()
            except OSError as exc:
                raise StorageError("configure", kind="tls",
                                   message=f"cannot read the CA bundle {endpoint.ca_bundle}: "
                                           f"{exc.strerror}") from None
        config: dict[str, Any] = {
            "endpoint": url,
            "region": endpoint.region,
            "access_key_id": creds.access_key,
            "secret_access_key": creds.secret_key,
            "virtual_hosted_style_request": endpoint.addressing == "virtual",
        }
        if creds.token:
            config["session_token"] = creds.token
        import datetime

        # Single requests are retried by our own policy (storage/retry.py), so this
        # store does not retry. A multipart upload is different: it is a conversation
        # (create, parts, complete) inside one put_async call, and when a part fails
        # object_store aborts the upload with one request; lose that request to a reset
        # and the upload dangles (measured: 1 run in 10 of the fault test). Its store
        # retries each request of the conversation, abort included.
        conversation = {
            "max_retries": settings.retry_attempts,
            "retry_timeout": datetime.timedelta(seconds=settings.retry_deadline),
            "backoff": {"init_backoff": datetime.timedelta(milliseconds=50),
                        "max_backoff": datetime.timedelta(seconds=2), "base": 2},
        }
        try:
            self._store = S3Store(bucket, config=config,  # type: ignore[arg-type]
                                  client_options=client,  # type: ignore[arg-type]
                                  retry_config={"max_retries": 0})
        except Exception as exc:  # noqa: BLE001 - obstore raises its own config errors
            raise translate(exc, "configure") from None
        # The uploads' store is made on the first multipart upload: each store parses the
        # system's CA bundle (~11 ms here), and most jobs only download. Its settings are
        # the first store's, which were just accepted.
        self._multipart_args = (bucket, config, client, conversation)
        self._multipart: S3Store | None = None

    async def get(self, key: str, size: int) -> memoryview:
        if self._ranges:
            # One await instead of two (GET, then its body): each await of obstore is a
            # wake-up of the event loop from a Tokio thread, and on 2,000 small files
            # the second one cost ~30% of the process's CPU.
            try:
                return memoryview(await obstore.get_range_async(self._store, key, start=0,
                                                                end=size))
            except Exception as exc:  # noqa: BLE001 - every library failure is translated
                error = translate(exc, "GetObject")
                if error.kind != "not_partial":
                    raise error from None
                self._ranges = False  # a server that answers ranges with 200: plain GETs
        try:
            result = await obstore.get_async(self._store, key)
            return memoryview(await result.bytes_async())
        except Exception as exc:  # noqa: BLE001 - every library failure is translated
            raise translate(exc, "GetObject") from None

    async def put(self, key: str, data: bytes, md5: bytes) -> str:
        try:
            result = await obstore.put_async(self._store, key, data, use_multipart=False)
        except Exception as exc:  # noqa: BLE001 - every library failure is translated
            raise translate(exc, "PutObject") from None
        return (result.get("e_tag") or "").strip('"')

    async def delete(self, key: str) -> None:
        # obstore deletes through the batch API (POST ?delete), which OBS accepts only
        # with a Content-MD5 it does not send: one signed DELETE instead.
        if self._signed is None:
            self._signed = SignedClient(*self._signed_args)
        await asyncio.to_thread(self._signed.delete, self._bucket, key)

    async def put_parts(self, key: str, parts: AsyncIterator[tuple[bytes, bytes]],
                        part_size: int, concurrency: int) -> str:
        async def chunks() -> AsyncIterator[bytes]:
            async for data, _ in parts:
                yield data

        try:
            # object_store aborts the multipart upload itself when a part fails.
            if self._multipart is None:
                from obstore.store import S3Store

                bucket, config, client, conversation = self._multipart_args
                self._multipart = S3Store(bucket, config=config,  # type: ignore[arg-type]
                                          client_options=client,  # type: ignore[arg-type]
                                          retry_config=conversation)  # type: ignore[arg-type]
            result = await obstore.put_async(self._multipart, key, chunks(),
                                             use_multipart=True,
                                             chunk_size=part_size,
                                             max_concurrency=concurrency)
        except Exception as exc:  # noqa: BLE001 - every library failure is translated
            raise translate(exc, "UploadPart") from None
        return (result.get("e_tag") or "").strip('"')

    def close(self) -> None:
        if self._signed is not None:  # obstore's connections close with the store object
            self._signed.close()
