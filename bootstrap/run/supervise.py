"""Run the command as a supervised child: PID 1 duties, signals, exit codes, a log.

When the bootstrap is a container's ENTRYPOINT it is PID 1, where the kernel applies
no default signal actions: a plain exec'd Python ignores the platform's SIGTERM and
is SIGKILLed after the stop timeout (checkpoints lost, exit 137). So, when it is PID
1, or ``BOOTSTRAP_SUPERVISE=1``, or anything must run after the command (output
sync, log upload), the bootstrap keeps running as the parent:

* the command runs in its own session and process group;
* SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to that group;
* after a forwarded SIGTERM (or SIGINT) the group gets ``BOOTSTRAP_GRACE_SECONDS``
  (default 30) to finish, then SIGKILL;
* every zombie is reaped (as PID 1, or as a child subreaper otherwise);
* the exit code is the command's, or 128 + N when it died by signal N, as a shell
  reports it (never flattened to 1);
* stdout and stderr stream through unchanged, and are also appended to the log file
  (``/tmp/dls-task-$DLS_TASK_INDEX.log`` like the original, ``BOOTSTRAP_LOG_FILE``),
  capped at ``BOOTSTRAP_LOG_MAX_MB`` (:mod:`.logfile`);
* on a non-zero end a failure record (exit code, signal, last lines of stderr, and
  the :mod:`~bootstrap.run.diagnose` reason and category) is written once to
  ``BOOTSTRAP_FAILURE_FILE`` (default ``<job dir>/failure.json``);
* processes the command puts in sessions of their own get its signals too, and what it
  leaves running when it ends is waited for or stopped (:mod:`.leftovers`);
* with ``BOOTSTRAP_HANG_SECONDS`` a :class:`~bootstrap.run.watchdog.Watchdog` watches
  for progress; the command's ``oom_score_adj`` is raised above ours, so that the OOM
  killer picks it, not the supervisor that must still sync the outputs.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import BootstrapError
from ..log import Log
from . import leftovers
from .diagnose import Diagnosis, before_start, classify, oom_kills
from .logfile import CappedLog

if TYPE_CHECKING:
    from .watchdog import Watchdog

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
GRACE_TRIGGERS = (signal.SIGTERM, signal.SIGINT)
PR_SET_CHILD_SUBREAPER = 36
STDERR_TAIL_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the command ended: exit code or signal, whether it needed a SIGKILL after the grace
    period, the stderr tail, and what the watchdog and the OOM counter saw."""

    exit_code: int
    signal: int | None  # the signal that ended the command, if any
    killed_after_grace: bool
    seconds: float
    stderr_tail: str
    hang: bool = False  # the watchdog found no progress (and, with "stop", ended it)
    hang_where: str = ""
    stacks: str = ""
    stacks_file: str | None = None
    oom_kills: int = 0  # OOM kills in our memory cgroup during the run
    xids: str = ""  # Xid events NVML reported during the run ("Xid 79 on GPU 0")

    def diagnosis(self) -> Diagnosis:
        return classify(self.exit_code, self.signal, self.stderr_tail, hang=self.hang,
                        stacks=self.stacks, hang_where=self.hang_where,
                        oom_kills=self.oom_kills, sent_by_us=self.hang, xids=self.xids)

    def describe(self) -> str:
        if self.killed_after_grace:
            how = "killed by SIGKILL after the grace period"
        elif self.signal is not None:
            how = f"ended by {signal.Signals(self.signal).name}"
        else:
            how = "exited"
        return f"command {how}: exit code {self.exit_code}, wall time {self.seconds:.1f} s"


def become_subreaper() -> bool:
    """Orphaned grandchildren are re-parented to us, so we can reap them (Linux only)."""
    if os.getpid() == 1:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class _Tee(threading.Thread):
    """Copies one pipe to our stream chunk by chunk, as it arrives (progress bars that
    redraw with \\r are not held back until a newline), and to the log file whole
    lines at a time, so stdout and stderr lines never interleave mid-line there."""

    def __init__(self, pipe: IO[bytes], out: IO[bytes], logfile: CappedLog | None,
                 keep_tail: bool,
                 on_data: Callable[[], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.out, self.logfile = pipe, out, logfile
        self.on_data = on_data
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.keep_tail = keep_tail

    def run(self) -> None:
        fd = self.pipe.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._log(pending)
                break
            if self.on_data is not None:
                self.on_data()
            with contextlib.suppress(OSError):  # a closed stdout must not kill the job
                self.out.write(chunk)
                self.out.flush()
            if self.logfile is not None:
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if cut:
                    self._log(pending[:cut])
                    pending = pending[cut:]
                elif len(pending) > 65536:  # a very long line: do not hold it for ever
                    self._log(pending)
                    pending = b""
            if self.keep_tail:
                self.tail.append(chunk)
                self.tail_size += len(chunk)
                while self.tail_size > STDERR_TAIL_BYTES and len(self.tail) > 1:
                    self.tail_size -= len(self.tail.popleft())

    def _log(self, data: bytes) -> None:
        if self.logfile is not None and data:
            with contextlib.suppress(OSError):  # a full disk must not stop the stream
                self.logfile.write(data)

    def text(self, lines: int = 40) -> str:
        data = b"".join(self.tail).decode("utf-8", errors="replace")
        return "\n".join(data.splitlines()[-lines:])


class Supervisor:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 grace: float, log: Log, log_path: Path | None, umask: int = -1,
                 watchdog: Watchdog | None = None, nvml_module: str | None = None,
                 log_max: int = 0, detached: str = "wait",
                 keep: frozenset[int] = frozenset()) -> None:
        self.argv, self.env, self.cwd, self.umask = list(argv), dict(env), cwd, umask
        self.detached = detached  # BOOTSTRAP_DETACHED: "wait" or "stop" (see .leftovers)
        self.keep = keep  # sessions of the bootstrap's own helpers (Ray's head), not leftovers
        self.grace, self.log, self.log_path, self.log_max = grace, log, log_path, log_max
        self.watchdog = watchdog
        self.nvml_module = nvml_module  # watch Xid events when the node has GPUs
        if watchdog is not None:
            watchdog.stop_command = self._stop_hung
        self.child: subprocess.Popen[bytes] | None = None
        self.killed_after_grace = False
        self._grace_timer: threading.Timer | None = None

    def _forward(self, signum: int, frame: Any) -> None:
        child = self.child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signum)
        leftovers.signal_groups(leftovers.detached_groups(child.pid, self.keep), signum)
        if signum in GRACE_TRIGGERS and self._grace_timer is None:
            self.log.info(f"{signal.Signals(signum).name} forwarded to the command; SIGKILL in "
                          f"{self.grace:g} s unless it exits (BOOTSTRAP_GRACE_SECONDS)")
            self._grace_timer = threading.Timer(self.grace, self._kill)
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def _stop_hung(self) -> None:
        """The watchdog's "stop": what a platform stop does (SIGTERM, grace, SIGKILL)."""
        self.log.info("hang: stopping the command (BOOTSTRAP_HANG_ACTION=stop)")
        self._forward(signal.SIGTERM, None)

    def _kill(self) -> None:
        child = self.child
        if child is None:
            return
        groups = leftovers.detached_groups(child.pid, self.keep)
        if child.returncode is None or groups:
            self.killed_after_grace = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        leftovers.signal_groups(groups, signal.SIGKILL)

    def _leftovers(self, status: int) -> int:
        """What the command left running (see :mod:`.leftovers`): after an exit 0, its
        workers in sessions of their own are waited for (the first of them to fail
        decides the status); then everything left is stopped."""
        assert self.child is not None
        session = self.child.pid
        detached = leftovers.detached(session, self.keep)
        statuses = {p.pid: -1 for p in detached}
        stopping = self._grace_timer is not None  # a stop signal came: no waiting
        if detached and status == 0 and self.detached == "wait" and not stopping:
            self.log.info(f"the command exited 0 but {len(detached)} process(es) it started "
                          f"in sessions of their own still run ({leftovers.names(detached)}): "
                          "waiting for them, their end is the job's (msrun without "
                          "--join=True leaves its workers so; BOOTSTRAP_DETACHED=stop stops "
                          "them instead)")
            leftovers.wait_while(lambda: leftovers.detached(session, self.keep), statuses)
            failed = leftovers.first_failure(statuses)
            status = status if failed is None else failed
        rest = leftovers.descendants(self.keep)
        if rest:
            self.log.info(f"the command left {len(rest)} process(es) running "
                          f"({leftovers.names(rest)}): stopping them")
            leftovers.stop(leftovers.groups_of(rest), self.grace, statuses)
        return status

    def run(self) -> Outcome:
        become_subreaper()
        logfile = None
        if self.log_path is not None:
            try:
                logfile = CappedLog(self.log_path, self.log_max)
            except OSError as exc:
                self.log.warn(f"cannot write the log file {self.log_path}: {exc.strerror}")
        started = time.monotonic()
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        sys.stdout.flush()
        sys.stderr.flush()
        oom_before = oom_kills()
        xid_watch = None
        if self.nvml_module is not None:
            from ..node.xid import XidWatch

            xid_watch = XidWatch(self.nvml_module)
            xid_watch.start()
        self.child = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True, umask=self.umask)
        _raise_oom_score(self.child.pid)
        assert self.child.stdout is not None and self.child.stderr is not None
        progress = self.watchdog.progress if self.watchdog is not None else None
        tees = [_Tee(self.child.stdout, sys.stdout.buffer, logfile, keep_tail=False,
                     on_data=progress),
                _Tee(self.child.stderr, sys.stderr.buffer, logfile, keep_tail=True,
                     on_data=progress)]
        for tee in tees:
            tee.start()
        if self.watchdog is not None:
            self.watchdog.sid = self.child.pid
            self.watchdog.start()
        status = self._reap_until_child_exits(self.child.pid)
        self.child.returncode = status
        status = self._leftovers(status)
        if self.watchdog is not None:
            self.watchdog.finish()
        xids = ""
        if xid_watch is not None:
            from ..node.xid import describe

            xids = describe(xid_watch.stop())
            if xids:
                self.log.error(f"NVML reported {xids} while the command ran")
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        for tee in tees:  # grandchildren may keep the pipes open: do not wait for ever
            tee.join(timeout=2)
        if logfile is not None:
            logfile.close()
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        died_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + died_by if died_by is not None else os.WEXITSTATUS(status)
        dog = self.watchdog
        hung = dog is not None and dog.hangs > 0
        return Outcome(code, died_by, self.killed_after_grace, time.monotonic() - started,
                       tees[1].text(), hang=hung and dog is not None and dog.action == "stop",
                       hang_where=dog.summary if dog is not None else "",
                       stacks=_read(dog.stacks_file) if hung and dog is not None else "",
                       stacks_file=str(dog.stacks_file) if hung and dog is not None else None,
                       oom_kills=max(oom_kills() - oom_before, 0), xids=xids)

    @staticmethod
    def _reap_until_child_exits(pid: int) -> int:
        """Reaps every child (orphans included) until ``pid`` ends; returns its status."""
        while True:
            try:
                reaped, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - pid already reaped elsewhere
                return 0
            if reaped == pid:
                # Collect zombies that are already there; live orphans keep running.
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, os.WNOHANG)[0] > 0:
                        pass
                return status


def _raise_oom_score(pid: int) -> None:
    """The command is the OOM killer's first choice, 500 above the supervisor."""
    try:
        ours = int(Path("/proc/self/oom_score_adj").read_text())
        Path(f"/proc/{pid}/oom_score_adj").write_text(str(min(ours + 500, 1000)))
    except (OSError, ValueError):
        pass  # not Linux, or not allowed: the kernel's own choice stands


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def write_failure_record(path: Path, outcome: Outcome, task_index: str, log: Log,
                         exit_code: int | None = None) -> None:
    """Written once: an existing record (the first failure of the job) is never replaced."""
    found = outcome.diagnosis()
    _write_record(path, {
        "exit_code": outcome.exit_code if exit_code is None else exit_code,
        "reason": found.reason, "category": found.category,
        "evidence": log.redact(found.evidence), "stacks_file": outcome.stacks_file,
        "oom_kills": outcome.oom_kills, "xids": outcome.xids or None,
        "signal": signal.Signals(outcome.signal).name if outcome.signal else None,
        "killed_after_grace": outcome.killed_after_grace,
        "wall_seconds": round(outcome.seconds, 3), "task_index": task_index,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stderr_tail": log.redact(outcome.stderr_tail)}, log)


def write_start_failure(path: Path, error: BootstrapError, task_index: str, log: Log) -> None:
    """The record of a job that stopped before its command ran (preflight, barrier,
    download, ...): the same file and fields, so one reader finds every node's end."""
    found = before_start(error)
    _write_record(path, {"exit_code": error.exit_code, "reason": found.reason,
                         "category": found.category, "evidence": log.redact(found.evidence),
                         "stacks_file": None, "oom_kills": 0, "signal": None,
                         "killed_after_grace": False, "wall_seconds": None,
                         "task_index": task_index, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "stderr_tail": ""}, log)


def write_launcher_record(path: Path, code: int, task_index: str, log: Log) -> None:
    """MPI-style launch, nodes 1..N-1: the job ended with the launcher's non-zero code;
    the cause is in node 0's record, which this one points to."""
    _write_record(path, {"exit_code": code, "reason": "launcher", "category": "command",
                         "evidence": f"the launcher (node 0) ended with {code}; this node "
                                     "ran its remote commands: see node 0's failure record",
                         "stacks_file": None, "oom_kills": 0, "signal": None,
                         "killed_after_grace": False, "wall_seconds": None,
                         "task_index": task_index, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "stderr_tail": ""}, log)


def _write_record(path: Path, record: dict[str, Any], log: Log) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        log.info(f"failure record {path} already exists: kept as it is")
        return
    except OSError as exc:
        log.warn(f"cannot write the failure record {path}: {exc.strerror}")
        return
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    log.info(f"failure record: {path}")
