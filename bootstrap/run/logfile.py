"""The command's log file, capped: its head and a rolling tail, never more than the cap.

The platform's own pipe helper capped ``/tmp/dls-task-N.log`` at 1 GiB; without a cap
a job with ``NCCL_DEBUG=INFO`` on every rank fills the root disk. The cap
(``BOOTSTRAP_LOG_MAX_MB``, default 1024) keeps what a reader of a failed job needs:
the first quarter (the set-up, the first error of a cascade) and at least the last
quarter (how it ended), with one line between them saying how many bytes were left
out. Only the file is cut: the command's stdout and stderr stream through whole.

How: appends go to the end of the file until it reaches the cap; then the newest
quarter is copied down behind the head and the cut line, and the file is truncated
there, so it grows again from half the cap. Each byte is thus copied about once
more, in 1 MiB steps (the cost per line is in bench/README.md, "log cap"). Cuts fall
on line boundaries where a line boundary is near. One writer per file: the
supervisor's two streams (or an MPI agent's remote output) share this object, whose
lock keeps their lines whole.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

COPY_STEP = 1 << 20


class CappedLog:
    """An append-only log file of at most ``max_bytes`` (0: no cap)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes = path, max_bytes
        # Not O_APPEND: Linux's pwrite ignores its offset on such a file, and the cut
        # rewrites the middle. The existing content (an earlier run in this container)
        # is kept, as the original's `tee -a` kept it.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._head_end: int | None = None  # where the kept head ends, once cut
        self._cut_line = b""  # the line after the head
        self.cut_bytes = 0  # bytes left out so far
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Appends ``data`` (whole: two writers' lines never interleave)."""
        with self._lock:
            if self._fd < 0:
                return
            view = memoryview(data)
            while view:
                done = os.pwrite(self._fd, view, self._size)
                self._size += done
                view = view[done:]
            if self.max_bytes and self._size > self.max_bytes:
                self._cut()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _cut(self) -> None:
        quarter = max(self.max_bytes // 4, 1)
        if self._head_end is None:
            head = os.pread(self._fd, quarter, 0)
            newline = head.rfind(b"\n")
            self._head_end = newline + 1 if newline >= 0 else len(head)
        tail_start = self._size - quarter
        probe = os.pread(self._fd, min(4096, quarter), tail_start)
        newline = probe.find(b"\n")
        if 0 <= newline < len(probe) - 1:
            tail_start += newline + 1
        self.cut_bytes += tail_start - (self._head_end + len(self._cut_line))
        self._cut_line = (f"[run_train: {self.cut_bytes} bytes of this log cut here: "
                          f"BOOTSTRAP_LOG_MAX_MB={self.max_bytes / 2**20:g} keeps its first "
                          "and last part]\n").encode()
        at = self._head_end
        os.pwrite(self._fd, self._cut_line, at)
        at += len(self._cut_line)
        source = tail_start
        while source < self._size:  # forward: the copy never overtakes what it reads
            chunk = os.pread(self._fd, min(COPY_STEP, self._size - source), source)
            os.pwrite(self._fd, chunk, at)
            source += len(chunk)
            at += len(chunk)
        os.ftruncate(self._fd, at)
        self._size = at
