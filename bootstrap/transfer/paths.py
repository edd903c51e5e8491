"""Object keys to local paths, without ever leaving the destination.

A key is untrusted input: a hostile or broken server (or a careless upload) can
hold ``../../etc/passwd``, absolute paths, backslashes, NUL bytes, empty segments
or names longer than the filesystem allows. Each is refused with a message naming
the key, before anything is written. Directories are created one component at a
time and an existing symlink is never followed, so a link planted in the
destination cannot redirect a write out of it.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from ..errors import DownloadError

NAME_MAX = 255  # bytes per path component on ext4/xfs/overlayfs


def relative_path(key: str, prefix: str) -> tuple[str, bool] | None:
    """``(relative path, is_folder)`` for a key under ``prefix``; None for the prefix itself.

    Raises DownloadError for a key that could escape the destination or cannot be
    a file name here.
    """
    rel = key[len(prefix):]
    if rel == "":
        return None
    is_folder = rel.endswith("/")
    body = rel[:-1] if is_folder else rel
    problem = None
    if "\0" in body:
        problem = "holds a NUL byte"
    elif "\\" in body:
        problem = "holds a backslash (a Windows path separator)"
    elif body.startswith("/"):
        problem = "is an absolute path"
    else:
        for part in body.split("/"):
            if part in ("", ".", ".."):
                problem = "has an empty, '.' or '..' path segment"
                break
            if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
                problem = f"has a name longer than {NAME_MAX} bytes"
                break
    if problem:
        raise DownloadError(f"refusing object key {key!r}: it {problem}; nothing was written "
                            "outside the destination. Rename the object in the bucket")
    return body, is_folder


class SafeDirs:
    """Creates folders under ``root`` one component at a time, never through a symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: set[str] = {""}
        self._lock = threading.Lock()

    def ensure(self, rel_dir: str) -> Path:
        if rel_dir in self._known:
            return self.root / rel_dir if rel_dir else self.root
        with self._lock:
            built = ""
            for part in rel_dir.split("/"):
                built = f"{built}/{part}" if built else part
                if built in self._known:
                    continue
                path = self.root / built
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    os.mkdir(path, 0o755)
                else:
                    if stat.S_ISLNK(st.st_mode):
                        raise DownloadError(f"refusing to write through the symlink {path} in "
                                            "the destination; remove it and rerun")
                    if not stat.S_ISDIR(st.st_mode):
                        raise DownloadError(f"{path} is a file but the bucket holds a folder "
                                            "of that name; remove it and rerun")
                self._known.add(built)
        return self.root / rel_dir
