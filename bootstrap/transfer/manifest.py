"""A small record of what a previous run fetched, so a restarted job starts fast.

One JSON line per completed file, appended and flushed as each file lands, so a
run killed half-way still remembers what it finished. A file is skipped on the
next run only when the remote size and ETag match the record *and* the local file
still has the size and mtime it had when written: a file the user touched, or one
another run replaced, is fetched again. The manifest holds paths, sizes and ETags
only: no credentials, no URLs with query strings.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .. import landing

if TYPE_CHECKING:
    from typing import TextIO


class Manifest:
    """The record for one destination: :meth:`unchanged` asks, :meth:`record` tells."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self._entries: dict[str, tuple[int, str, int]] = {}
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except ValueError:
            return
        if not isinstance(header, dict) or header.get("source") != self.source:
            return  # another code directory was fetched here: trust nothing
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                self._entries[rec["p"]] = (int(rec["s"]), str(rec["e"]), int(rec["m"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: that file is simply fetched again

    def unchanged(self, rel: str, size: int, etag: str, local: Path) -> bool:
        entry = self._entries.get(rel)
        if entry is None or entry[0] != size or entry[1] != etag:
            return False
        try:
            st = os.lstat(local)
        except OSError:
            return False
        return st.st_size == size and st.st_mtime_ns == entry[2] and not os.path.islink(local)

    def entries(self) -> list[str]:
        """The relative paths recorded (valid for this source)."""
        return list(self._entries)

    def open_for_append(self) -> None:
        """Starts a fresh manifest holding the still-valid entries, then appends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        landing.write_text(self.path, "".join(
            [json.dumps({"source": self.source}) + "\n"]
            + [json.dumps({"p": rel, "s": size, "e": etag, "m": mtime}) + "\n"
               for rel, (size, etag, mtime) in self._entries.items()]))
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, rel: str, size: int, etag: str, local: Path) -> None:
        mtime = os.lstat(local).st_mtime_ns
        line = json.dumps({"p": rel, "s": size, "e": etag, "m": mtime}) + "\n"
        with self._lock:
            self._entries[rel] = (size, etag, mtime)
            if self._fh is not None:
                self._fh.write(line)
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
