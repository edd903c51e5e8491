"""Where trees come from and go: pure parsing of the job's URLs (DLS_APP_URL and the rest).

``s3://`` and ``obs://`` name the same API (OBS speaks S3); ``file://`` and plain
paths name a local tree. The tree lands in ``<job dir>/<last path component>/``,
exactly as the original script did: ``s3://b/new/`` and ``s3://b/new`` both give
``user-job-dir/new``; a bucket root gives the bucket's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ConfigError

OBJECT_SCHEMES = ("s3", "obs")
# Patterns as text, compiled on first use (re caches them): compiling one costs ~0.5 ms of
# every start, and most runs never need these.
_SCHEME = r"^([A-Za-z][A-Za-z0-9+.-]*)://"
# S3/OBS bucket names: 3-63 chars of lowercase letters, digits, dots and hyphens.
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


@dataclass(frozen=True, slots=True)
class Location:
    """An object-store prefix (``bucket`` set) or a local directory (``path`` set)."""

    url: str
    bucket: str = ""
    prefix: str = ""  # "" for a bucket root, else ends with "/"
    path: Path | None = None

    @property
    def is_remote(self) -> bool:
        return self.path is None

    @property
    def name(self) -> str:
        """The last path component: the folder the tree lands in."""
        if self.path is not None:
            return self.path.name or "code"
        return PurePosixPath(self.prefix).name or self.bucket


def parse(url: str, what: str = "DLS_APP_URL") -> Location:
    match = re.match(_SCHEME, url)
    if match is None:
        if not url.strip():
            raise ConfigError(f"{what} is empty")
        return Location(url=url, path=Path(url).expanduser().absolute())
    scheme = match.group(1).lower()
    rest = url[match.end():]
    if scheme == "file":
        if not rest.startswith("/"):
            raise ConfigError(f"{what}={url!r}: a file:// URL needs an absolute path "
                              "(file:///home/work/code)")
        from urllib.parse import unquote  # lazily: ~2 ms of start-up otherwise

        return Location(url=url, path=Path(unquote(rest)))
    if scheme not in OBJECT_SCHEMES:
        raise ConfigError(f"{what}={url!r}: unknown scheme {scheme!r}; use s3://, obs://, "
                          "file:// or a local path")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{what}={url!r} has no bucket name; write {scheme}://BUCKET/PATH/")
    if not re.match(_BUCKET, bucket):
        raise ConfigError(f"{what}={url!r}: {bucket!r} is not a valid bucket name "
                          "(3-63 lowercase letters, digits, dots and hyphens)")
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"{what}={url!r}: '.' and '..' are not allowed in the path")
    prefix = "/".join(parts) + "/" if parts else ""
    return Location(url=url, bucket=bucket, prefix=prefix)


def remote(url: str, what: str) -> Location:
    """An object-store location; a local path is refused (outputs and logs leave the
    node)."""
    parsed = parse(url, what)
    if not parsed.is_remote:
        raise ConfigError(f"{what}={url!r} must be an s3:// or obs:// URL")
    return parsed


def destination(job_dir: Path, location: Location) -> Path:
    return job_dir / location.name


def key_inside(location: Location, url: str) -> str | None:
    """The path of ``url`` relative to the code directory, when it lies inside it.

    Used for ``run_train.sh python obs://b/new/train.py``: the file maps to its
    downloaded copy. Returns None for a URL elsewhere.
    """
    if not location.is_remote:
        return None
    match = re.match(_SCHEME, url)
    if match is None or match.group(1).lower() not in OBJECT_SCHEMES:
        return None
    bucket, _, key = url[match.end():].partition("/")
    if bucket != location.bucket or not key.startswith(location.prefix):
        return None
    return key[len(location.prefix):] or None
