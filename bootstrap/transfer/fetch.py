"""Fetch a tree: the code directory (or ``bootstrap sync``'s source) onto this node.

One call, :func:`fetch`: a local source is copied, a remote one is listed
(:mod:`.listing`) and downloaded (:mod:`.download`, whose docstring is the
contract). Every failure leaves as a :class:`~bootstrap.errors.DownloadError` with
one line saying what to fix.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import BootstrapError, DownloadError
from ..log import Log
from ..storage import retry
from ..storage.errors import explain
from .download import Engine, Stats
from .listing import RemoteObject, list_objects
from .location import Location
from .manifest import Manifest
from .verify import Layout, checkable

if TYPE_CHECKING:
    from ..config.settings import Transfer
    from ..config.storage import Credentials
    from ..storage.signed import SignedClient
    from .relay import AnnouncingManifest, Peers, RelayServer


def copy_local(src: Path, dest: Path) -> Stats:
    """The ``file://`` / plain-path case: the tree is copied, as an object store's would be."""
    stats = Stats(backend="local copy")
    started = time.monotonic()
    if not src.is_dir():
        raise DownloadError(f"code directory {src} does not exist or is not a folder; check "
                            "DLS_APP_URL")
    if src.resolve() == dest.resolve():
        return stats
    try:
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        raise DownloadError(f"cannot copy {src} to {dest}: {exc}") from None
    for _, _, names in os.walk(dest):
        stats.files += len(names)
    stats.seconds = time.monotonic() - started
    return stats


def manifest_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.bootstrap-manifest.jsonl"


def fetch(location: Location, dest: Path, settings: Transfer, log: Log) -> Stats:
    """Brings the tree at ``location`` to ``dest``; raises DownloadError with the reason."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check that "
                            "BOOTSTRAP_HOME is writable") from None
    if not location.is_remote:
        assert location.path is not None
        return copy_local(location.path, dest)
    with remote(location, settings) as source:
        objects, folders = list_objects(source.client, location, settings)
        return source.download(objects, folders, dest,
                               Manifest(manifest_path(dest), location.url), log)


class Remote:
    """A remote tree being fetched: credentials resolved once, one signed client for
    its listing and its large objects' ranges."""

    def __init__(self, location: Location, settings: Transfer, creds: Credentials,
                 client: SignedClient) -> None:
        self.location, self.settings, self.creds, self.client = location, settings, creds, client

    def download(self, objects: list[RemoteObject], folders: list[str], dest: Path,
                 manifest: Manifest, log: Log, label: str = "fetch",
                 stats: Optional[Stats] = None,
                 layouts: Optional[dict[str, Layout]] = None) -> Stats:
        """Fetches ``objects`` into ``dest``, skipping those ``manifest`` vouches for,
        each verified against its ETag (``layouts``: multipart objects' parts already
        known; the rest are asked here); ``stats``, when given, is the one the engine
        counts into as it goes."""
        from ..storage.base import open_store

        known = dict(layouts or {})
        todo = [o for o in objects if o.parts and o.rel not in known
                and not manifest.unchanged(o.rel, o.size, o.etag, dest / o.rel)]
        known.update(self.layouts(todo))

        store = open_store(self.settings, self.creds, self.location.bucket, log)
        try:
            engine = Engine(store, self.client, self.location, dest, self.settings, log,
                            manifest, stats, known)
            engine.label = label
            engine.plan(objects, folders)
            manifest.open_for_append()
            return engine.run()
        finally:
            store.close()


    def layouts(self, objects: list[RemoteObject]) -> dict[str, Layout]:
        """The parts of each multipart object in ``objects`` (what lets its bytes be
        checked against its ETag, see :mod:`.verify`), asked of the store, a few at a
        time; an object the store cannot answer for is left out (size check only)."""
        from .verify import layout

        def ask(obj: RemoteObject) -> Optional[Layout]:
            try:
                return layout(obj, lambda k: retry.call(
                    lambda: self.client.part_length(self.location.bucket, obj.key, k),
                    self.settings.retry_attempts, self.settings.retry_deadline))
            except Exception:  # noqa: BLE001 - unanswered: the size is all we can check
                return None
            finally:
                self.client.close()  # this worker thread's connection ends with it

        multipart = [o for o in objects if o.parts]
        if not multipart:
            return {}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(8, len(multipart))) as pool:
            found = dict(zip((o.rel for o in multipart), pool.map(ask, multipart),
                             strict=True))
        return {rel: parts for rel, parts in found.items() if parts is not None}


@contextmanager
def remote(location: Location, settings: Transfer) -> Iterator[Remote]:
    """The session for one remote tree; every store failure inside it leaves as one
    clear DownloadError line."""
    from ..storage.base import credentials
    from ..storage.signed import SignedClient

    try:
        creds = credentials(settings)
        client = SignedClient(settings.endpoint, creds, settings.connect_timeout,
                              settings.read_timeout)
        try:
            yield Remote(location, settings, creds, client)
        finally:
            client.close()
    except BootstrapError:
        raise
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one clear line
        raise explain(exc, location, settings.endpoint.where) from None


def fetch_with_peers(location: Location, dest: Path, settings: Transfer, peers: Peers,
                     log: Log) -> Stats:
    """:func:`fetch` with the job's nodes passing files down a tree (see
    :mod:`.relay`); whatever the peers cannot give comes from the store."""
    from . import relay

    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check that "
                            "BOOTSTRAP_HOME is writable") from None
    server = open_relay(peers, log)  # before the listing: children may knock already
    try:
        with remote(location, settings) as source:
            objects, folders = list_objects(source.client, location, settings)
            manifest = relay.AnnouncingManifest(manifest_path(dest), location.url,
                                                relay.Held())
            for obj in objects:
                if manifest.unchanged(obj.rel, obj.size, obj.etag, dest / obj.rel):
                    manifest.held.add(obj.rel, obj.size)
            return download_with_peers(source, objects, folders, dest, manifest, peers,
                                       server, log)
    finally:
        if server is not None:
            server.close()  # a failed listing: the children find no parent, use the store


def open_relay(peers: Peers, log: Log) -> Optional[RelayServer]:
    """This node's relay server, listening, when it has children in the tree."""
    from . import relay

    return relay.open_server(peers, log)


def download_with_peers(source: Remote, objects: list[RemoteObject], folders: list[str],
                        dest: Path, manifest: AnnouncingManifest, peers: Peers,
                        server: Optional[RelayServer], log: Log,
                        label: str = "fetch") -> Stats:
    """``objects`` into ``dest``: from the parent what it can give and the listing can
    verify, the rest from the store, while ``server`` (from :func:`open_relay`) serves
    this node's children; ``manifest`` already holds (and has announced) what ``dest``
    has."""
    from . import relay

    held = manifest.held
    if server is not None:
        server.offer(dest, {o.rel: o.size for o in objects}, held)
    from_peer = peer_bytes = 0
    layouts: dict[str, Layout] = {}
    started = time.monotonic()
    try:
        up = relay.parent(peers.rank)
        if up is not None:
            want = [o for o in objects
                    if not manifest.unchanged(o.rel, o.size, o.etag, dest / o.rel)]
            layouts = source.layouts(want)
            want = [o for o in want if checkable(o, layouts.get(o.rel))]
            failed = relay.pull(peers, want, layouts, dest, manifest, log)
            from_peer = len(want) - len(failed)
            peer_bytes = sum(o.size for o in want) - sum(o.size for o in failed)
        from_parent_s = time.monotonic() - started
        stats = Stats()
        held.live_bytes = lambda: stats.bytes  # the heartbeats' progress, range by range
        stats = source.download(objects, folders, dest, manifest, log, label=label,
                                stats=stats, layouts=layouts)
    finally:
        held.close()  # what has not landed now never will: children go to the store
        if server is not None:
            server.finish(peers.wait)
    served = server.served if server is not None else 0
    parent_note = f"from node {relay.parent(peers.rank)}" if peers.rank else "(node 0)"
    kids = relay.children(peers.rank, len(peers.hosts))
    log.info(f"relay ({label}): {from_peer} file(s) ({peer_bytes / 1e6:.1f} MB) {parent_note} "
             f"in {from_parent_s:.2f} s, {stats.files} ({stats.bytes / 1e6:.1f} MB) from the "
             "store" + (f"; served {served} to node(s) {kids}" if kids else ""),
             peer_files=from_peer, peer_bytes=peer_bytes, store_files=stats.files,
             store_bytes=stats.bytes, served=served,
             peer_seconds=round(from_parent_s, 3),
             serve_seconds=round(time.monotonic() - started, 3))
    stats.skipped -= from_peer  # fetched from a peer this run, not unchanged
    stats.peer_files = from_peer
    return stats


def serve_only(dest: Path, objects: list[RemoteObject], server: RelayServer,
               log: Log) -> None:
    """A node whose copy is already complete (staged data reused) still serves it to its
    children, who count on their parent."""
    from . import relay

    held = relay.Held()
    for obj in objects:
        held.add(obj.rel)
    held.close()
    server.offer(dest, {o.rel: o.size for o in objects}, held)
    server.finish(server.wait)
    log.info(f"relay (data): reused, served {server.served} file(s) to node(s) "
             f"{sorted(server.expect)}")
