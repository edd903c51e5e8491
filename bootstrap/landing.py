"""Landing: how every file the bootstrap writes gets its name, whole or not at all.

Every rename in the bootstrap happens here. A reader (the command reading the hostfile,
the next run reading a manifest, a training script reading its code) sees the old file
or the new one, never a half-written one:

* **Temporary names.** A file is written under a hidden temporary name in its final
  folder (so the rename stays on one filesystem): ``.<pid>-<serial><TMP_SUFFIX>``, the
  pid because two jobs may share a home, the serial (atomic: any thread) because two
  threads may share a folder. The name is short whatever the destination's length (a
  255-byte file name still has room beside it). :func:`temporary` is the one scheme.
* **Slices.** A body in memory is written with ``pwrite`` at most :data:`WRITE_SLICE` a
  call (:func:`write_all`): one large write holds the file's inode lock for its whole
  length, and a big memcpy in the kernel stalls every other writer of the file
  (measured, bench/README.md).
* **Commit.** ``rename(2)`` puts the file under its name at once (:func:`commit`); it
  replaces a symlink there, never follows it; a folder of that name is refused with a
  line that says what to do.
* **Sweep.** A run killed by SIGKILL cannot clean up: the next one removes every
  temporary under the tree it writes (:func:`sweep`), whoever's scheme left it, since
  there is one.
* **Switch.** A symlink moves to a new target in one rename (:func:`switch`).

No fsync: the promise covers a process killed at any point (SIGKILL after the grace
period), not a kernel crash, where the node's job is lost anyway; an fsync per file
would cost start-up on slow overlay filesystems for no gain a job can see.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from .errors import DownloadError

TMP_SUFFIX = ".bootstrap-tmp"
# The most one write(2) hands the page cache. Linux sizes a buffered write's page-cache
# folios by the write's length; on a VM whose free memory goes back to the host (free
# page reporting, as on the benchmark machine) large folios come from memory the host
# must fault in again: writing 1 GiB took 0.2-2.5 s in 1 MiB writes, 0.19-0.24 s in
# 128 KiB ones (6-8 runs a size, order drawn at random; bench/README.md).
WRITE_SLICE = 128 * 1024

_serials = itertools.count(1)  # next() is atomic in CPython: names from any thread


def temporary(folder: str | os.PathLike[str]) -> str:
    """A new hidden temporary name in ``folder`` (nothing is created)."""
    return os.path.join(folder, f".{os.getpid():x}-{next(_serials):x}{TMP_SUFFIX}")


def write_all(fd: int, data: memoryview | bytes, offset: int = 0) -> None:
    """All of ``data`` at ``offset`` in ``fd``, at most WRITE_SLICE a call."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:WRITE_SLICE], offset)
        view, offset = view[written:], offset + written


def commit(tmp: str | os.PathLike[str], final: str | os.PathLike[str],
           mode: int | None = 0o644) -> None:
    """A landed object's temporary under its final name in one rename, with ``mode``
    (None: as written); ``tmp`` is removed when the rename fails."""
    try:
        _rename(tmp, final, mode)
    except IsADirectoryError:
        raise DownloadError(f"{os.fspath(final)} is a folder but the bucket holds a file of "
                            "that name; remove it and rerun") from None


def land(tmp: str | os.PathLike[str], final: str | os.PathLike[str],
         data: memoryview | bytes) -> None:
    """A body in memory written under ``tmp`` (created, or truncated: a retry's), then
    committed as ``final`` (0644); ``tmp`` is removed when the commit fails."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    commit(tmp, final, mode=None)


def discard(tmp: str | os.PathLike[str]) -> None:
    """Removes a temporary, if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def sweep(root: str | os.PathLike[str]) -> int:
    """Removes the temporaries a killed run left under ``root``; how many."""
    removed = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Replaces ``path`` with ``text``; ``mode`` (e.g. 0o644) regardless of the umask
    when given, else the umask's default. A symlink at ``path`` is replaced, not
    followed."""
    tmp = temporary(path.parent)
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        discard(tmp)
        raise
    _rename(tmp, path, mode)


def switch(link: Path, target: Path) -> None:
    """Points ``link`` at ``target`` in one rename: a reader sees the old or the new."""
    tmp = temporary(link.parent)
    os.symlink(target, tmp)
    _rename(tmp, link, None)


def _rename(tmp: str | os.PathLike[str], final: str | os.PathLike[str],
            mode: int | None) -> None:
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, final)  # rename(2) replaces a symlink, never follows it
    except BaseException:
        discard(tmp)
        raise
