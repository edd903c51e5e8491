"""Stage the job's data (``DLS_DATA_URL``) onto the node before the command starts.

Opt-in: ``BOOTSTRAP_DATA_DIR`` (e.g. ``/cache/data``) and ``DLS_DATA_URL`` both set.
The data lands in a *version* of ``$BOOTSTRAP_DATA_DIR/<last component>``; the command
gets that version's path as ``BOOTSTRAP_DATA_PATH`` (fixed for its whole life) and the
list of its files as ``BOOTSTRAP_DATA_SHARE_FILE``. Contract (each point is tested):

* **Sources**: ``s3://``/``obs://`` through the code directory's engine (endpoint,
  credentials, retries, verification, atomic files), or a mounted path / ``file://``
  copied in parallel with the same atomicity. A URL that does not end in ``/`` and
  names an existing object is that one object, staged as one file.
* **Sharding** (``BOOTSTRAP_DATA_SHARD=node``): the keys, sorted by their UTF-8 bytes
  (folder markers left out), are dealt by index: key *i* goes to node *i* mod *N*,
  so the N nodes together hold exactly one copy (:func:`share`). A single object
  cannot be split: every node stages it.
* **Once per node**: processes staging into the same folder take an exclusive
  ``flock`` on ``.bootstrap-stage/<name>.lock`` in it (not in a container's /tmp); the
  others wait (``BOOTSTRAP_DATA_TIMEOUT``), then find the data staged and fetch nothing.
  The kernel drops the lock of a holder that dies, so a waiter takes over.
* **Reuse, safely**: versions live in ``.bootstrap-stage/<name>/v*``; the next job
  hard-links every unchanged file (size and ETag, as recorded) from the current
  version into a new one, fetches only what changed, leaves out what disappeared, and
  switches the ``<name>`` symlink atomically. A running job holds its version with a
  shared ``flock`` (inherited by the command across exec); a version is deleted only
  when nobody holds it, and only versions this uid staged. A folder staged from
  another URL or shard spec is an error, not a merge; a version owned by another uid,
  or group/world-writable, is never reused.
* **Space first**: the bytes to fetch are compared with the free space (and with
  ``BOOTSTRAP_DATA_MAX_GB``) before any download: exit 7 with one line otherwise.

This module fetches; how versions are kept, locked, shared and let go is the version
store's (:mod:`.versions`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import landing
from ..config import location as locations
from ..errors import DownloadError, NoSpaceForData
from ..relay.fetch import download_with_peers, open_relay, serve_only
from ..relay.server import AnnouncingManifest, Held
from ..transfer.download import Stats
from ..transfer.fetch import download, manifest_path
from ..transfer.listing import RemoteObject, list_objects, named_object
from ..transfer.manifest import Manifest
from ..transfer.source import Remote, remote
from . import versions

if TYPE_CHECKING:
    from ..config.settings import Staging, Transfer
    from ..log import Log
    from ..relay.protocol import Peers
    from ..relay.server import RelayServer

GB = 1000**3


@dataclass(frozen=True, slots=True)
class Staged:
    """What the command is told: where its data is, and which files are this node's."""

    path: Path  # the version (or, for a single object, its file)
    share_file: Path
    stats: Stats
    reused: bool  # the current version was complete and unchanged: nothing fetched
    hold_fd: int  # the shared lock on the version, kept open into the command

    def exports(self) -> dict[str, str]:
        return {"BOOTSTRAP_DATA_PATH": str(self.path),
                "BOOTSTRAP_DATA_SHARE_FILE": str(self.share_file)}


def share(objects: Sequence[RemoteObject], rank: int, nodes: int) -> list[RemoteObject]:
    """Node ``rank``'s share: sorted by the keys' UTF-8 bytes, key i to node i mod N."""
    ordered = sorted(objects, key=lambda o: o.rel.encode("utf-8", "surrogateescape"))
    return ordered[rank::nodes]


def stage(settings: Staging, transfer: Transfer, rank: int, nodes: int, log: Log,
          peers: Peers | None = None) -> Staged:
    """Stages the data for this node; see the module's contract. With ``peers`` (and
    no sharding: shards have no copies to share) the nodes pass it down the relay."""
    assert settings.source is not None and settings.folder is not None
    source = settings.source
    root = settings.folder
    name = source.name
    state = root / versions.STATE
    history = state / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        versions.shared_dir(state)
        versions.shared_dir(history)
    except OSError as exc:
        raise DownloadError(f"cannot prepare BOOTSTRAP_DATA_DIR={root}: {exc.strerror}; "
                            "point it at a writable folder (e.g. /cache/data)") from None
    # The relay listens before the lock and the listing, so children knock in time.
    with _relay_server(peers if source.is_remote else None, log) as server, \
            versions.node_lock(state / f"{name}.lock", settings.timeout, log), \
            _session(source, transfer, log) as session:
        listed, single = _list(source, transfer, session)
        # One object cannot be split: every node stages it.
        spec = "none" if settings.shard == "none" or nodes == 1 or single is not None \
            else f"node {rank}/{nodes}"
        if spec != "none" or not source.is_remote:
            peers = None  # shards have no copies to share; a mounted path needs no relay
            if server is not None:
                server.close()
                server = None
        versions.claim(state / f"{name}.json", source.url, spec, root / name)
        mine = share(listed, rank, nodes) if spec != "none" else share(listed, 0, 1)
        current = versions.current(root / name, history)
        reusable = current if current is not None and versions.trusted(current) else None
        if current is not None and reusable is None:
            log.info(f"data: {current} is not this uid's or is writable by others; "
                     "staging a fresh copy")
        stats = Stats(backend="reused")
        unchanged = _unchanged(reusable, mine, source.url) if reusable else set()
        if reusable is not None and unchanged == {o.rel for o in mine} \
                and _files(reusable, source.url) == unchanged:
            version, reused = reusable, True
            stats.total_files, stats.skipped = len(mine), len(mine)
            stats.total_bytes = sum(o.size for o in mine)
            if server is not None:
                serve_only(version, mine, server, log)
        else:
            version = history / f"v{time.time_ns()}-{os.getpid()}"
            _check_space(root, mine, unchanged, settings.max_bytes)
            stats = _build(version, reusable, mine, unchanged, session, transfer, source.url,
                           log, peers, server)
            reused = False
        share_file = history / f"{version.name}.share"
        if not reused:
            landing.write_text(share_file, "".join(f"{o.rel}\n" for o in mine), mode=0o644)
            landing.write_text(history / f"{version.name}.complete",
                              json.dumps({"source": source.url, "shard": spec,
                                          "files": len(mine)}) + "\n", mode=0o644)
        target = version / single.rel if single is not None else version
        if not reused:
            landing.switch(root / name, target)
        hold = versions.hold(history / f"{version.name}.hold")
        versions.collect(history, keep=version, log=log)
    return Staged(target, share_file, stats, reused, hold)


@contextlib.contextmanager
def _session(source: locations.Location, transfer: Transfer,
             log: Log) -> Iterator[Remote | None]:
    """One store session for the listing and the download (None for a mounted path)."""
    if not source.is_remote:
        yield None
        return
    with remote(source, transfer, log) as session:
        yield session


@contextlib.contextmanager
def _relay_server(peers: Peers | None, log: Log) -> Iterator[RelayServer | None]:
    """This node's relay server for the data (None without peers or children), closed
    at the end whatever happens."""
    if peers is None:
        yield None
        return

    server = open_relay(peers, log)
    try:
        yield server
    finally:
        if server is not None:
            server.close()


# --------------------------------------------------------------------------- listing

def _list(source: locations.Location, transfer: Transfer,
          session: Remote | None) -> tuple[list[RemoteObject], RemoteObject | None]:
    """Every file of the source (relative paths), and the single object when the URL
    names one."""
    if session is None:
        assert source.path is not None
        return _list_local(source.path)
    if not source.url.endswith("/"):
        single = named_object(session.client, source, transfer)
        if single is not None:
            return [single], single
    objects, _ = list_objects(session.client, source, transfer)
    return objects, None


def _list_local(path: Path) -> tuple[list[RemoteObject], RemoteObject | None]:
    """A mounted path's files; the local "ETag" is size and mtime (what rsync trusts)."""
    try:
        st = os.stat(path)
    except OSError:
        raise DownloadError(f"data source {path} does not exist; check DLS_DATA_URL") from None
    if stat.S_ISREG(st.st_mode):
        one = RemoteObject(str(path), path.name, st.st_size, f"{st.st_size}:{st.st_mtime_ns}")
        return [one], one
    found = []
    for folder, dirs, names in os.walk(path):
        dirs.sort()
        for name in names:
            full = os.path.join(folder, name)
            try:
                fst = os.stat(full)
            except OSError:
                continue
            if stat.S_ISREG(fst.st_mode):
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                found.append(RemoteObject(full, rel, fst.st_size,
                                          f"{fst.st_size}:{fst.st_mtime_ns}"))
    if not found:
        raise DownloadError(f"data source {path} holds no files; check DLS_DATA_URL")
    return found, None


# --------------------------------------------------------------------------- versions


def _manifest(version: Path, url: str) -> Manifest:
    return Manifest(manifest_path(version), url)


def _unchanged(version: Path, objects: Sequence[RemoteObject], url: str) -> set[str]:
    record = _manifest(version, url)
    return {o.rel for o in objects
            if record.unchanged(o.rel, o.size, o.etag, version / o.rel)}


def _files(version: Path, url: str) -> set[str]:
    """The files the version holds, by its manifest (what to compare with the listing)."""
    return set(_manifest(version, url).entries())


def _check_space(root: Path, objects: Sequence[RemoteObject], unchanged: set[str],
                 cap: int | None) -> None:
    total = sum(o.size for o in objects)
    need = sum(o.size for o in objects if o.rel not in unchanged)
    if cap is not None and total > cap:
        raise NoSpaceForData(
            f"the data for this node is {_human(total)}, over BOOTSTRAP_DATA_MAX_GB="
            f"{cap / GB:g}; raise the cap, or shard the data (BOOTSTRAP_DATA_SHARD=node)")
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise NoSpaceForData(
            f"staging needs {_human(need)} but {root} has {_human(free)} free; "
            "free space there, point BOOTSTRAP_DATA_DIR at a larger disk, or shard the data "
            "(BOOTSTRAP_DATA_SHARD=node)")


def _human(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


def _build(version: Path, previous: Path | None, objects: list[RemoteObject],
           unchanged: set[str], session: Remote | None, transfer: Transfer, url: str,
           log: Log, peers: Peers | None = None,
           server: RelayServer | None = None) -> Stats:
    """A new version: unchanged files hard-linked from ``previous`` (same inodes, never
    modified: downloads land by rename), the rest fetched (through the relay, with
    ``peers``)."""
    version.mkdir(mode=0o755)
    if peers is not None:
        record: Manifest = AnnouncingManifest(manifest_path(version), url, Held())
    else:
        record = _manifest(version, url)
    linked: set[str] = set()
    for obj in objects:
        if previous is None or obj.rel not in unchanged:
            continue
        dest = version / obj.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(previous / obj.rel, dest)
        except OSError:
            continue  # fetched instead
        record.record(obj.rel, obj.size, obj.etag, dest)
        linked.add(obj.rel)
    folders = sorted({"/".join(o.rel.split("/")[:i])
                      for o in objects for i in range(1, o.rel.count("/") + 1)})
    try:
        if session is None:
            return _copy_local(objects, folders, version, record, transfer.workers, linked)
        if peers is not None:
            assert isinstance(record, AnnouncingManifest)
            return download_with_peers(session, objects, folders, version, record, peers,
                                       server, log, label="data", unchanged=linked)
        return download(session, objects, folders, version, record, log, label="data",
                        unchanged=linked)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceForData(f"{version.parent.parent.parent} ran out of space while "
                                 "staging; free space there or shard the data") from None
        raise


def _copy_local(objects: list[RemoteObject], folders: list[str], version: Path,
                record: Manifest, workers: int, unchanged: set[str]) -> Stats:
    """A mounted path's files but the ``unchanged`` ones (linked from the version
    before), copied on threads, each under a temporary name first."""
    from concurrent.futures import ThreadPoolExecutor

    stats = Stats(backend="local copy")
    started = time.monotonic()
    for rel in folders:
        (version / rel).mkdir(parents=True, exist_ok=True)
    todo = []
    for obj in objects:
        stats.total_files += 1
        stats.total_bytes += obj.size
        if obj.rel in unchanged:
            stats.skipped += 1
        else:
            todo.append(obj)

    def copy(obj: RemoteObject) -> None:
        dest = version / obj.rel
        tmp = landing.temporary(dest.parent)
        try:
            shutil.copyfile(obj.key, tmp)
            if os.path.getsize(tmp) != obj.size:
                raise DownloadError(f"{obj.key} changed while it was being staged; rerun")
        except BaseException:
            landing.discard(tmp)
            raise
        landing.commit(tmp, dest)
        record.record(obj.rel, obj.size, obj.etag, dest)

    record.open_for_append()
    try:
        with ThreadPoolExecutor(min(max(workers, 1), 16)) as pool:
            for obj, _ in zip(todo, pool.map(copy, todo), strict=True):
                stats.files += 1
                stats.bytes += obj.size
    finally:
        record.close()
    stats.seconds = time.monotonic() - started
    return stats










