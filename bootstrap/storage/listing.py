"""ListObjectsV2, signed (SigV4) over plain ``http.client``: the one request we do not
hand to the native library.

Why not object_store (the native core) for listing too: it rewrites what the store
holds. It drops the trailing ``/`` of folder markers (``new/empty-dir/`` becomes an
empty *file* ``new/empty-dir``, and a console-made marker beside its children looks
like a file/folder clash), and one key it does not accept as a path (``a//b``,
``./x``, a control character) fails the whole listing without naming the key. A
listing is one request per 1,000 keys, never the hot path, so it is read here,
verbatim, and every key is judged by :mod:`bootstrap.paths` with a message that
names it. Nor boto3: ~200 ms of import and client creation on every job's start.

Failures are :class:`StorageError` like every backend's.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import socket
import ssl
from collections.abc import Mapping
from typing import Optional
from urllib.parse import quote, urlsplit

from .config import Credentials, Endpoint
from .errors import StorageError

_UNSIGNED = "UNSIGNED-PAYLOAD"
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=endpoint.ca_bundle)
    if not endpoint.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Lister:
    """Pages of ``(key, size, etag)`` under a prefix; one kept-alive connection."""

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
        self._conn: Optional[http.client.HTTPConnection] = None

    def _connect(self, host: str) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn.host == host:
            return self._conn
        if self.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, self.port, timeout=self.connect_timeout,
                context=tls_context(self.endpoint))
        else:
            conn = http.client.HTTPConnection(host, self.port, timeout=self.connect_timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout)
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _headers(self, host_header: str, path: str, query: str) -> dict[str, str]:
        """AWS Signature Version 4 for a GET with an empty, unsigned payload."""
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        region = self.endpoint.region
        headers = {"host": host_header, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": amz_date}
        if self.creds.token:
            headers["x-amz-security-token"] = self.creds.token
        names = sorted(headers)
        canonical = "\n".join(["GET", path, query,
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

    def _get(self, bucket: str, query: Mapping[str, str]) -> bytes:
        if self.endpoint.addressing == "path":
            host, netloc, path = self.host, self.netloc, f"{self.base_path}/{bucket}"
        else:
            host, netloc, path = f"{bucket}.{self.host}", f"{bucket}.{self.netloc}", \
                f"{self.base_path}/"
        path = quote(path, safe="/~")
        qs = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}"
                      for k, v in sorted(query.items()))
        try:
            conn = self._connect(host)
            conn.request("GET", f"{path}?{qs}", headers=self._headers(netloc, path, qs))
            resp = conn.getresponse()
            body = resp.read()
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception):
                raise socket_error(exc, "ListObjectsV2") from None
            raise
        if resp.status >= 300:
            self.close()
            raise _error(resp.status, body, "ListObjectsV2")
        return body

    def page(self, bucket: str, prefix: str,
             token: Optional[str]) -> tuple[list[tuple[str, int, str]], Optional[str]]:
        """One page: its ``(key, size, etag without quotes)`` and the next token (None:
        the listing is complete)."""
        import xml.etree.ElementTree as ET

        query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        body = self._get(bucket, query)
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise StorageError("ListObjectsV2", kind="not_s3",
                               message="the listing is not XML") from None
        ns = _NS if root.tag.startswith(_NS) else ""
        if root.tag != f"{ns}ListBucketResult":
            raise StorageError("ListObjectsV2", kind="not_s3",
                               message=f"the listing's root element is {root.tag!r}")
        items = []
        for item in root.iter(f"{ns}Contents"):
            size = item.findtext(f"{ns}Size") or "0"
            if not size.isdigit():
                raise StorageError("ListObjectsV2", kind="not_s3",
                                   message=f"the listing has a size {size!r}")
            items.append((item.findtext(f"{ns}Key") or "", int(size),
                          (item.findtext(f"{ns}ETag") or "").strip('"')))
        truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
        following = root.findtext(f"{ns}NextContinuationToken") if truncated else None
        if truncated and not following:
            following = ""  # truncated without a token: the caller says it never ends
        return items, following


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
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        if status in (404, 403, 400, 301) or status >= 500:
            return StorageError(operation, kind="http", status=status, code=str(status),
                                message=http.client.responses.get(status, ""))
        return StorageError(operation, kind="not_s3",
                            message=f"HTTP {status} with a body that is not S3 XML")
    code = root.findtext("Code") or str(status)
    return StorageError(operation, kind="http", status=status, code=code,
                        message=(root.findtext("Message") or "")[:300])

