"""A restarted job's outputs come back before its command starts.

Into ``BOOTSTRAP_OUTPUT_DIR``: node 0's tree (``<DLS_TRAIN_URL>/<rel>``, without the
records under ``.bootstrap/`` nor, under the per-node layout, the ``node-<r>/`` trees),
and on node r > 0 its own ``node-<r>/`` tree on top (its own file wins a name both
have), so every rank can load the checkpoint node 0 saved and its own shard. Contract:

* **Only this job's.** ``BOOTSTRAP_RESTORE=auto`` restores a tree only when its owner
  record (``.bootstrap/<r>/owner.json``, written by the output sync's first round)
  names this job's id; a job without an id restores nothing and says so. ``always``
  restores whatever is there (to continue another job's training); ``off`` nothing.
* **Whole, verified objects.** What comes back is what the store lists: objects whose
  PUT (or multipart upload) completed; a file still settling was never sent and an
  upload that never completed was never an object. Every object goes through the
  download engine (parallel ranges for large ones, each checked against its ETag).
* **Local files win.** A file already in the output folder (an in-place restart) is
  never overwritten, whatever the store holds.
* **Not sent back.** Restored files are recorded in the output sync's state, so
  the first round uploads only what the command changes.
* **The store serves node 0's tree once.** With peer-assisted fetch on, it passes down
  the relay tree like the code (its own protocol and port); a node's own tree comes
  from the store.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.location import Location
from ..config.settings import Outputs, Transfer
from ..errors import DownloadError
from ..log import Log
from ..storage.signed import SignedClient
from ..transfer import keys
from ..transfer.fetch import download
from ..transfer.listing import RemoteObject, keys_under, list_objects
from ..transfer.manifest import Manifest
from ..transfer.source import Remote, remote
from ..transfer.upload import OWNER_NAME, SyncState

if TYPE_CHECKING:
    from ..relay.protocol import Peers
    from ..relay.server import RelayServer


@dataclass(frozen=True, slots=True)
class Tree:
    """One node's outputs as the store lists them, to be restored."""

    location: Location
    objects: tuple[RemoteObject, ...]
    folders: tuple[str, ...]


@dataclass(slots=True)
class Restored:
    """What a restore brought back: files and bytes, how many from a peer."""

    files: int = 0
    bytes: int = 0
    peer_files: int = 0
    retries: int = 0
    kept_local: int = 0  # names the output folder already had: left as they are
    trees: str = "nothing"

    def fields(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes, "peer_files": self.peer_files,
                "retries": self.retries, "kept_local": self.kept_local}

    def summary(self) -> str:
        return (f"{self.files} files, {self.bytes / 2**20:.1f} MiB from {self.trees}"
                + (f", {self.peer_files} from a peer" if self.peer_files else "")
                + (f", {self.kept_local} kept as they were here" if self.kept_local else ""))


def restore(outputs: Outputs, transfer: Transfer, rank: int, state_file: Path,
            peers: Peers | None, log: Log) -> Restored:
    """Brings earlier attempts' outputs into the output folder (see the module's
    contract); raises DownloadError when a tree cannot be fetched whole."""
    done = Restored()
    train, dest = outputs.train_url, outputs.output_dir
    if train is None or dest is None or outputs.restore == "off":
        done.trees = "nothing (BOOTSTRAP_RESTORE=off)"
        return done
    if outputs.restore == "auto" and outputs.job_id is None:
        done.trees = ("nothing: the platform names no job id (DLS_JOB_ID, BATCH_JOB_ID, "
                      "MA_VJ_NAME), so no output under DLS_TRAIN_URL is known to be this "
                      "job's; BOOTSTRAP_RESTORE=always restores them anyway")
        return done
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check "
                            "BOOTSTRAP_OUTPUT_DIR") from None
    mine = keys.node_destination(train, rank, outputs.layout)
    server = None
    if peers is not None:
        from ..relay.fetch import open_relay

        server = open_relay(peers, log)  # before the listing: children may knock already
    try:
        with remote(train, transfer, log) as source:
            root = _tree(source, train, train, 0, outputs, log)
            own = _tree(source, train, mine, rank, outputs, log) if mine != train else None
            if root is not None:  # without the records and the other nodes' trees
                layout = outputs.layout
                root = Tree(train, tuple(o for o in root.objects
                                         if not keys.not_node_zeros(o.rel, layout)),
                            tuple(f for f in root.folders
                                  if not keys.not_node_zeros(f + "/", layout)))
            local = {o.rel for tree in (root, own) if tree is not None for o in tree.objects
                     if (dest / o.rel).exists() or (dest / o.rel).is_symlink()}
            done.kept_local = len(local)
            state = SyncState.load(state_file)
            if root is not None:
                objects = [o for o in root.objects if o.rel not in local]
                _fetch(source, objects, root.folders, dest, 0, peers, server, done, log)
                _record(state, objects, dest, ours=mine == train)
                done.trees = "node 0's outputs"
        if own is not None:
            objects = [o for o in own.objects if o.rel not in local]
            with remote(mine, transfer, log) as own_source:
                _fetch(own_source, objects, own.folders, dest, rank, None, None, done, log)
            _record(state, objects, dest, ours=True)
            done.trees = ("node 0's outputs and " if root is not None else "") + \
                f"node {rank}'s own"
        state.save()
    finally:
        if server is not None:
            server.close()
    return done


def _tree(source: Remote, train: Location, location: Location, rank: int, outputs: Outputs,
          log: Log) -> Tree | None:
    """Node ``rank``'s tree (at ``location``) when it is to be restored, else None."""
    owner = _owner(source.client, train, rank, source.settings)
    if outputs.restore == "auto" and owner != outputs.job_id:
        if owner is not None:
            log.info(f"restore: node {rank}'s outputs under {location.url} are job "
                     f"{owner}'s, not this job's ({outputs.job_id}): not restored "
                     "(BOOTSTRAP_RESTORE=always restores them)")
        return None
    objects, folders = list_objects(source.client, location, source.settings, empty_ok=True)
    return Tree(location, tuple(objects), tuple(folders))


def _owner(client: SignedClient, train: Location, rank: int,
           transfer: Transfer) -> str | None:
    """The job id node ``rank``'s owner record names (None: no record)."""
    key = keys.journal(train, rank) + OWNER_NAME
    for name, size, _etag in keys_under(client, train.bucket, key, transfer):
        if name == key:
            try:
                found = json.loads(client.get_object(train.bucket, key, size))
                return str(found["job_id"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _fetch(source: Remote, objects: list[RemoteObject], folders: tuple[str, ...], dest: Path,
           tree: int, peers: Peers | None, server: RelayServer | None, done: Restored,
           log: Log) -> None:
    """``objects`` into ``dest`` through the download engine (with the relay for node
    0's tree when ``peers``); a manifest of its own, removed after."""
    manifest_file = dest.parent / f".{dest.name}.restore-{tree}.jsonl"
    try:
        if peers is not None:
            from ..relay.fetch import download_with_peers
            from ..relay.server import AnnouncingManifest, Held

            stats = download_with_peers(source, objects, list(folders), dest,
                                        AnnouncingManifest(manifest_file, source.location.url,
                                                           Held()),
                                        peers, server, log, label="restore")
        elif objects:
            stats = download(source, objects, list(folders), dest,
                             Manifest(manifest_file, source.location.url), log,
                             label="restore")
        else:
            return
    finally:
        with contextlib.suppress(OSError):
            manifest_file.unlink()
    done.files += stats.files + stats.peer_files
    done.bytes += sum(o.size for o in objects)
    done.peer_files += stats.peer_files
    done.retries += stats.retries


def _record(state: SyncState, objects: list[RemoteObject], dest: Path, ours: bool) -> None:
    """Restored files as the store holds them: ``ours`` at this node's own destination
    (in its manifest), else another node's (not sent again while unchanged)."""
    for obj in objects:
        try:
            st = (dest / obj.rel).stat()
        except OSError:
            continue
        if ours:
            state.done[obj.rel] = (st.st_size, st.st_mtime_ns, obj.etag)
            state.restored.pop(obj.rel, None)
        else:
            state.restored[obj.rel] = (st.st_size, st.st_mtime_ns)
