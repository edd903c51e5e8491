"""The hang watchdog: no progress for ``BOOTSTRAP_HANG_SECONDS`` is a hang.

Progress is any byte the command writes to stdout or stderr (a progress bar's ``\\r``
counts), growth of the files under ``BOOTSTRAP_OUTPUT_DIR``, and a touch of
``BOOTSTRAP_HEARTBEAT_FILE``. GPU utilisation is deliberately *not* progress: a rank
stuck in an NCCL collective spins its GPU at 100 %.

On a hang the watchdog first dumps the stacks of every Python process of the command
(see :mod:`bootstrap.run.stackdump.sitecustomize`: ``faulthandler`` on a signal the
supervisor never forwards, injected through PYTHONPATH, so nothing needs installing
and no ptrace is involved), writes them to the log and to ``hang-stacks.txt`` beside
the failure record, and logs one line naming the process and its innermost frames.
Then, by ``BOOTSTRAP_HANG_ACTION``: ``stop`` (the default) ends the command as a
platform stop would (SIGTERM, grace, SIGKILL) and the job exits 124; ``dump`` keeps
waiting and dumps again after another period without progress. In MPI-style launch
node 0's watchdog also asks the other nodes' agents for their ranks' stacks (``remote``;
see :mod:`bootstrap.mpi.agent`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..log import Log

# Must match stackdump/sitecustomize.py's SIGNAL_OFFSET (a unit test checks).
SIGNAL_OFFSET = 5
DUMP_WAIT = 3.0  # seconds for the processes to write their stacks
STACKDUMP_DIR = Path(__file__).resolve().parent / "stackdump"
_FRAME = re.compile(r'^\s+File "([^"]+)", line (\d+) in (.+)$')


def dump_signal() -> int:
    return int(signal.SIGRTMIN) + SIGNAL_OFFSET


def environment(env: dict[str, str], stacks_dir: Path, heartbeat: Path) -> None:
    """What the command needs for the watchdog: the stack-dump hook first on its
    PYTHONPATH, where to dump, and the heartbeat file it may touch."""
    paths = [str(STACKDUMP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["BOOTSTRAP_STACKS_DIR"] = str(stacks_dir)
    env["BOOTSTRAP_HEARTBEAT_FILE"] = str(heartbeat)


class Watchdog(threading.Thread):
    """Watches one command (its session ``sid``); ``progress()`` is called by the
    output tees, the rest it checks itself every few seconds."""

    def __init__(self, seconds: float, action: str, heartbeat: Path,
                 output_dir: Path | None, stacks_dir: Path, stacks_file: Path, log: Log,
                 stop_command: Callable[[], None],
                 remote: Callable[[], str] | None = None) -> None:
        super().__init__(daemon=True, name="hang-watchdog")
        self.seconds, self.action = seconds, action
        self.heartbeat, self.output_dir = heartbeat, output_dir
        self.stacks_dir, self.stacks_file = stacks_dir, stacks_file
        self.log, self.stop_command, self.remote = log, stop_command, remote
        self.sid: int | None = None
        self.hangs = 0
        self.summary = ""  # the one line naming the stuck process and frames
        self._last = time.monotonic()
        self._seen: tuple[object, ...] = ()
        self._done = threading.Event()

    def progress(self) -> None:
        self._last = time.monotonic()

    def finish(self) -> None:
        self._done.set()

    def run(self) -> None:
        every = min(max(self.seconds / 4, 0.2), 5.0)
        while not self._done.wait(every):
            seen = (_mtime(self.heartbeat), _tree_state(self.output_dir))
            if seen != self._seen:
                self._seen = seen
                self.progress()
            if time.monotonic() - self._last < self.seconds:
                continue
            self.hangs += 1
            self._on_hang()
            if self.action == "stop":
                self.stop_command()
                return
            self.progress()  # "dump": the next dump after another quiet period

    def _on_hang(self) -> None:
        quiet = time.monotonic() - self._last
        stacks = self.dump()
        where = self.summary or "no Python process answered (not a Python command?)"
        self.log.error(f"hang: no progress for {quiet:.0f} s (BOOTSTRAP_HANG_SECONDS="
                       f"{self.seconds:g}); {where}; stacks: {self.stacks_file}",
                       hang=self.hangs, stacks_file=str(self.stacks_file))
        for line in stacks.splitlines():
            self.log.info(f"  {line}")

    def dump(self) -> str:
        """Asks every ready Python process of the command for its stacks, then the other
        nodes' (``remote``: MPI-style launch, where the agents run the ranks); returns
        them (and appends them to the stacks file)."""
        found = collect(self.stacks_dir, lambda pid: self.sid is None
                        or os.getsid(pid) == self.sid)
        self.summary = ""
        for pid, command, text in found:
            frames = innermost(text)
            if frames:
                short = " ".join(command.split())[:80]  # one line, even for python -c
                self.summary = f"pid {pid} ({short}) is in {frames}"
                break
        stacks = render(found)
        if self.remote is not None:
            stacks += self.remote()
        append(self.stacks_file, self.hangs, stacks)
        return stacks


def collect(stacks_dir: Path, mine: Callable[[int], bool]) -> list[tuple[int, str, str]]:
    """Signals every process that armed the hook in ``stacks_dir`` and that ``mine``
    accepts (pids are reused: a session check), waits up to :data:`DUMP_WAIT` for their
    stacks; returns (pid, command line, stacks) for each that answered."""
    pids = []
    with contextlib.suppress(OSError):
        for name in os.listdir(stacks_dir):
            if not name.endswith(".ready"):
                continue
            pid = int(name.split(".")[0])
            with contextlib.suppress(ProcessLookupError):  # still alive, and still ours
                if mine(pid):
                    pids.append(pid)
    pids.sort()
    sizes = {pid: _size(stacks_dir / f"{pid}.txt") for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, dump_signal())
    deadline = time.monotonic() + DUMP_WAIT
    while time.monotonic() < deadline and any(
            _size(stacks_dir / f"{p}.txt") <= sizes[p] for p in pids):
        time.sleep(0.05)
    time.sleep(0.1)  # let the last writer finish its lines
    found = []
    for pid in pids:
        text = _read_from(stacks_dir / f"{pid}.txt", sizes[pid])
        if text.strip():
            found.append((pid, _cmdline(pid), text))
    return found


def render(found: list[tuple[int, str, str]], where: str = "") -> str:
    """The stacks as the log and the stacks file show them, one block a process."""
    return "\n".join(f"--- {where}pid {pid}: {command}\n{text.rstrip()}\n"
                     for pid, command, text in found)


def append(stacks_file: Path, hang: int, stacks: str) -> None:
    with contextlib.suppress(OSError):
        stacks_file.parent.mkdir(parents=True, exist_ok=True)
        with open(stacks_file, "a") as fh:
            fh.write(f"=== hang {hang} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
                     f"{stacks}\n")


def innermost(stacks: str, depth: int = 3) -> str:
    """``f (file.py:12) <- g (file.py:30)`` for the main thread (the block that reaches
    ``<module>``), else the first thread faulthandler printed."""
    blocks = [b for b in re.split(r"\n\s*\n", stacks) if "File " in b]
    main = next((b for b in blocks if "<module>" in b), blocks[0] if blocks else "")
    frames = []
    for line in main.splitlines():
        m = _FRAME.match(line)
        if m:
            frames.append(f"{m.group(3)} ({os.path.basename(m.group(1))}:{m.group(2)})")
    return " <- ".join(frames[:depth])


def _tree_state(root: Path | None) -> tuple[int, int, int]:
    """Files, bytes and the newest mtime under ``root``: any change is progress."""
    if root is None:
        return (0, 0, 0)
    count = size = newest = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            count += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return (count, size, newest)


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
