"""Files that are whole or absent: every state file the bootstrap leaves is written here.

A reader (the command reading the hostfile, the next run reading a manifest, another
process of the node reading the staging record) sees the old file or the new one, never
a half-written one: the text goes to a temporary name in the same folder (so the rename
stays on one filesystem), then ``rename(2)`` puts it under its name at once. The
temporary name carries the pid and the thread, since two jobs may share a home and two
threads a folder. A failure removes the temporary file and raises.

No fsync: the promise covers a process killed at any point (SIGKILL after the grace
period), not a kernel crash, where the node's job is lost anyway; an fsync per file
would cost start-up on slow overlay filesystems for no gain a job can see.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Replaces ``path`` with ``text``; ``mode`` (e.g. 0o644) regardless of the umask
    when given, else the umask's default. A symlink at ``path`` is replaced, not
    followed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
