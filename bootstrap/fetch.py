"""The download engine: an object-store prefix to a local tree, in parallel, atomically.

Contract (each point is tested):

* Listing is paginated ListObjectsV2; a listing that repeats a continuation token
  or exceeds ``BOOTSTRAP_MAX_FILES`` is refused rather than followed forever.
* All transfers share one lean client (s3lean.py) that keeps a connection alive per
  worker thread. Objects smaller than the multipart threshold are one GET each;
  larger ones are split into byte ranges (at most ``RANGE_STREAMS`` at once) written
  in place with ``pwrite``, so a retried range rewrites exactly its own bytes and
  memory stays bounded; a server that ignores Range is caught, not trusted.
* Every file streams into a temporary file beside its destination and is renamed
  into place only when its size (always) and MD5 (when the ETag is a plain MD5)
  verify. A killed or failed run never leaves a truncated file under a final name;
  temporaries of a killed run are swept by the next one.
* Transient failures are retried (see :mod:`bootstrap.retry`); anything else
  becomes a :class:`DownloadError` with one line saying what to fix (exit 127).
* A rerun skips files whose size and ETag match the manifest.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import retry
from .errors import DownloadError
from .location import Location
from .log import Log
from .manifest import Manifest
from .paths import SafeDirs, relative_path
from .settings import Settings

CHUNK = 1024 * 1024
RANGE_STREAMS = 8  # concurrent ranged GETs of large objects
TMP_SUFFIX = ".bootstrap-tmp"
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RemoteObject:
    key: str
    rel: str
    size: int
    etag: str  # without quotes

    @property
    def md5(self) -> Optional[str]:
        """The expected MD5 when the ETag is one (not a multipart or encrypted ETag)."""
        return self.etag if _PLAIN_MD5.match(self.etag) else None


@dataclass
class Stats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    total_files: int = 0
    total_bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, files: int, nbytes: int) -> None:
        with self.lock:
            self.files += files
            self.bytes += nbytes

    def summary(self) -> str:
        rate = self.bytes / self.seconds / 2**20 if self.seconds > 0 else 0.0
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB fetched, "
                f"{self.skipped} unchanged skipped, {rate:.1f} MiB/s, {self.retries} retries")


# --------------------------------------------------------------------------- listing

def list_objects(client: Any, location: Location,
                 settings: Settings) -> tuple[list[RemoteObject], list[str]]:
    """Every object under the prefix, as relative paths already checked for safety,
    and every folder (directory markers and files' parents), parents first."""
    objects: list[RemoteObject] = []
    files: set[str] = set()
    folders: set[str] = set()
    token: Optional[str] = None
    seen_tokens: set[str] = set()
    while True:
        kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": location.prefix,
                                  "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        page = retry.call(functools.partial(client.list_objects_v2, **kwargs),
                          settings.retry_attempts, settings.retry_deadline)
        for item in page.get("Contents", ()):
            parsed = relative_path(item["Key"], location.prefix)
            if parsed is None:
                continue
            rel, is_folder = parsed
            parents = rel.split("/")[:-1]
            folders.update("/".join(parents[: i + 1]) for i in range(len(parents)))
            if is_folder:
                folders.add(rel)
                continue
            files.add(rel)
            objects.append(RemoteObject(item["Key"], rel, int(item.get("Size", 0)),
                                        str(item.get("ETag", "")).strip('"')))
            if len(objects) > settings.max_files:
                raise DownloadError(f"{location.url} holds more than {settings.max_files} "
                                    "files; point DLS_APP_URL at the code folder, or raise "
                                    "BOOTSTRAP_MAX_FILES")
        if not page.get("IsTruncated"):
            break
        token = page.get("NextContinuationToken")
        if not token or token in seen_tokens:
            raise DownloadError(f"the object store returned a listing of {location.url} that "
                                "never ends (a repeated or missing continuation token)")
        seen_tokens.add(token)
    clash = files & folders
    if clash:
        name = sorted(clash)[0]
        raise DownloadError(f"{location.url}{name} is both a file and a folder in the bucket; "
                            "a local tree cannot hold both: rename one of them")
    if not objects and not folders:
        raise DownloadError(f"no objects under {location.url}: the code directory is empty "
                            "or does not exist; check DLS_APP_URL")
    return objects, sorted(folders)


# --------------------------------------------------------------------------- transfer

class _LargeFile:
    """Shared state of one object fetched as several ranges.

    When its ETag is a plain MD5, the file is hashed while it downloads: ranges finish
    out of order, so whichever thread completes the range that extends the contiguous
    prefix hashes it (reading back from the page cache), and the last range only has
    its own tail left to hash, instead of the whole object after the download.
    """

    def __init__(self, obj: RemoteObject, tmp: Path, parts: int) -> None:
        self.obj = obj
        self.tmp = tmp
        self.remaining = parts
        self.failed = False
        self.lock = threading.Lock()
        self.digest = hashlib.md5(usedforsecurity=False) if obj.md5 else None
        self.hashed = 0  # bytes [0, hashed) are in the digest
        self.finished: dict[int, int] = {}  # start -> end of ranges done but not hashed
        self.hashing = threading.Lock()

    def advance(self, buf: memoryview, wait: bool) -> None:
        """Hashes every finished range that continues the prefix. With ``wait`` False a
        thread that finds another one hashing leaves the work to it (that thread loops
        until nothing continues the prefix; the last range then waits)."""
        if self.digest is None or not self.hashing.acquire(blocking=wait):
            return
        try:
            with open(self.tmp, "rb", buffering=0) as fh:
                while True:
                    with self.lock:
                        end = self.finished.pop(self.hashed, None)
                    if end is None:
                        return
                    fh.seek(self.hashed)
                    while self.hashed < end:
                        n = fh.readinto(buf[: min(len(buf), end - self.hashed)])
                        if not n:
                            return  # cut short: the size check will say so
                        self.digest.update(buf[:n])
                        self.hashed += n
        finally:
            self.hashing.release()


Task = Callable[[], None]


class Engine:
    """Runs the transfer tasks on ``workers`` threads; the caller's thread only waits,
    so a signal handler raising there (SIGTERM) unwinds cleanly through :meth:`run`."""

    def __init__(self, client: Any, location: Location, dest: Path, settings: Settings,
                 log: Log, manifest: Manifest) -> None:
        self.client = client
        self.location = location
        self.dest = dest
        self.settings = settings
        self.log = log
        self.manifest = manifest
        self.dirs = SafeDirs(dest)
        self.stats = Stats()
        self.cancel = threading.Event()
        self.error: Optional[BaseException] = None
        self._ranges: collections.deque[Task] = collections.deque()
        self._smalls: collections.deque[Task] = collections.deque()
        # Large objects saturate the link with few streams; more only add contention
        # (measured: 8 concurrent 16 MiB ranges beat 32), while small files need many.
        self._range_slots = threading.Semaphore(RANGE_STREAMS)
        self._temps: set[Path] = set()
        self._temps_lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._local = threading.local()

    # -- planning
    def plan(self, objects: list[RemoteObject], folders: list[str]) -> None:
        big: list[Task] = []
        small: list[Task] = []
        for obj in objects:
            final = self.dest / obj.rel
            self.stats.total_files += 1
            self.stats.total_bytes += obj.size
            if self.manifest.unchanged(obj.rel, obj.size, obj.etag, final):
                self.stats.skipped += 1
                continue
            if obj.size >= self.settings.multipart_threshold:
                big.extend(self._range_tasks(obj))
            else:
                small.append(lambda o=obj: self._fetch_whole(o))  # type: ignore[misc]
        for rel in folders:
            self.dirs.ensure(rel)
        self._ranges.extend(big)
        self._smalls.extend(small)

    def _range_tasks(self, obj: RemoteObject) -> list[Task]:
        size = self.settings.range_size
        starts = list(range(0, obj.size, size))
        state: dict[str, _LargeFile] = {}

        def start(offset: int) -> Task:
            def task() -> None:
                if "f" not in state:  # the first range to run creates the file
                    with self._create_lock:
                        if "f" not in state:
                            tmp = self._new_temp(obj)
                            with open(tmp, "wb") as fh:
                                fh.truncate(obj.size)
                            state["f"] = _LargeFile(obj, tmp, len(starts))
                self._fetch_range(state["f"], offset, min(offset + size, obj.size) - 1)
            return task
        return [start(s) for s in starts]

    # -- temporaries
    def _new_temp(self, obj: RemoteObject) -> Path:
        parent, _, _ = obj.rel.rpartition("/")
        folder = self.dirs.ensure(parent)
        tmp = folder / f".{secrets.token_hex(8)}{TMP_SUFFIX}"
        with self._temps_lock:
            self._temps.add(tmp)
        return tmp

    def _drop_temp(self, tmp: Path) -> None:
        with self._temps_lock:
            self._temps.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    def _commit(self, obj: RemoteObject, tmp: Path) -> None:
        final = self.dest / obj.rel
        os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, final)  # rename(2) replaces a symlink, never follows it
        except IsADirectoryError:
            self._drop_temp(tmp)
            raise DownloadError(f"{final} is a folder but the bucket holds a file of that "
                                "name; remove it and rerun") from None
        with self._temps_lock:
            self._temps.discard(tmp)
        self.manifest.record(obj.rel, obj.size, obj.etag, final)
        self.stats.add(1, 0)

    def _on_retry(self, exc: BaseException) -> None:
        with self.stats.lock:
            self.stats.retries += 1

    # -- whole objects
    def _fetch_whole(self, obj: RemoteObject) -> None:
        tmp = self._new_temp(obj)
        try:
            retry.call(lambda: self._get_into(obj, tmp), self.settings.retry_attempts,
                       self.settings.retry_deadline, self._on_retry)
            self._commit(obj, tmp)
        except BaseException:
            self._drop_temp(tmp)
            raise

    def _get_into(self, obj: RemoteObject, tmp: Path) -> None:
        resp = self.client.get_object(Bucket=self.location.bucket, Key=obj.key)
        digest = hashlib.md5(usedforsecurity=False) if obj.md5 else None
        got = 0
        body = resp["Body"]
        buf = self._buffer()
        try:
            with open(tmp, "wb", buffering=0) as fh:
                while True:
                    n = body.readinto(buf)
                    if not n:
                        break
                    if self.cancel.is_set():
                        raise _Cancelled()
                    view = buf[:n]
                    fh.write(view)
                    got += n
                    if got > obj.size:
                        break
                    if digest is not None:
                        digest.update(view)
        finally:
            body.close()
        self.stats.add(0, got)
        _verify(obj, got, digest)

    def _buffer(self) -> memoryview:
        """This thread's reusable transfer buffer (no allocation per chunk)."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(CHUNK))
        return buf

    # -- ranges of large objects
    def _fetch_range(self, state: _LargeFile, first: int, last: int) -> None:
        if state.failed:
            return
        try:
            retry.call(lambda: self._get_range(state, first, last), self.settings.retry_attempts,
                       self.settings.retry_deadline, self._on_retry)
        except BaseException:
            with state.lock:
                state.failed = True
            self._drop_temp(state.tmp)
            raise
        with state.lock:
            state.remaining -= 1
            state.finished[first] = last + 1
            done = state.remaining == 0
        if done:
            self._finish_large(state)
        else:
            state.advance(self._buffer(), wait=False)

    def _get_range(self, state: _LargeFile, first: int, last: int) -> None:
        resp = self.client.get_object(Bucket=self.location.bucket, Key=state.obj.key,
                                      Range=f"bytes={first}-{last}")
        body = resp["Body"]
        want = last - first + 1
        expected = f"bytes {first}-{last}/{state.obj.size}"
        if resp.get("Status") != 206 or resp.get("ContentRange") != expected:
            body.close()  # a server that ignored Range would write the wrong bytes here
            raise retry.TransientError(f"{state.obj.key!r}: asked for {expected}, the server "
                                       f"answered {resp.get('Status')} "
                                       f"{resp.get('ContentRange') or '(no Content-Range)'}")
        offset = first
        try:
            fd = os.open(state.tmp, os.O_WRONLY)
        except FileNotFoundError:
            body.close()
            raise _Cancelled() from None
        buf = self._buffer()
        try:
            while offset <= last:
                n = body.readinto(buf[: min(CHUNK, last + 1 - offset)])
                if not n:
                    break
                if self.cancel.is_set() or state.failed:
                    raise _Cancelled()
                os.pwrite(fd, buf[:n], offset)
                offset += n
        finally:
            os.close(fd)
            body.close()
        got = offset - first
        self.stats.add(0, got)
        if got != want:
            raise retry.TransientError(f"range {first}-{last} of {state.obj.key!r} ended after "
                                       f"{got} of {want} bytes")

    def _finish_large(self, state: _LargeFile) -> None:
        obj = state.obj
        size = os.path.getsize(state.tmp)
        state.advance(self._buffer(), wait=True)  # whatever of the prefix is left
        try:
            if state.digest is not None and state.hashed != size:
                raise retry.TransientError(f"{obj.key!r}: could hash {state.hashed} of "
                                           f"{size} bytes")
            _verify(obj, size, state.digest)
        except retry.TransientError as exc:
            self._drop_temp(state.tmp)
            raise DownloadError(str(exc)) from None
        self._commit(obj, state.tmp)

    # -- running
    def _next(self) -> tuple[Optional[Task], bool]:
        """A range while a range stream is free (they are the longest tasks: start them
        early), else a small file, else wait for a range stream."""
        if self._ranges and self._range_slots.acquire(blocking=False):
            try:
                return self._ranges.popleft(), True
            except IndexError:
                self._range_slots.release()
        try:
            return self._smalls.popleft(), False
        except IndexError:
            pass
        while self._ranges and not self.cancel.is_set():
            if self._range_slots.acquire(timeout=0.2):
                try:
                    return self._ranges.popleft(), True
                except IndexError:
                    self._range_slots.release()
        return None, False

    def _worker(self) -> None:
        while not self.cancel.is_set():
            task, is_range = self._next()
            if task is None:
                return
            try:
                task()
            except _Cancelled:
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                if self.error is None:
                    self.error = exc
                self.cancel.set()
                return
            finally:
                if is_range:
                    self._range_slots.release()

    def run(self, progress_every: float = 5.0) -> Stats:
        started = time.monotonic()
        threads: list[threading.Thread] = []
        next_report = started + progress_every
        try:
            # Signals wait while the threads start (they arrive right after, inside this
            # try), so every started thread is in `threads` and joined below.
            stop = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            try:
                for i in range(min(self.settings.download_workers,
                                   len(self._ranges) + len(self._smalls))):
                    t = threading.Thread(target=self._worker, name=f"fetch-{i}", daemon=True)
                    t.start()
                    threads.append(t)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            for t in threads:
                while t.is_alive():
                    t.join(0.1)
                    now = time.monotonic()
                    if now >= next_report:
                        self._progress(now - started)
                        next_report = now + progress_every
        finally:
            self.cancel.set()
            for t in threads:
                t.join()
            for tmp in list(self._temps):
                self._drop_temp(tmp)
            self.manifest.close()
            self.stats.seconds = time.monotonic() - started
        if self.error is not None:
            raise self.error
        self._sweep_stale_temps()
        return self.stats

    def _progress(self, elapsed: float) -> None:
        s = self.stats
        todo_bytes = max(s.total_bytes - s.bytes, 0)
        rate = s.bytes / elapsed if elapsed > 0 else 0.0
        eta = f"{todo_bytes / rate:.0f} s" if rate > 0 else "?"
        self.log.info(f"fetch: {s.files + s.skipped}/{s.total_files} files, "
                      f"{s.bytes / 2**20:.0f}/{s.total_bytes / 2**20:.0f} MiB, "
                      f"{rate / 2**20:.1f} MiB/s, ETA {eta}")

    def _sweep_stale_temps(self) -> None:
        """Removes temporaries left by a run that was killed (SIGKILL cannot clean up)."""
        for folder, _, names in os.walk(self.dest):
            for name in names:
                if name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))


class _Cancelled(Exception):
    """Raised inside a worker when another worker failed or the run was stopped."""


def _verify(obj: RemoteObject, got: int, digest: Any) -> None:
    if got != obj.size:
        raise retry.TransientError(f"{obj.key!r}: received {got} bytes but the listing says "
                                   f"{obj.size}")
    if digest is not None and digest.hexdigest() != obj.md5:
        raise retry.TransientError(f"{obj.key!r}: MD5 {digest.hexdigest()} does not match "
                                   f"the ETag {obj.md5}")


# --------------------------------------------------------------------------- errors

def explain(exc: BaseException, location: Location, endpoint: Optional[str]) -> DownloadError:
    """One line that says what went wrong and what to change, for any client failure."""
    if isinstance(exc, DownloadError):
        return exc
    from .s3lean import NotS3Error, S3Error

    where = endpoint or "the default AWS endpoint"
    if isinstance(exc, S3Error):
        return _explain_code(exc.code, exc.status, str(exc), location, where)
    if isinstance(exc, NotS3Error):
        return DownloadError(f"{where} did not answer like an S3 server ({exc}); check "
                             "AWS_ENDPOINT_URL / S3_ENDPOINT")
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror, socket.timeout,
                        TimeoutError)):
        return DownloadError(f"cannot connect to the object store at {where} "
                             f"({exc.strerror or type(exc).__name__}); check AWS_ENDPOINT_URL "
                             "/ S3_ENDPOINT and the network")
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return DownloadError(f"the object store at {where} kept dropping the connection: "
                             f"{_short(exc)}")
    from botocore import exceptions as bce
    from botocore.parsers import ResponseParserError

    if isinstance(exc, bce.NoCredentialsError):
        return DownloadError("no object-store credentials found: set S3_ACCESS_KEY_ID and "
                             "S3_SECRET_ACCESS_KEY (or AWS_*/OBS_* equivalents)")
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
        return DownloadError(f"cannot connect to the object store at {where}; check "
                             "AWS_ENDPOINT_URL / S3_ENDPOINT and the network")
    if isinstance(exc, bce.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _explain_code(code, status, _short(exc), location, where)
    if isinstance(exc, ResponseParserError):
        return DownloadError(f"{where} did not answer like an S3 server (unparseable "
                             "response); check AWS_ENDPOINT_URL / S3_ENDPOINT")
    if isinstance(exc, bce.BotoCoreError):
        return DownloadError(f"object store error at {where}: {_short(exc)}")
    if isinstance(exc, retry.TransientError):
        return DownloadError(f"{exc}, still after retries; the object store serves a "
                             "broken object: check it, or upload it again")
    if isinstance(exc, OSError):
        return DownloadError(f"cannot write the code directory: {exc.strerror or exc} "
                             f"({exc.filename or ''}); check free space and permissions")
    if retry.is_retryable(exc):
        return DownloadError(f"the object store at {where} kept failing: {_short(exc)}")
    raise exc


def _explain_code(code: str, status: int, detail: str, location: Location,
                  where: str) -> DownloadError:
    known = {
        "NoSuchBucket": f"bucket {location.bucket!r} does not exist at {where}; check "
                        "DLS_APP_URL",
        "InvalidAccessKeyId": f"the access key id is not known at {where}; check "
                              "S3_ACCESS_KEY_ID / AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "the secret key does not match the access key id; "
                                 "check S3_SECRET_ACCESS_KEY / AWS_SECRET_ACCESS_KEY",
        "AccessDenied": f"access denied to {location.url}: the credentials may not "
                        "list or read it",
        "NoSuchKey": f"an object under {location.url} vanished during the download; "
                     "rerun once the upload is finished",
        "InvalidBucketName": f"bucket name {location.bucket!r} is refused by {where}",
    }
    if code in known:
        return DownloadError(known[code])
    if status == 403:
        return DownloadError(f"access denied to {location.url} (HTTP 403 {code})")
    return DownloadError(f"the object store at {where} answered {code or status} for "
                         f"{location.url}: {detail}")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------- entry

def copy_local(src: Path, dest: Path) -> Stats:
    """The ``file://`` / plain-path case: the tree is copied, as an object store's would be."""
    stats = Stats()
    started = time.monotonic()
    if not src.is_dir():
        raise DownloadError(f"code directory {src} does not exist or is not a folder; check "
                            "DLS_APP_URL")
    if src.resolve() == dest.resolve():
        return stats
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


def fetch(location: Location, dest: Path, settings: Settings, env: Mapping[str, str],
          log: Log) -> Stats:
    """Brings the code directory to ``dest``; raises DownloadError with the reason."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check that "
                            "BOOTSTRAP_HOME is writable") from None
    if not location.is_remote:
        assert location.path is not None
        return copy_local(location.path, dest)
    from .s3client import env_credentials, resolve_endpoint
    from .s3lean import LeanS3, chain_credentials

    resolved = resolve_endpoint(env, settings.addressing)
    endpoint = resolved.url
    try:
        creds = env_credentials(env) or chain_credentials()
        client = LeanS3(resolved, creds, settings.connect_timeout, settings.read_timeout)
        objects, folders = list_objects(client, location, settings)
        manifest = Manifest(manifest_path(dest), location.url)
        engine = Engine(client, location, dest, settings, log, manifest)
        engine.plan(objects, folders)
        manifest.open_for_append()
        return engine.run()
    except DownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every client failure becomes one clear line
        raise explain(exc, location, endpoint) from None
