"""What the command leaves running when it ends, and the processes its signals miss.

The supervisor signals the command's process group; a launcher that puts its workers in
sessions of their own (``msrun`` without ``--join=True`` starts them under ``setsid``
and returns 0 at once; daemons do the same) takes them out of that group's reach: a
platform stop would never reach them, and the job would end as a success while they
still work. As a child subreaper the supervisor inherits every orphan, so all of them
are its descendants, and this module finds them there:

* a forwarded signal goes to the command's group and to the group of every descendant
  in another session (:func:`detached_groups`);
* descendants in sessions of their own are its workers: after a command that exited 0
  the job waits for them and fails with the first of them that fails
  (``BOOTSTRAP_DETACHED=wait``, the default); what they need keeps running meanwhile
  (msrun's scheduler stays in msrun's session);
* then whatever is left, in any session, is stopped (SIGTERM, the grace period,
  SIGKILL): nothing outlives the command. After a failed command, or with
  ``BOOTSTRAP_DETACHED=stop``, there is no wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable

import psutil


def descendants(keep: Collection[int] = ()) -> list[psutil.Process]:
    """This process's descendants that still run (zombies and the gone left out), but
    for those in the sessions ``keep`` (the bootstrap's own helpers: Ray's head)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE and _sid(p) not in keep:
                    found.append(p)
    return found


def _sid(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except OSError:
        return None


def of_session(session: int) -> list[psutil.Process]:
    """Descendants still in ``session`` (the command's own)."""
    return [p for p in descendants() if _sid(p) == session]


def detached(session: int, keep: Collection[int] = ()) -> list[psutil.Process]:
    """Descendants that left ``session`` (the command's) for sessions of their own."""
    return [p for p in descendants(keep) if _sid(p) not in (session, None)]


def detached_groups(session: int, keep: Collection[int] = ()) -> set[int]:
    return groups_of(detached(session, keep))


def signal_groups(groups: Iterable[int], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def names(procs: Iterable[psutil.Process], limit: int = 4) -> str:
    """``pid 12 (python train.py), ...`` for the log."""
    parts = []
    for p in list(procs)[:limit]:
        try:
            what = " ".join(p.cmdline()[:3]) or p.name()
        except psutil.Error:
            what = "?"
        parts.append(f"pid {p.pid} ({what})")
    return ", ".join(parts)


def reap_for(seconds: float, statuses: dict[int, int]) -> None:
    """Reaps children for up to ``seconds`` (until none is left), recording the statuses
    of those in ``statuses``' keys."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)
        elif pid in statuses:
            statuses[pid] = status


def _alive(groups: set[int]) -> bool:
    for pgid in groups:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def stop(groups: set[int], grace: float, statuses: dict[int, int]) -> None:
    """SIGTERM to ``groups``, up to ``grace`` seconds for them to end, then SIGKILL to
    what is left."""
    signal_groups(groups, signal.SIGTERM)
    for signum, seconds in ((signal.SIGKILL, grace), (None, 2.0)):
        deadline = time.monotonic() + seconds
        while _alive(groups) and time.monotonic() < deadline:
            reap_for(0.1, statuses)
            time.sleep(0.02)
        if signum is not None:
            signal_groups(groups, signum)
    reap_for(0.05, statuses)  # the zombies of the last ones


def wait_while(running: Callable[[], list[psutil.Process]], statuses: dict[int, int],
               every: float = 0.5) -> None:
    """Reaps children while ``running()`` finds any, recording the statuses of those in
    ``statuses``' keys (orphans are our children, so their statuses reach us). Polls:
    the last of them need not be our child."""
    while running():
        reap_for(every, statuses)
        time.sleep(0.05)  # reap_for returns at once when no child is ours yet


def groups_of(procs: Iterable[psutil.Process]) -> set[int]:
    groups = set()
    for p in procs:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    return groups


def first_failure(statuses: dict[int, int]) -> int | None:
    """The first non-zero wait status among those recorded, if any."""
    for status in statuses.values():
        if status != -1 and (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0):
            return status
    return None
