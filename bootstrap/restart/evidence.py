"""Each attempt's evidence survives it: the log, the failure record, the hang stacks and
the preflight report, uploaded to ``.bootstrap/<rank>/<job id>/attempt-<K>/`` under
``DLS_TRAIN_URL`` (and the same under the log upload URL).

When: on every end (success, failure, hang, a failure before the command ran), and
after every periodic sync round what changed since the last (the log as it grows), so
a node killed by SIGKILL leaves its log up to the last round. What: copies, with every
credential value the bootstrap knows (keys, tokens, the job secret, anything named
like a secret) replaced by ``***``, line by line, so a 1 GiB log is scrubbed in bounded
memory. It never changes the job's exit code: a failure to upload is one warning.
``BOOTSTRAP_EVIDENCE=off`` turns it off.

Time at the end: the records are a few KiB; the log is at most ``BOOTSTRAP_LOG_MAX_MB``
and is sent only when it changed since the last round, at the upload engine's speed
(multipart past 16 MiB), inside the platform's stop grace after the output sync.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..config.location import Location
from ..config.settings import Settings, Transfer
from ..errors import BootstrapError
from ..log import Log, Redactor, scrubbed
from ..transfer import keys
from ..transfer.upload import put_objects

LOG_NAME = "task.log"


class Evidence:
    """One attempt's evidence files (name in the store -> local path) and where they go
    (a location and the key prefix in its bucket)."""

    def __init__(self, places: list[tuple[Location, str]], files: dict[str, Path],
                 transfer: Transfer, redact: Redactor, log: Log) -> None:
        self.places, self.files = places, files
        self.transfer, self.redact, self.log = transfer, redact, log
        self._sent: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) uploaded

    def upload(self, names: tuple[str, ...] | None = None) -> int:
        """Uploads the files (``names``: only those) that exist and changed since their
        last upload; returns how many went. Never raises: a failure is a warning."""
        todo: dict[str, Path] = {}
        for name, path in self.files.items():
            if names is not None and name not in names:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if self._sent.get(name) != (st.st_size, st.st_mtime_ns):
                todo[name] = path
        if not todo:
            return 0
        copies: dict[str, Path] = {}
        try:
            stamps = {}
            for name, path in todo.items():
                st = path.stat()
                stamps[name] = (st.st_size, st.st_mtime_ns)
                copies[name] = scrubbed(path, self.redact)
            for location, prefix in self.places:
                put_objects(location, self.transfer,
                            {prefix + name: copy for name, copy in copies.items()})
            self._sent.update(stamps)
        except (BootstrapError, OSError) as exc:
            message = exc.message if isinstance(exc, BootstrapError) else str(exc)
            self.log.warn(f"evidence upload failed (the exit code is unchanged): {message}")
            return 0
        finally:
            for copy in copies.values():
                with contextlib.suppress(OSError):
                    copy.unlink()
        return len(copies)

    def periodic(self) -> None:
        """A periodic round's share: what changed since the last (the log as it grows,
        the preflight report once)."""
        self.upload()


def for_attempt(settings: Settings, rank: int, number: int, log: Log) -> Evidence:
    """Attempt ``number``'s evidence on node ``rank``: its files, and the places they
    go (``DLS_TRAIN_URL``, and the log upload URL when one is set)."""
    outputs, run = settings.outputs, settings.run
    places = [(where, keys.attempt(where, rank, outputs.job_id, number))
              for where in (outputs.train_url, outputs.log_upload) if where is not None]
    files = {LOG_NAME: run.log_file, "failure.json": run.failure_file,
             "hang-stacks.txt": run.failure_file.parent / "hang-stacks.txt",
             "preflight.json": settings.job_dir / "preflight.json"}
    return Evidence(places, files, settings.transfer, log.redact, log)
