"""What is under a prefix: one paginated listing, checked before anything is fetched.

A listing that repeats a continuation token or a key, or exceeds
``BOOTSTRAP_MAX_FILES``, is refused rather than followed forever; every key becomes
a relative path checked by :func:`~bootstrap.transfer.paths.relative_path` (hostile
keys are skipped); a key that is both a file and a folder is an error. An empty
listing of a URL that names an object says so ("names a file, not a folder").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.location import Location
from ..errors import DownloadError
from ..storage import retry
from .paths import relative_path

if TYPE_CHECKING:

    from ..config.settings import Transfer
    from ..storage.signed import SignedClient

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^[0-9a-f]{32}-([1-9][0-9]{0,4})$")


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object of a listed prefix: its key, its path relative to the prefix, its size and
    ETag (without quotes), what the download checks it against."""

    key: str
    rel: str
    size: int
    etag: str  # without quotes

    @property
    def md5(self) -> str | None:
        """The expected MD5 when the ETag is one (not a multipart or encrypted ETag)."""
        return self.etag if _PLAIN_MD5.match(self.etag) else None

    @property
    def parts(self) -> int | None:
        """The part count of a multipart ETag (MD5 of the parts' MD5s, ``-N``), else None."""
        found = _MULTIPART.match(self.etag)
        return int(found.group(1)) if found else None


def list_objects(lister: SignedClient, location: Location, settings: Transfer,
                 empty_ok: bool = False) -> tuple[list[RemoteObject], list[str]]:
    """Every object under the prefix, as relative paths already checked for safety,
    and every folder (directory markers and files' parents), parents first. An empty
    prefix is an error (a code directory must hold code) unless ``empty_ok``."""
    objects: list[RemoteObject] = []
    files: set[str] = set()
    folders: set[str] = set()
    token: str | None = None
    seen_tokens: set[str] = set()
    while True:
        items, token = retry.call(
            lambda t=token: lister.page(location.bucket, location.prefix, t),  # type: ignore[misc]
            settings.retry_attempts, settings.retry_deadline)
        for key, size, etag in items:
            parsed = relative_path(key, location.prefix)
            if parsed is None:
                continue
            rel, is_folder = parsed
            parents = rel.split("/")[:-1]
            folders.update("/".join(parents[: i + 1]) for i in range(len(parents)))
            if is_folder:
                folders.add(rel)
                continue
            if rel in files:
                raise DownloadError(f"the object store returned a listing of {location.url} "
                                    f"that never ends ({key!r} came twice)")
            files.add(rel)
            objects.append(RemoteObject(key, rel, size, etag))
            if len(objects) > settings.max_files:
                raise DownloadError(f"{location.url} holds more than {settings.max_files} "
                                    "files; point the URL at the code folder, or raise "
                                    "BOOTSTRAP_MAX_FILES")
        if token is None:
            break
        if not token or token in seen_tokens:
            raise DownloadError(f"the object store returned a listing of {location.url} that "
                                "never ends (a repeated or missing continuation token)")
        seen_tokens.add(token)
    clash = files & folders
    if clash:
        name = sorted(clash)[0]
        raise DownloadError(f"{location.url}{name} is both a file and a folder in the bucket; "
                            "a local tree cannot hold both: rename one of them")
    if not objects and not folders and not empty_ok:
        single = named_object(lister, location, settings)
        if single is not None:
            folder = location.url[: location.url.rstrip("/").rfind("/") + 1]
            raise DownloadError(f"{location.url.rstrip('/')} names a file, not a folder; "
                                f"point the URL at its folder ({folder}) and name the file "
                                "in the run command")
        raise DownloadError(f"no objects under {location.url}: the code directory is empty "
                            "or does not exist; check DLS_APP_URL")
    return objects, sorted(folders)


def named_object(lister: SignedClient, location: Location,
                 settings: Transfer) -> RemoteObject | None:
    """The object whose key is the location's prefix without its final "/", when one
    exists: ``s3://b/new/train.py`` names a file, not a folder (a common slip)."""
    key = location.prefix.rstrip("/")
    if not key:
        return None
    items, _ = retry.call(lambda: lister.page(location.bucket, key, None),
                          settings.retry_attempts, settings.retry_deadline)
    for name, size, etag in items:
        if name == key:
            return RemoteObject(key, key.rsplit("/", 1)[-1], size, etag)
    return None


def keys_under(lister: SignedClient, bucket: str, prefix: str,
               settings: Transfer) -> list[tuple[str, int, str]]:
    """Every ``(key, size, etag)`` under ``prefix``, as stored (the bootstrap's own
    records: no relative-path checks); a listing that repeats its token is refused."""
    found: list[tuple[str, int, str]] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        items, token = retry.call(lambda t=token: lister.page(bucket, prefix, t),  # type: ignore[misc]
                                  settings.retry_attempts, settings.retry_deadline)
        found.extend(items)
        if token is None:
            return found
        if not token or token in seen or len(found) > settings.max_files:
            raise DownloadError(f"the object store returned a listing of s3://{bucket}/{prefix} "
                                "that never ends")
        seen.add(token)
