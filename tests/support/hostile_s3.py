"""A deliberately hostile S3 endpoint for tests: it serves what SeaweedFS refuses to store.

Keys with ``..``, absolute paths, backslashes; listings that never end; bodies whose
length disagrees with the listing; plain HTML instead of XML; objects encrypted on the
server as OBS encrypts them (``encrypted``: an ETag of an MD5's shape that is not the
body's MD5, which HEAD and GET say with ``x-amz-server-side-encryption``, or, with
``say_encrypted=False``, do not). It answers path-style requests (``/bucket?list-type=2``,
``/bucket/key``, ranged GETs only with ``ranges``) without checking signatures.
Bound to 127.0.0.1 on a free port; stopped by the context manager.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from devtools.httpserve import LocalServer, send

# Every real S3 listing dates its objects; strict clients (object_store) require it.
MODIFIED = "<LastModified>2026-01-01T00:00:00.000Z</LastModified>"


class HostileS3(LocalServer):
    def __init__(self, objects: Mapping[str, bytes], *, endless_listing: bool = False,
                 size_lie: int = 0, html: bool = False, generated: int = 0,
                 encrypted: str = "", say_encrypted: bool = True, ranges: bool = False) -> None:
        self.objects = dict(objects)
        self.encrypted = encrypted  # e.g. "kms": every object, its ETag not its MD5
        self.say_encrypted = say_encrypted
        self.ranges = ranges
        self.heads = 0
        self.generated = generated  # claim this many keys, served 1,000 a page on demand
        self.endless_listing = endless_listing
        self.size_lie = size_lie  # added to every listed size
        self.html = html
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests += 1
                if owner.html:
                    self._send(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
                    return
                parts = urlsplit(self.path)
                bucket, _, key = parts.path.lstrip("/").partition("/")
                if not key:
                    self._send(200, owner.listing(parse_qs(parts.query)), "application/xml")
                    return
                body = owner.objects.get(unquote(key))
                if body is None:
                    self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
                    return
                asked = self.headers.get("Range", "")
                if owner.ranges and asked.startswith("bytes="):
                    first, _, last = asked[6:].partition("-")
                    start, end = int(first), min(int(last or len(body) - 1), len(body) - 1)
                    self._send(206, body[start:end + 1], "application/octet-stream",
                               {"Content-Range": f"bytes {start}-{end}/{len(body)}",
                                **owner.object_headers(body)})
                    return
                self._send(200, body, "application/octet-stream", owner.object_headers(body))

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                owner.heads += 1
                key = urlsplit(self.path).path.lstrip("/").partition("/")[2]
                body = owner.objects.get(unquote(key))
                if body is None:
                    self._send(404, b"", "application/xml")
                    return
                self._send(200, b"", "application/octet-stream",
                           {"Content-Length": str(len(body)), **owner.object_headers(body)})

            def _send(self, status: int, body: bytes, ctype: str,
                      headers: Mapping[str, str] = {}) -> None:
                send(self, status, body, {"Content-Type": ctype, **headers})

        super().__init__(Handler)

    def etag(self, body: bytes) -> str:
        """The ETag the listing and the answers give: the body's MD5, or for an
        encrypted object the MD5 of something else (OBS: of the ciphertext)."""
        return hashlib.md5(b"ciphertext:" + body if self.encrypted else body).hexdigest()

    def object_headers(self, body: bytes) -> dict[str, str]:
        found = {"ETag": f'"{self.etag(body)}"', "Server": "OBS"}
        if self.encrypted and self.say_encrypted:
            found["x-amz-server-side-encryption"] = self.encrypted
        return found

    def listing(self, query: Mapping[str, list[str]]) -> bytes:
        if self.generated:
            return self._generated_page(query)
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key>{MODIFIED}<Size>{len(v) + self.size_lie}</Size>"
            f"<ETag>&quot;{self.etag(v)}&quot;</ETag></Contents>"
            for k, v in self.objects.items())
        truncated = "true" if self.endless_listing else "false"
        token = "<NextContinuationToken>same-token</NextContinuationToken>" \
            if self.endless_listing else ""
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                f"<Name>b</Name><Prefix>{escape(query.get('prefix', [''])[0])}</Prefix>"
                f"<KeyCount>{len(self.objects)}</KeyCount><IsTruncated>{truncated}</IsTruncated>"
                f"{token}{items}</ListBucketResult>").encode()

    def _generated_page(self, query: Mapping[str, list[str]]) -> bytes:
        page = int(query.get("continuation-token", ["0"])[0])
        first = page * 1000
        keys = range(first, min(first + 1000, self.generated))
        items = "".join(f"<Contents><Key>code/f{i:09d}.py</Key>{MODIFIED}<Size>10</Size>"
                        f"<ETag>&quot;{'0' * 32}&quot;</ETag></Contents>" for i in keys)
        more = first + 1000 < self.generated
        token = f"<NextContinuationToken>{page + 1}</NextContinuationToken>" if more else ""
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{token}{items}"
                "</ListBucketResult>").encode()
