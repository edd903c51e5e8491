"""An S3 endpoint that records every request as it arrived, for asserting what a client
sends on the wire (there is no OBS here): the Host header and path (addressing style),
the signature's scope, checksum headers, the session token, Content-MD5, the signed
payload hash.

It serves a fixed set of objects (ListObjectsV2, GET with Range) and accepts uploads
(PUT, and multipart: create, parts, complete, abort), in either addressing style: a
Host that starts with ``<bucket>.`` is virtual-hosted, else the bucket is the first
path segment. Signatures are not checked (SeaweedFS does that in the other tests).
Optionally HTTPS with a given certificate. Bound to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from devtools.httpserve import LocalServer, send


@dataclass(frozen=True)
class Seen:
    method: str
    host: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # lower-case names
    body_sha256: str  # hex, as x-amz-content-sha256 carries it
    body_md5: str  # base64, as Content-MD5 carries it


class RecordingS3(LocalServer):
    def __init__(self, bucket: str, objects: Mapping[str, bytes],
                 certfile: str | None = None) -> None:
        self.bucket = bucket
        self.objects = dict(objects)
        self.seen: list[Seen] = []
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _key(self) -> tuple[str, str, dict[str, list[str]]]:
                parts = urlsplit(self.path)
                host = self.headers.get("Host", "")
                path = unquote(parts.path)
                if host.startswith(owner.bucket + "."):
                    key = path.lstrip("/")
                else:
                    key = path.lstrip("/").partition("/")[2]
                return key, parts.query, parse_qs(parts.query, keep_blank_values=True)

            def _record(self, body: bytes) -> None:
                parts = urlsplit(self.path)
                with owner.lock:
                    owner.seen.append(Seen(self.command, self.headers.get("Host", ""),
                                           parts.path, parts.query,
                                           {k.lower(): v for k, v in self.headers.items()},
                                           hashlib.sha256(body).hexdigest(),
                                           base64.b64encode(hashlib.md5(body).digest())
                                           .decode()))

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length", "0") or 0)
                return self.rfile.read(length) if length else b""

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._record(b"")
                key, _, query = self._key()
                if not key:
                    send(self, 200, owner.listing(query.get("prefix", [""])[0]),
                         {"Content-Type": "application/xml"})
                    return
                data = owner.objects.get(key)
                if data is None:
                    send(self, 404, b"<Error><Code>NoSuchKey</Code></Error>")
                    return
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first, _, last = ranged[6:].partition("-")
                    start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
                    send(self, 206, data[start:end + 1],
                         {"Content-Range": f"bytes {start}-{end}/{len(data)}",
                          "ETag": f'"{hashlib.md5(data).hexdigest()}"'})
                    return
                send(self, 200, data, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

            def do_HEAD(self) -> None:  # noqa: N802
                self._record(b"")
                send(self, 404, b"")

            def do_PUT(self) -> None:  # noqa: N802
                body = self._body()
                self._record(body)
                key, _, query = self._key()
                if "uploadId" in query:
                    upload = owner.uploads.setdefault(query["uploadId"][0], {})
                    upload[int(query["partNumber"][0])] = body
                else:
                    owner.objects[key] = body
                send(self, 200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                self._record(body)
                key, _, query = self._key()
                if "uploads" in query:
                    upload_id = f"u{len(owner.uploads) + 1}"
                    owner.uploads[upload_id] = {}
                    send(self, 200, (f"<InitiateMultipartUploadResult><Bucket>{owner.bucket}"
                                     f"</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}"
                                     "</UploadId></InitiateMultipartUploadResult>").encode(),
                         {"Content-Type": "application/xml"})
                    return
                parts = owner.uploads.pop(query["uploadId"][0])
                ordered = [parts[n] for n in sorted(parts)]
                owner.objects[key] = b"".join(ordered)
                etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in ordered))
                send(self, 200, (f"<CompleteMultipartUploadResult><Key>{escape(key)}</Key>"
                                 f"<ETag>&quot;{etag.hexdigest()}-{len(ordered)}&quot;</ETag>"
                                 "</CompleteMultipartUploadResult>").encode(),
                     {"Content-Type": "application/xml"})

            def do_DELETE(self) -> None:  # noqa: N802
                self._record(b"")
                key, _, query = self._key()
                if "uploadId" in query:
                    owner.uploads.pop(query["uploadId"][0], None)
                else:
                    owner.objects.pop(key, None)
                send(self, 204, b"")

        super().__init__(Handler)
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def listing(self, prefix: str) -> bytes:
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2026-01-01T00:00:00.000Z"
            f"</LastModified><Size>{len(v)}</Size>"
            f"<ETag>&quot;{hashlib.md5(v).hexdigest()}&quot;</ETag></Contents>"
            for k, v in sorted(self.objects.items()) if k.startswith(prefix))
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                f"<Name>{self.bucket}</Name><Prefix>{escape(prefix)}</Prefix>"
                f"<IsTruncated>false</IsTruncated>{items}</ListBucketResult>").encode()
