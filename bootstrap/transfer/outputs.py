"""What happens after (and while) the command runs: output sync and log upload.

``BOOTSTRAP_OUTPUT_DIR`` (a local folder, e.g. on /cache) is synced to
``DLS_TRAIN_URL`` when the command ends, whatever its exit code, and every
``BOOTSTRAP_SYNC_INTERVAL`` seconds while it runs, so a preempted job keeps its last
checkpoints.

Node 0's outputs (and a one-node job's) go to ``<DLS_TRAIN_URL>/<rel>``, node r's to
``<DLS_TRAIN_URL>/node-<r>/<rel>`` (``BOOTSTRAP_OUTPUT_LAYOUT=shared``: the plain keys
for every node), so no node's file replaces another's.

A reader of ``DLS_TRAIN_URL`` can tell a finished sync from a cut one: the first round
withdraws the previous completion manifest (and writes ``owner.json``, the job id a
restart's restore checks), and the final one, once every object is
there, writes ``.bootstrap/<rank>/complete.json`` last (keys, sizes, ETags, the
command's exit code, the time). Multipart uploads in flight are noted under
``.bootstrap/<rank>/uploads/``; a run killed mid-upload (SIGKILL after the platform's
grace) leaves those notes, and the next run of that node aborts the uploads they name.

The log file is uploaded to ``BOOTSTRAP_LOG_UPLOAD_URL`` (or the
original's ``DLS_UPLOAD_LOG_OBS_DIR`` with ``DLS_USE_UPLOADER``); a log upload error
is reported and never changes the exit code.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..config.location import Location
from ..config.settings import Outputs, Transfer
from ..errors import BootstrapError
from ..log import Log, scrubbed
from . import keys
from .upload import SyncState, begin_outputs, sync_tree, upload_file, write_manifest


class OutputSync:
    """The output folder's sync: a round every ``BOOTSTRAP_SYNC_INTERVAL`` seconds while
    the command runs (:meth:`periodic`), the final one once it ended (:meth:`final`);
    what the store holds is remembered in ``state_file`` so each round sends only
    changes. Node r > 0 uploads under ``node-<r>/`` (``BOOTSTRAP_OUTPUT_LAYOUT=node``,
    :mod:`.keys`), its records under ``.bootstrap/<r>/`` either way."""

    def __init__(self, settings: Outputs, transfer: Transfer, state_file: Path,
                 log: Log, rank: int = 0, attempt: int = 1) -> None:
        if settings.output_dir is None or settings.destination is None:
            raise ValueError("OutputSync needs BOOTSTRAP_OUTPUT_DIR and its destination")
        self.src = settings.output_dir
        self.dest = keys.node_destination(settings.destination, rank, settings.layout)
        self.settings, self.transfer, self.log = settings, transfer, log
        self.journal = keys.journal(settings.destination, rank)
        self.owner = json.dumps({"job_id": settings.job_id, "attempt": attempt,
                                 "rank": rank, "outputs": self.dest.url}).encode()
        self._begun = False
        self._lock = threading.Lock()  # one sync at a time: periodic and final never overlap

        self.src.mkdir(parents=True, exist_ok=True)
        self.state = SyncState.load(state_file)

    def _sync(self, settle: float, round_name: str) -> None:
        with self._lock:
            if not self._begun:
                begin_outputs(self.dest, self.transfer, self.journal, self.log, self.owner)
                self._begun = True
            stats = sync_tree(self.src, self.dest, self.transfer, self.log, self.state,
                              settle=settle, journal=self.journal)
        self.log.info(f"output sync{round_name}: {stats.summary()} -> {self.dest.url}",
                      sync="final" if round_name else "periodic", **stats.fields())

    def periodic(self) -> None:
        """One round while the command runs: files still settling wait for the next."""
        try:
            self._sync(self.settings.sync_settle, "")
        except BootstrapError as exc:  # the final sync retries; the job goes on
            self.log.warn(f"periodic output sync failed: {exc.message}")

    def final(self, exit_code: int) -> bool:
        """The last sync, then the completion manifest; False when outputs are missing."""
        try:
            self._sync(0.0, " (final)")
            key = write_manifest(self.dest, self.transfer, self.journal, self.state,
                                 exit_code)
            self.log.info(f"output sync: completion manifest {self.dest.bucket}/{key}")
        except BootstrapError as exc:
            self.log.error(f"final output sync failed, outputs are only in {self.src}: "
                           f"{exc.message}")
            return False
        return True


def upload_log(path: Path, dest: Location, transfer: Transfer, log: Log) -> None:
    """The log file to ``<dest>/<its name>`` as the original did, its secrets scrubbed
    (:func:`bootstrap.log.scrubbed`)."""
    copy = None
    try:
        key = (dest.prefix or "") + path.name
        copy = scrubbed(path, log.redact)
        upload_file(copy, dest, key, transfer)
        log.info(f"log uploaded to {dest.bucket}/{key}")
    except (BootstrapError, OSError) as exc:  # a log upload never changes the job's end
        log.warn(f"log upload failed (the exit code is unchanged): {exc}")
    finally:
        if copy is not None:
            copy.unlink(missing_ok=True)
