"""The download engine reversed: a local tree to an object-store prefix.

Parallel over one shared client; files of at least the multipart threshold go as
concurrent multipart uploads (aborted on failure, so no half object is left
behind); every request is retried like a download's. Integrity: each PUT and each
part carries its Content-MD5, so the server refuses a corrupted body, and a
single-part upload's ETag is checked against the local MD5.

Consistency while the job still writes (periodic sync): files modified in the last
``settle`` seconds are left for the next round, and a file whose size or mtime
changed while it was being uploaded is not recorded as synced, so it goes again.
Only files that changed since the last successful upload are sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import retry
from .errors import DownloadError
from .fetch import explain
from .location import Location
from .log import Log
from .settings import Settings


class UploadError(DownloadError):
    """Same exit code family as downloads; the message says it was an upload."""


@dataclass
class SyncState:
    """What was uploaded: ``rel -> (size, mtime_ns)``; persisted beside the outputs."""

    path: Optional[Path] = None
    done: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[Path]) -> SyncState:
        state = cls(path=path)
        if path is not None:
            try:
                raw = json.loads(path.read_text())
                state.done = {k: (int(v[0]), int(v[1])) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                pass  # no record: everything is uploaded once more, which is safe
        return state

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.done))
        os.replace(tmp, self.path)


@dataclass
class UploadStats:
    files: int = 0
    bytes: int = 0
    unchanged: int = 0
    settling: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB uploaded, {self.unchanged} "
                f"unchanged, {self.settling} still being written")


def _md5(path: Path, start: int = 0, length: Optional[int] = None) -> tuple[str, bytes]:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left is None or left > 0:
            chunk = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest(), digest.digest()


class Uploader:
    def __init__(self, client: Any, dest: Location, settings: Settings, log: Log) -> None:
        self.client, self.dest, self.settings, self.log = client, dest, settings, log

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        return retry.call(lambda: fn(**kwargs), self.settings.retry_attempts,
                          self.settings.retry_deadline)

    def put_file(self, path: Path, key: str) -> int:
        size = path.stat().st_size
        if size >= self.settings.multipart_threshold:
            self._multipart(path, key, size)
            return size
        hexdigest, raw = _md5(path)

        def put() -> Any:
            with open(path, "rb") as fh:
                return self.client.put_object(Bucket=self.dest.bucket, Key=key, Body=fh,
                                              ContentMD5=base64.b64encode(raw).decode())

        resp = retry.call(put, self.settings.retry_attempts, self.settings.retry_deadline)
        etag = str(resp.get("ETag", "")).strip('"')
        if etag and len(etag) == 32 and etag != hexdigest:
            raise UploadError(f"upload of {path} to {self.dest.bucket}/{key} did not verify "
                              f"(ETag {etag}, local MD5 {hexdigest})")
        return size

    def _multipart(self, path: Path, key: str, size: int) -> None:
        part_size = max(self.settings.range_size, 5 * 2**20)  # S3's minimum part size
        upload_id = self._call(self.client.create_multipart_upload, Bucket=self.dest.bucket,
                               Key=key)["UploadId"]
        try:
            def part(number: int) -> dict[str, Any]:
                start = (number - 1) * part_size
                length = min(part_size, size - start)
                _, raw = _md5(path, start, length)

                def send() -> Any:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        body = fh.read(length)
                    return self.client.upload_part(
                        Bucket=self.dest.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=body, ContentMD5=base64.b64encode(raw).decode())

                resp = retry.call(send, self.settings.retry_attempts,
                                  self.settings.retry_deadline)
                return {"PartNumber": number, "ETag": resp["ETag"]}

            count = max((size + part_size - 1) // part_size, 1)
            workers = min(self.settings.download_workers, count, 8)
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(part, range(1, count + 1)))
            self._call(self.client.complete_multipart_upload, Bucket=self.dest.bucket, Key=key,
                       UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.dest.bucket, Key=key,
                                                   UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                self.log.warn(f"could not abort the multipart upload of {key}")
            raise


def scan(root: Path) -> dict[str, tuple[int, int, Path]]:
    """Regular files under ``root`` (symlinks are not followed out of it)."""
    found: dict[str, tuple[int, int, Path]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in names:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except OSError:
                continue  # vanished while scanning: the next round sees the truth
            if not path.is_symlink() and os.path.isfile(path):
                found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, path)
    return found


def sync_tree(src: Path, dest: Location, settings: Settings, env: Mapping[str, str], log: Log,
              state: Optional[SyncState] = None, settle: float = 0.0,
              client: Any = None) -> UploadStats:
    """Uploads the files of ``src`` that changed since ``state`` recorded them."""
    from .s3client import make_client, resolve_endpoint

    state = state or SyncState()
    stats = UploadStats()
    started = time.monotonic()
    endpoint = resolve_endpoint(env, settings.addressing).url
    try:
        client = client or make_client(env, settings, settings.download_workers)
        uploader = Uploader(client, dest, settings, log)
        now = time.time_ns()
        todo = []
        for rel, (size, mtime, path) in sorted(scan(src).items()):
            if state.done.get(rel) == (size, mtime):
                stats.unchanged += 1
            elif settle > 0 and now - mtime < settle * 1e9:
                stats.settling += 1
            else:
                todo.append((rel, size, mtime, path))

        def one(item: tuple[str, int, int, Path]) -> None:
            rel, size, mtime, path = item
            sent = uploader.put_file(path, dest.prefix + rel)
            try:
                st = path.stat()
            except OSError:
                return
            if (st.st_size, st.st_mtime_ns) == (size, mtime):  # unchanged while we sent it
                state.done[rel] = (size, mtime)
            stats.files += 1
            stats.bytes += sent

        with ThreadPoolExecutor(max(min(settings.download_workers, len(todo)), 1)) as pool:
            list(pool.map(one, todo))
    except DownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every client failure becomes one clear line
        err = explain(exc, dest, endpoint)
        raise UploadError(f"upload to {dest.url} failed: {err.message}") from None
    finally:
        state.save()
        stats.seconds = time.monotonic() - started
    return stats
