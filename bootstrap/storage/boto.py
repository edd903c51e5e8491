"""The fallback backend: boto3 on a thread pool, behind the same :class:`~.base.Store`.

For a Python or platform without an obstore wheel (obstore needs Python >= 3.11),
and for the control-plane calls object_store does not expose. Slower per request
(~2 ms of botocore Python each, under the GIL) but complete: every PUT and part
carries its ``Content-MD5``, and a ranged GET is accepted when its ``Content-Range``
and length are the ones asked for, whatever its 2xx status (``rclone serve s3``
answers ranges with 200).

Configured for OBS: SigV4, the endpoint's addressing style, checksums only
``when_required`` (OBS rejects the CRC headers boto3 >= 1.36 sends by default),
botocore's own retries off (:mod:`.retry` bounds them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import retry
from .errors import StorageError
from .tls import system_cafile

if TYPE_CHECKING:
    from ..config.settings import Transfer
    from ..config.storage import Credentials, Endpoint

T = TypeVar("T")


def translate(exc: BaseException, operation: str) -> StorageError:
    from botocore import exceptions as bce
    from botocore.parsers import ResponseParserError

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return StorageError(operation, kind="http", status=status,
                            code=str(err.get("Code", "") or status),
                            message=str(err.get("Message", ""))[:300])
    if isinstance(exc, bce.NoCredentialsError):
        return StorageError(operation, kind="credentials", message="no credentials")
    if isinstance(exc, bce.SSLError):
        return StorageError(operation, kind="tls", message=str(exc)[:300])
    if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
        return StorageError(operation, kind="timeout", message="timed out")
    if isinstance(exc, bce.EndpointConnectionError):
        return StorageError(operation, kind="connect", message="connection refused")
    if isinstance(exc, ResponseParserError):
        return StorageError(operation, kind="not_s3", message="unparseable response")
    return StorageError(operation, kind="io", message=f"{type(exc).__name__}: {exc}"[:300])


def _no_expect(request: Any, **_: Any) -> None:
    request.headers.pop("Expect", None)


class BotoStore:
    def __init__(self, endpoint: Endpoint, creds: Credentials, bucket: str,
                 settings: Transfer) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import boto3
        import botocore
        from botocore.config import Config

        self.backend = f"boto3 {botocore.__version__}"
        self.bucket = bucket
        threads = min(settings.workers, 64)
        options: dict[str, Any] = dict(
            signature_version="s3v4",
            s3={"addressing_style": endpoint.addressing},
            max_pool_connections=threads,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"total_max_attempts": 1},
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            config = Config(**options)
        except TypeError:  # botocore < 1.36 knows neither checksum option nor needs them
            del options["request_checksum_calculation"], options["response_checksum_validation"]
            config = Config(**options)

        verify: Any = (endpoint.ca_bundle or system_cafile() or True) if endpoint.verify \
            else False
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint.url, verify=verify, region_name=endpoint.region,
            config=config, aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key, aws_session_token=creds.token)
        # botocore asks before sending a body over 1 MB (Expect: 100-continue); servers
        # of other lineages (rclone serve s3) drop such a request instead of answering.
        # Nothing is gained on a store one round trip away: send the body at once.
        self._client.meta.events.register("before-send.s3", _no_expect)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="s3")
        self._attempts, self._deadline = settings.retry_attempts, settings.retry_deadline

    async def _run(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except Exception as exc:  # noqa: BLE001 - every library failure is translated
            raise translate(exc, operation) from None

    async def get(self, key: str, size: int) -> memoryview:
        def work() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return memoryview(await self._run("GetObject", work))

    async def put(self, key: str, data: bytes, md5: bytes) -> str:
        resp = await self._run("PutObject", lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=data,
            ContentMD5=base64.b64encode(md5).decode()))
        return str(resp.get("ETag", "")).strip('"')

    async def delete(self, key: str) -> None:
        await self._run("DeleteObject", lambda: self._client.delete_object(
            Bucket=self.bucket, Key=key))

    async def put_parts(self, key: str, parts: AsyncIterator[tuple[bytes, bytes]],
                        part_size: int, concurrency: int) -> str:
        upload_id = (await self._run("CreateMultipartUpload",
                                     lambda: self._client.create_multipart_upload(
                                         Bucket=self.bucket, Key=key)))["UploadId"]
        slots = asyncio.Semaphore(concurrency)
        sent: list[asyncio.Future[dict[str, Any]]] = []

        async def send(number: int, data: bytes, md5: bytes) -> dict[str, Any]:
            def one() -> Any:  # a failed part is retried alone, not the whole upload
                return self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=data, ContentMD5=base64.b64encode(md5).decode())

            try:
                resp = await retry.call_async(lambda: self._run("UploadPart", one),
                                              self._attempts, self._deadline)
            finally:
                slots.release()
            return {"PartNumber": number, "ETag": resp["ETag"]}

        try:
            number = 0
            async for data, md5 in parts:
                await slots.acquire()
                number += 1
                sent.append(asyncio.ensure_future(send(number, data, md5)))
            done = await asyncio.gather(*sent)
            resp = await self._run("CompleteMultipartUpload",
                                   lambda: self._client.complete_multipart_upload(
                                       Bucket=self.bucket, Key=key, UploadId=upload_id,
                                       MultipartUpload={"Parts": list(done)}))
        except BaseException:
            for task in sent:
                task.cancel()
            with contextlib.suppress(StorageError):  # the first error is the one to report
                await self._run("AbortMultipartUpload", lambda: self._client.
                                abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                       UploadId=upload_id))
            raise
        return str(resp.get("ETag", "")).strip('"')

    def close(self) -> None:
        self._pool.shutdown(wait=False)
