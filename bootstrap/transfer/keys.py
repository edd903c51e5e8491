"""Where a job's outputs and records live under ``DLS_TRAIN_URL`` (one place for the map).

::

    <DLS_TRAIN_URL>/<rel>                      node 0's outputs (and a one-node job's)
    <DLS_TRAIN_URL>/node-<r>/<rel>             node r's, r > 0 (BOOTSTRAP_OUTPUT_LAYOUT=node)
    <DLS_TRAIN_URL>/.bootstrap/<r>/complete.json   node r's completion manifest
    <DLS_TRAIN_URL>/.bootstrap/<r>/owner.json      the job whose outputs node r's are
    <DLS_TRAIN_URL>/.bootstrap/<r>/<job id>/attempt-<K>/   attempt K's evidence

With ``BOOTSTRAP_OUTPUT_LAYOUT=shared`` every node writes at the plain keys (sharded
checkpoints whose names differ by rank): two nodes writing one name leave whichever
came last, and each node's manifest lists the ETag it wrote, so a reader can tell.
"""

from __future__ import annotations

import re

from ..config.location import Location

JOURNAL = ".bootstrap/"
NO_JOB_ID = "no-job-id"  # the attempts' folder of a job the platform names no id for
_NODE_TREE = re.compile(r"^node-\d+/")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def child(location: Location, folder: str) -> Location:
    """``location``'s sub-folder ``folder`` (no slashes at either end)."""
    return Location(url=location.url.rstrip("/") + f"/{folder}/", bucket=location.bucket,
                    prefix=f"{location.prefix}{folder}/")


def node_destination(train: Location, rank: int, layout: str) -> Location:
    """Where node ``rank`` uploads its outputs."""
    return train if rank == 0 or layout == "shared" else child(train, f"node-{rank}")


def journal(train: Location, rank: int) -> str:
    """The key prefix of node ``rank``'s records (manifest, owner, attempts)."""
    return f"{train.prefix}{JOURNAL}{rank}/"


def folder_name(job_id: str | None) -> str:
    """A job id as one safe key segment."""
    return _UNSAFE.sub("_", job_id) if job_id else NO_JOB_ID


def attempts(train: Location, rank: int, job_id: str | None) -> str:
    """The key prefix under which node ``rank`` keeps one folder per attempt of the job."""
    return f"{journal(train, rank)}{folder_name(job_id)}/"


def attempt(train: Location, rank: int, job_id: str | None, number: int) -> str:
    return f"{attempts(train, rank, job_id)}attempt-{number}/"


def not_node_zeros(rel: str, layout: str) -> bool:
    """Whether ``rel`` (relative to DLS_TRAIN_URL) is not part of node 0's tree: the
    records, and under the per-node layout the other nodes' trees."""
    return rel.startswith(JOURNAL) or (layout == "node" and bool(_NODE_TREE.match(rel)))
