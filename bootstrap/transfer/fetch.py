"""Fetch a tree: the code directory (or ``bootstrap sync``'s source) onto this node.

One call, :func:`fetch`: a local source is copied, a remote one is opened
(:mod:`.source`: the store's one face), listed (:mod:`.listing`), judged against its
manifest once (:func:`unchanged_in`) and downloaded (:func:`download`, by the engine of
:mod:`.download`, whose docstring is the contract). Every failure leaves as a
:class:`~bootstrap.errors.DownloadError` with one line saying what to fix.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.location import Location
from ..errors import DownloadError
from ..log import Log
from .download import Engine, Stats
from .listing import RemoteObject, list_objects
from .manifest import Manifest
from .source import Remote, remote
from .verify import Layout

if TYPE_CHECKING:

    from ..config.settings import Transfer


def copy_local(src: Path, dest: Path) -> Stats:
    """The ``file://`` / plain-path case: the tree is copied, as an object store's would be."""
    stats = Stats(backend="local copy")
    started = time.monotonic()
    if not src.is_dir():
        raise DownloadError(f"code directory {src} does not exist or is not a folder; check "
                            "DLS_APP_URL")
    if src.resolve() == dest.resolve():
        return stats
    import shutil  # here: it imports zlib, bz2 and lzma, ~3 ms every object-store fetch would pay

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
    with remote(location, settings, log) as source:
        objects, folders = list_objects(source.client, location, settings)
        return download(source, objects, folders, dest,
                        Manifest(manifest_path(dest), location.url), log)


def unchanged_in(objects: list[RemoteObject], dest: Path, manifest: Manifest) -> set[str]:
    """The objects ``manifest`` vouches for in ``dest`` (same size and ETag as listed,
    the file as it was recorded): asked once a tree, and handed on."""
    return {o.rel for o in objects if manifest.unchanged(o.rel, o.size, o.etag, dest / o.rel)}


def download(source: Remote, objects: list[RemoteObject], folders: list[str], dest: Path,
             manifest: Manifest, log: Log, label: str = "fetch",
             stats: Stats | None = None, layouts: dict[str, Layout] | None = None,
             unchanged: set[str] | None = None, pulled: set[str] | None = None) -> Stats:
    """Fetches ``objects`` into ``dest``, but the ``unchanged`` ones (judged here when
    not given, see :func:`unchanged_in`) and those a peer already gave (``pulled``), each
    verified against its ETag (``layouts``: multipart objects' parts already known;
    the rest are asked for: a whole object's before the fetch, as its body is checked
    in one piece, a large one's by the engine beside its first range); ``stats``,
    when given, is the one the engine counts into as it goes."""
    if unchanged is None:
        unchanged = unchanged_in(objects, dest, manifest)
    done = unchanged | (pulled or set())
    known = dict(layouts or {})
    known.update(source.layouts([o for o in objects if o.parts and o.rel not in known
                                 and o.size < source.settings.multipart_threshold
                                 and o.rel not in done]))

    engine = Engine(source, dest, manifest, log, label, stats, known)
    engine.plan(objects, folders, unchanged, pulled or set())
    manifest.open_for_append()
    return engine.run()
