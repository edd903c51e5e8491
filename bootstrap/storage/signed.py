"""ListObjectsV2 and ranged GETs of large objects (and the whole objects of a fetch of
few files), signed (SigV4) over plain ``http.client``: the requests we do not hand to
the native library.

Why not object_store (the native core) for listing too: it rewrites what the store
holds. It drops the trailing ``/`` of folder markers (``new/empty-dir/`` becomes an
empty *file* ``new/empty-dir``, and a console-made marker beside its children looks
like a file/folder clash), and one key it does not accept as a path (``a//b``,
``./x``, a control character) fails the whole listing without naming the key. A
listing is one request per 1,000 keys, never the hot path, so it is read here,
verbatim, and every key is judged by :mod:`bootstrap.transfer.paths` with a message that
names it. Nor boto3: ~200 ms of import and client creation on every job's start.

Why large objects' ranges come here too: measured on 4 x 64 MiB, obstore's streamed
range (the socket into its buffer, coalesced into chunks, then written) took 0.51 s
and 0.48 s of CPU where ``recv_into`` one reused buffer and ``pwrite`` from 8
threads took 0.38 s and 0.26 s (bench/README.md). Every byte is copied once in and
once out, and the threads' system calls run in parallel with the GIL released.

Failures are :class:`StorageError` like every backend's.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit
from xml.parsers import expat

from ..config.storage import Credentials, Endpoint
from .errors import StorageError
from .tls import system_cafile

if TYPE_CHECKING:
    from typing import Any

    # Writes all of a chunk at its offset in the destination (the caller's file: how
    # it serializes writers of one file is its business, see transfer.download).
    WriteAt = Callable[[memoryview, int], None]

_UNSIGNED = "UNSIGNED-PAYLOAD"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=endpoint.ca_bundle or system_cafile())
    if not endpoint.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SignedClient:
    """Signed requests over kept-alive connections, one per thread: listing pages, byte
    ranges read straight into a file (:meth:`read_range_into`), and the multipart
    housekeeping the libraries do not expose (:meth:`uploads`, :meth:`abort`)."""

    def __init__(self, endpoint: Endpoint, creds: Credentials, connect_timeout: float,
                 read_timeout: float) -> None:
        parts = urlsplit(endpoint.effective_url)
        self.endpoint = endpoint
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        default_port = 443 if self.https else 80
        self.port = parts.port if parts.port != default_port else None
        # What http.client will send as Host (no default port): what must be signed.
        self.netloc = self.host if self.port is None else f"{self.host}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self.creds = creds
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None

    def _connect(self, host: str) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.host == host:
            return conn
        if self.https:
            if self._tls is None:
                self._tls = tls_context(self.endpoint)
            conn = http.client.HTTPSConnection(host, self.port, timeout=self.connect_timeout,
                                               context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, self.port, timeout=self.connect_timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Closes this thread's connection (others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _headers(self, host_header: str, path: str, query: str,
                 extra: Mapping[str, str], method: str = "GET") -> dict[str, str]:
        """AWS Signature Version 4 for a request with an empty, unsigned payload."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())  # not datetime: ~1.5 ms to import
        day = amz_date[:8]
        region = self.endpoint.region
        headers = {"host": host_header, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": amz_date}
        if self.creds.token:
            headers["x-amz-security-token"] = self.creds.token
        headers.update(extra)
        names = sorted(headers)
        canonical = "\n".join([method, path, query,
                               "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                               ";".join(names), _UNSIGNED])
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = _hmac(("AWS4" + self.creds.secret_key).encode(), day)
        for part in (region, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.creds.access_key}/"
                                    f"{scope}, SignedHeaders={';'.join(names)}, "
                                    f"Signature={signature}")
        del headers["host"]  # http.client sends Host itself, with the same value
        return headers

    def _request(self, operation: str, bucket: str, key: str, query: Mapping[str, str],
                 extra: Mapping[str, str], method: str = "GET") -> http.client.HTTPResponse:
        """Sends a signed request; an error answer raises (its connection closed)."""
        if self.endpoint.addressing == "path":
            host, netloc = self.host, self.netloc
            path = f"{self.base_path}/{bucket}/{key}" if key else f"{self.base_path}/{bucket}"
        else:
            host, netloc, path = f"{bucket}.{self.host}", f"{bucket}.{self.netloc}", \
                f"{self.base_path}/{key}"
        path = quote(path, safe="/~")
        qs = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}"
                      for k, v in sorted(query.items()))
        try:
            conn = self._connect(host)
            conn.request(method, f"{path}?{qs}" if qs else path,
                         headers=self._headers(netloc, path, qs, extra, method))
            resp = conn.getresponse()
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception):
                raise socket_error(exc, operation) from None
            raise
        if resp.status >= 300:
            body = resp.read(64 * 1024)
            self.close()
            raise _error(resp.status, body, operation)
        return resp

    def _get(self, bucket: str, query: Mapping[str, str]) -> bytes:
        resp = self._request("ListObjectsV2", bucket, "", query, {})
        try:
            return resp.read()
        except Exception as exc:  # noqa: BLE001 - a socket failure in the model's terms
            self.close()
            raise socket_error(exc, "ListObjectsV2") from None

    def uploads(self, bucket: str, key: str) -> list[str]:
        """The ids of the multipart uploads in progress for exactly ``key``."""
        resp = self._request("ListMultipartUploads", bucket, "",
                             {"uploads": "", "prefix": key}, {})
        try:
            body = resp.read()
        except Exception as exc:  # noqa: BLE001 - a socket failure in the model's terms
            self.close()
            raise socket_error(exc, "ListMultipartUploads") from None
        try:
            _, _, uploads = _xml(body, "Upload")
        except ValueError:
            raise StorageError("ListMultipartUploads", kind="not_s3",
                               message="the answer is not XML") from None
        return [u["UploadId"] for u in uploads if u.get("Key") == key and u.get("UploadId")]

    def delete(self, bucket: str, key: str) -> None:
        """One DeleteObject (a plain DELETE: OBS wants Content-MD5 on the batch form)."""
        resp = self._request("DeleteObject", bucket, key, {}, {}, method="DELETE")
        resp.read()

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        """Aborts one multipart upload (its parts are freed)."""
        resp = self._request("AbortMultipartUpload", bucket, key, {"uploadId": upload_id}, {},
                             method="DELETE")
        resp.read()

    def part_length(self, bucket: str, key: str,
                    number: int = 1) -> tuple[int, int | None]:
        """HeadObject of part ``number``: its length and the parts count the store
        reports (None where it does not: a store that ignores ``partNumber`` answers for
        the whole object, which the caller's check against the ETag's count refuses)."""
        resp = self._request("HeadObject", bucket, key, {"partNumber": str(number)}, {},
                             method="HEAD")
        resp.read()
        count = resp.getheader("x-amz-mp-parts-count")
        return int(resp.getheader("Content-Length") or -1), \
            int(count) if count and count.isdigit() else None

    def encryption(self, bucket: str, key: str) -> tuple[str, str]:
        """HeadObject's word on ``key``'s server-side encryption: the algorithm
        (``x-amz-server-side-encryption`` or OBS's ``x-obs-...``; ``SSE-C`` for a
        customer's key; "" for none) and the ``Server`` that answered."""
        resp = self._request("HeadObject", bucket, key, {}, {}, method="HEAD")
        resp.read()
        found = resp.getheader("x-amz-server-side-encryption") \
            or resp.getheader("x-obs-server-side-encryption") or ""
        if not found and (resp.getheader("x-amz-server-side-encryption-customer-algorithm")
                          or resp.getheader("x-obs-server-side-encryption-customer-algorithm")):
            found = "SSE-C"
        return found, resp.getheader("Server") or ""

    def page(self, bucket: str, prefix: str,
             token: str | None) -> tuple[list[tuple[str, int, str]], str | None]:
        """One page: its ``(key, size, etag without quotes)`` and the next token (None:
        the listing is complete)."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        body = self._get(bucket, query)
        try:
            root, fields, contents = _xml(body, "Contents")
        except ValueError:
            raise StorageError("ListObjectsV2", kind="not_s3",
                               message="the listing is not XML") from None
        if root != "ListBucketResult":
            raise StorageError("ListObjectsV2", kind="not_s3",
                               message=f"the listing's root element is {root!r}")
        items = []
        for item in contents:
            size = item.get("Size") or "0"
            if not size.isdigit():
                raise StorageError("ListObjectsV2", kind="not_s3",
                                   message=f"the listing has a size {size!r}")
            items.append((item.get("Key") or "", int(size), (item.get("ETag") or "").strip('"')))
        truncated = (fields.get("IsTruncated") or "").lower() == "true"
        following = fields.get("NextContinuationToken") if truncated else None
        if truncated and not following:
            following = ""  # truncated without a token: the caller says it never ends
        return items, following

    def read_range_into(self, bucket: str, key: str, start: int, end: int,
                        write_at: WriteAt, buf: memoryview, stop: Callable[[], bool],
                        digest: Any = None, wrote: Callable[[int], None] | None = None) -> int:
        """Bytes ``[start, end)`` of ``key`` handed to ``write_at`` with their offsets,
        read into ``buf`` (no allocation per chunk: the kernel copies once into it, once
        out to the page cache), and fed to ``digest`` (a hashlib object) from ``buf`` on
        the way when one is given. Any 2xx whose Content-Range is the range asked for is
        accepted (``rclone serve s3`` answers 200); anything else raises
        ``StorageError(kind="not_partial")``. Returns the bytes written, which may fall
        short; ``stop`` ends the read early (another range failed, or the run was
        stopped). ``wrote`` is told each chunk's length once it is written and in
        ``digest``: when the read fails midway (a reset, a timeout), what it says is
        what landed, so the caller resumes from there with the same ``digest``."""
        resp = self._request("GetObject", bucket, key, {},
                             {"range": f"bytes={start}-{end - 1}"})
        got = resp.getheader("Content-Range", "") or ""
        if not got.startswith(f"bytes {start}-{end - 1}/"):
            self.close()  # a server that ignored Range would write the wrong bytes here
            raise StorageError("GetObject", kind="not_partial",
                               message=f"asked for bytes {start}-{end - 1}, the server "
                                       f"answered {resp.status} {got or 'the whole object'}")
        return self._pour(resp, write_at, buf, start, end, stop, digest, wrote)

    def read_whole_into(self, bucket: str, key: str, size: int, write_at: WriteAt,
                        buf: memoryview, stop: Callable[[], bool], digest: Any = None) -> int:
        """The whole object, streamed to ``write_at`` from offset 0 through ``buf`` and
        ``digest`` (for a server that cannot answer ranges); reads at most one byte past
        ``size``, so a body longer than the listing says is seen without reading it all.
        Returns the bytes written."""
        resp = self._request("GetObject", bucket, key, {}, {})
        return self._pour(resp, write_at, buf, 0, size + 1, stop, digest, None)

    def get_object(self, bucket: str, key: str, size: int) -> bytes:
        """A small object's body, whole, read to at most one byte past ``size`` (the
        caller checks the length against the listing)."""
        resp = self._request("GetObject", bucket, key, {}, {})
        try:
            body = resp.read(size + 1)
        except Exception as exc:  # noqa: BLE001 - a socket failure in the model's terms
            self.close()
            raise socket_error(exc, "GetObject") from None
        if not resp.isclosed() and resp.length:
            self.close()  # unread bytes: this connection cannot be reused
        return body

    def _pour(self, resp: http.client.HTTPResponse, write_at: WriteAt, buf: memoryview,
              start: int, end: int, stop: Callable[[], bool], digest: Any,
              wrote: Callable[[int], None] | None) -> int:
        """``resp``'s body to ``write_at`` from ``start``, up to ``end`` or its end."""
        offset = start
        try:
            while offset < end and not stop():
                n = resp.readinto(buf[: min(len(buf), end - offset)])
                if not n:
                    break
                write_at(buf[:n], offset)
                offset += n
                if digest is not None:
                    digest.update(buf[:n])  # hashlib releases the GIL for a buffer this size
                if wrote is not None:
                    wrote(n)
        except OSError as exc:
            self.close()
            if exc.errno is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise  # the local disk: not the store's failure
            raise socket_error(exc, "GetObject") from None
        except http.client.HTTPException as exc:
            self.close()
            raise socket_error(exc, "GetObject") from None
        if offset < end or not resp.isclosed() and resp.length:
            self.close()  # half-read: this connection cannot be reused
        return offset - start


def socket_error(exc: Exception, operation: str) -> StorageError:
    """A socket-level failure in the model's terms."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageError(operation, kind="tls", message=exc.verify_message or str(exc))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return StorageError(operation, kind="timeout", message=str(exc) or "timed out")
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or (
            isinstance(exc, OSError) and not isinstance(exc, ConnectionError)
            and exc.errno is not None):
        return StorageError(operation, kind="connect", message=exc.strerror or str(exc))
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return StorageError(operation, kind="io", message=str(exc) or type(exc).__name__)
    if isinstance(exc, StorageError):
        return exc
    return StorageError(operation, kind="io", message=f"{type(exc).__name__}: {exc}")


def _error(status: int, body: bytes, operation: str) -> StorageError:
    try:
        _, fields, _ = _xml(body, "")
    except ValueError:
        if status in (404, 403, 400, 301) or status >= 500:
            return StorageError(operation, kind="http", status=status, code=str(status),
                                message=http.client.responses.get(status, ""))
        return StorageError(operation, kind="not_s3",
                            message=f"HTTP {status} with a body that is not S3 XML")
    return StorageError(operation, kind="http", status=status,
                        code=fields.get("Code") or str(status),
                        message=(fields.get("Message") or "")[:300])


def _xml(body: bytes, record: str) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    """An S3 answer's XML, as flat as S3 writes it: the root element's name, the text of
    each of its children, and for each child named ``record`` the text of each of its
    children (names without a namespace prefix; entities decoded). Raises ValueError
    for what is not XML. Read by expat itself, the parser ElementTree wraps, without
    ElementTree's own import (~5 ms of every fetch's start)."""
    root = ""
    fields: dict[str, str] = {}
    records: list[dict[str, str]] = []
    path: list[str] = []
    text: list[str] = []

    def start(name: str, attrs: object) -> None:
        nonlocal root
        name = name.rpartition(":")[2]
        if not path:
            root = name
        elif len(path) == 1 and name == record:
            records.append({})
        path.append(name)
        text.clear()

    def end(name: str) -> None:
        name = path.pop()
        if len(path) == 1:
            fields[name] = "".join(text)
        elif len(path) == 2 and path[1] == record:
            records[-1][name] = "".join(text)
        text.clear()

    parser = expat.ParserCreate()
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise ValueError(f"not XML: {exc}") from None
    return root, fields, records
