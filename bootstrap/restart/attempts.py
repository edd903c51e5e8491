"""Which attempt of the job this is: ``BOOTSTRAP_ATTEMPT``, 1 for the first run.

The platform gives no counter (its restart count is an annotation of the job, not a
variable of its containers), so the store keeps one: every attempt of node r marks
itself at ``.bootstrap/<r>/<job id>/attempt-<K>/started.json`` as it starts, and the
next one is K + 1. Each node counts its own marks: no node waits for another, and
since the platform restarts every container of a job together, every node of an
attempt counts the same K. A new job under the same URL has another id, so it starts
at 1; a job the platform names no id for is always attempt 1, and the log says so.
"""

from __future__ import annotations

import json
import re
import time

from ..config.location import Location
from ..config.settings import Transfer
from ..log import Log
from ..storage.signed import SignedClient
from ..transfer import keys
from ..transfer.listing import keys_under
from ..transfer.source import remote
from ..transfer.upload import put_objects
from ..version import describe

_ATTEMPT = re.compile(r"attempt-(\d+)/")


def begin(train: Location, rank: int, job_id: str | None, transfer: Transfer,
          log: Log) -> int:
    """This attempt's number, counted from the store, and its marker written there.
    Store failures raise (a DownloadError or UploadError with one line)."""
    if job_id is None:
        log.info("attempt: 1 (the platform names no job id: DLS_JOB_ID, BATCH_JOB_ID and "
                 "MA_VJ_NAME are unset, so earlier runs under DLS_TRAIN_URL are not this "
                 "job's)")
        return 1
    prefix = keys.attempts(train, rank, job_id)
    with remote(train, transfer, log) as source:
        number = 1 + latest(source.client, train.bucket, prefix, transfer)
    put_objects(train, transfer, {keys.attempt(train, rank, job_id, number) + "started.json":
                                  json.dumps({"job_id": job_id, "attempt": number, "rank": rank,
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "bootstrap": describe(transfer.backend)},
                                             indent=1).encode()})
    log.info(f"attempt: {number} of job {job_id} on node {rank}"
             + (" (earlier attempts' evidence: "
                f"{train.url.rstrip('/')}/{prefix[len(train.prefix):]})" if number > 1 else ""))
    return number


def latest(client: SignedClient, bucket: str, prefix: str, transfer: Transfer) -> int:
    """The highest attempt number marked under ``prefix`` (0: none)."""
    found = 0
    for key, _size, _etag in keys_under(client, bucket, prefix, transfer):
        match = _ATTEMPT.match(key[len(prefix):])
        if match:
            found = max(found, int(match.group(1)))
    return found

