"""Fetch a tree with the job's nodes: the transfer engine's :func:`~bootstrap.transfer.fetch`
with files passed down the relay tree (:mod:`.protocol`); whatever the peers cannot give
comes from the store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DownloadError
from ..transfer.download import Stats
from ..transfer.fetch import download, manifest_path, unchanged_in
from ..transfer.listing import RemoteObject, list_objects
from ..transfer.source import Remote, remote
from ..transfer.verify import Doubts, Layout, checkable
from . import client
from .protocol import Peers, children, parent
from .server import AnnouncingManifest, Held, RelayServer, open_server

if TYPE_CHECKING:
    from ..config.location import Location
    from ..config.settings import Transfer
    from ..log import Log


def fetch_with_peers(location: Location, dest: Path, settings: Transfer, peers: Peers,
                     log: Log) -> Stats:
    """:func:`~bootstrap.transfer.fetch.fetch` with the job's nodes passing files down
    the tree; whatever the peers cannot give comes from the store."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}; check that "
                            "BOOTSTRAP_HOME is writable") from None
    server = open_relay(peers, log)  # before the listing: children may knock already
    try:
        with remote(location, settings, log) as source:
            objects, folders = list_objects(source.client, location, settings)
            manifest = AnnouncingManifest(manifest_path(dest), location.url, Held())
            unchanged = unchanged_in(objects, dest, manifest)
            for obj in objects:
                if obj.rel in unchanged:
                    manifest.held.add(obj.rel, obj.size)
            return download_with_peers(source, objects, folders, dest, manifest, peers,
                                       server, log, unchanged=unchanged)
    finally:
        if server is not None:
            server.close()  # a failed listing: the children find no parent, use the store


def open_relay(peers: Peers, log: Log) -> RelayServer | None:
    """This node's relay server, listening, when it has children in the tree."""
    return open_server(peers, log)


def download_with_peers(source: Remote, objects: list[RemoteObject], folders: list[str],
                        dest: Path, manifest: AnnouncingManifest, peers: Peers,
                        server: RelayServer | None, log: Log, label: str = "fetch",
                        unchanged: set[str] | None = None) -> Stats:
    """``objects`` into ``dest``: from the parent what it can give and the listing can
    verify, the rest from the store, while ``server`` (from :func:`open_relay`) serves
    this node's children; ``manifest`` already holds (and has announced) what ``dest``
    has, ``unchanged`` (judged here when not given)."""
    held = manifest.held
    if unchanged is None:
        unchanged = unchanged_in(objects, dest, manifest)
    if server is not None:
        server.offer(dest, {o.rel: o.size for o in objects}, held)
    pulled: set[str] = set()
    peer_bytes = 0
    layouts: dict[str, Layout] = {}
    started = time.monotonic()
    try:
        up = parent(peers.rank)
        if up is not None:
            want = [o for o in objects if o.rel not in unchanged]
            layouts = source.layouts(want)
            want = [o for o in want if checkable(o, layouts.get(o.rel))]
            doubts = Doubts(source, log, label, layouts)
            failed = client.pull(peers, want, doubts, dest, manifest, log)
            layouts = doubts.layouts  # with any guess the store overruled
            pulled = {o.rel for o in want} - {o.rel for o in failed}
            peer_bytes = sum(o.size for o in want) - sum(o.size for o in failed)
        from_peer = len(pulled)
        from_parent_s = time.monotonic() - started
        stats = Stats()
        held.live_bytes = lambda: stats.bytes  # the heartbeats' progress, range by range
        stats = download(source, objects, folders, dest, manifest, log, label=label,
                         stats=stats, layouts=layouts, unchanged=unchanged, pulled=pulled)
    finally:
        held.close()  # what has not landed now never will: children go to the store
        if server is not None:
            server.finish(peers.wait)
    served = server.served if server is not None else 0
    parent_note = f"from node {parent(peers.rank)}" if peers.rank else "(node 0)"
    kids = children(peers.rank, len(peers.hosts))
    log.info(f"relay ({label}): {from_peer} file(s) ({peer_bytes / 1e6:.1f} MB) {parent_note} "
             f"in {from_parent_s:.2f} s, {stats.files} ({stats.bytes / 1e6:.1f} MB) from the "
             "store" + (f"; served {served} to node(s) {kids}" if kids else ""),
             peer_files=from_peer, peer_bytes=peer_bytes, store_files=stats.files,
             store_bytes=stats.bytes, served=served,
             peer_seconds=round(from_parent_s, 3),
             serve_seconds=round(time.monotonic() - started, 3))
    stats.peer_files = from_peer
    return stats


def serve_only(dest: Path, objects: list[RemoteObject], server: RelayServer,
               log: Log) -> None:
    """A node whose copy is already complete (staged data reused) still serves it to its
    children, who count on their parent."""
    held = Held()
    for obj in objects:
        held.add(obj.rel)
    held.close()
    server.offer(dest, {o.rel: o.size for o in objects}, held)
    server.finish(server.wait)
    log.info(f"relay (data): reused, served {server.served} file(s) to node(s) "
             f"{sorted(server.expect)}")
