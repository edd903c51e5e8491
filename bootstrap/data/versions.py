"""The version store under ``BOOTSTRAP_DATA_DIR``: how staged data is kept, shared and
let go, apart from how it is fetched (:mod:`.staging`).

Layout, for a data set named ``<name>`` (the URL's last component)::

    <root>/<name>                          symlink to the current version (or its file)
    <root>/.bootstrap-stage/<name>.lock    one stager per node and name (exclusive flock)
    <root>/.bootstrap-stage/<name>.json    the source and shard spec this name holds
    <root>/.bootstrap-stage/<name>/v*      the versions; beside each: .complete (written
                                           last), .share (its files), .hold (the running
                                           jobs' shared flocks), its manifest

The rules: one source per name (:func:`claim`); a version is reused only when it is
complete, this uid's and not writable by others (:func:`current`, :func:`trusted`); the
symlink moves in one rename (:func:`bootstrap.landing.switch`); a job holds its version
for the command's life (:func:`hold`, inherited across exec); a version is deleted only
when nobody holds it, and only this uid's (:func:`collect`). Folders are sticky and
world-writable like /tmp, so containers of other uids stage beside each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from .. import landing
from ..errors import ConfigError, DownloadError
from ..log import Log
from ..transfer.fetch import manifest_path

STATE = ".bootstrap-stage"  # beside the staged data, in BOOTSTRAP_DATA_DIR


def shared_dir(path: Path) -> None:
    """A folder every uid of the node can add to, like /tmp (sticky: each removes only
    its own), so containers of other users can stage beside each other."""
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o1777)


def claim(identity: Path, url: str, spec: str, link: Path) -> None:
    """One source and one shard spec per staged name: anything else is refused."""
    want = {"source": url, "shard": spec}
    try:
        held = json.loads(identity.read_text())
    except FileNotFoundError:
        if os.path.lexists(link) and not link.is_symlink():
            raise ConfigError(f"BOOTSTRAP_DATA_DIR already holds {link}, which the bootstrap "
                              "did not stage; point BOOTSTRAP_DATA_DIR at another folder or "
                              "move it away") from None
        landing.write_text(identity, json.dumps(want) + "\n", mode=0o644)
        return
    except (OSError, ValueError):
        held = {}
    if held != want:
        raise ConfigError(f"BOOTSTRAP_DATA_DIR holds {link.name} staged from "
                          f"{held.get('source')!r} (shard {held.get('shard')!r}), not "
                          f"{url!r} (shard {spec!r}); use another BOOTSTRAP_DATA_DIR for it")


def current(link: Path, versions: Path) -> Path | None:
    """The complete version the ``<name>`` symlink points at, if it is one of ours."""
    try:
        target = Path(os.readlink(link))
    except OSError:
        return None
    version = target if target.parent == versions else target.parent
    if version.parent != versions or not (versions / f"{version.name}.complete").exists():
        return None
    return version


def trusted(version: Path) -> bool:
    try:
        st = os.lstat(version)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 and stat.S_ISDIR(st.st_mode)


def hold(path: Path) -> int:
    """A shared lock on a version for as long as the command runs: the fd is
    inheritable, so it survives the exec into the command."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.set_inheritable(fd, True)
    return fd


def collect(versions: Path, keep: Path, log: Log) -> None:
    """Deletes this uid's versions other than ``keep`` that no running job holds."""
    uid = os.getuid()
    for entry in sorted(versions.iterdir()):
        if not entry.name.startswith("v") or entry == keep or not entry.is_dir() \
                or entry.is_symlink() or entry.lstat().st_uid != uid:
            continue
        hold = versions / f"{entry.name}.hold"
        try:
            fd = os.open(hold, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running job still reads it
            shutil.rmtree(entry, ignore_errors=True)

            for leftover in (manifest_path(entry), versions / f"{entry.name}.complete",
                             versions / f"{entry.name}.share", hold):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            log.info(f"data: removed the old version {entry.name} (no job holds it)")
        finally:
            os.close(fd)


@contextlib.contextmanager

def node_lock(path: Path, timeout: float, log: Log) -> Iterator[None]:
    """One stager per node and name; the others wait here, the kernel frees the lock
    of a holder that dies."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)  # another uid's lock file: flock works read-only
    else:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # other uids on the node must be able to open it
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.info(f"data: another process on this node is staging the same data "
                             f"({path}); waiting for it")
                    told = True
                if time.monotonic() >= deadline:
                    raise DownloadError(
                        f"another process has been staging the same data for over "
                        f"{timeout:g} s (BOOTSTRAP_DATA_TIMEOUT); raise the timeout or check "
                        "that process") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock
