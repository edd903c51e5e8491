"""Why the command failed, and whose failure it was: pure classification.

The failure record (``failure.json``) and the bootstrap's last line carry a
``reason``, a ``category`` (``user``: the job's code or its settings;
``infrastructure``: the node, its GPUs, the network, the platform) and the evidence
line that decided it. The first rule that matches wins, most specific first:

==============  ==============  ===================================================
reason          category        evidence
==============  ==============  ===================================================
hang            see below       the innermost frames of the stuck process
gpu             infrastructure  an Xid event from NVML during the run
oom             user            the cgroup's ``oom_kill`` counter grew during the run
nccl            infrastructure  an ``NCCL error`` / ``NCCL WARN`` line
gpu             infrastructure  a CUDA error naming ECC, a lost GPU, or an Xid
cuda            user            any other ``CUDA error`` line (illegal access, OOM)
exception       user            the last traceback's ``Type: message`` line
signal          infrastructure  killed by a signal the bootstrap did not send
exit            user            the command's own non-zero exit code
==============  ==============  ===================================================

A hang is ``infrastructure`` when its stacks are inside a collective
(torch.distributed, NCCL, gloo: a peer or the network is the usual culprit) and
``user`` otherwise (a dead-lock or a wait in the job's own code).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path

from ..errors import BootstrapError

_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)|"
                        r"[A-Za-z_][\w.]*\.[A-Z]\w*): (.*)$")
_NCCL = re.compile(r"NCCL (error|WARN)|ncclInternalError|ncclSystemError|ncclUnhandled"
                   r"CudaError|NCCL communicator was aborted", re.I)
_GPU = re.compile(r"uncorrectable ECC|ECC error|GPU is lost|fallen off the bus|\bXid\b|"
                  r"unspecified launch failure", re.I)
_CUDA = re.compile(r"CUDA error|CUDA out of memory|cudaError", re.I)
_COLLECTIVE = re.compile(r"torch/distributed|all_reduce|allreduce|all_gather|barrier|"
                         r"broadcast|ProcessGroup|nccl|gloo", re.I)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why a run failed, in one line, whether the user's code or the infrastructure is to
    blame, and the evidence (the log line or signal) it rests on."""

    reason: str
    category: str  # "user" | "infrastructure"
    evidence: str


def classify(exit_code: int, died_by: int | None, stderr_tail: str, *, hang: bool = False,
             stacks: str = "", hang_where: str = "", oom_kills: int = 0,
             sent_by_us: bool = False, xids: str = "") -> Diagnosis:
    """The diagnosis of one failed run (``exit_code`` != 0)."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    if hang:
        category = "infrastructure" if _COLLECTIVE.search(stacks) else "user"
        return Diagnosis("hang", category, hang_where or "no progress; no Python stacks")
    if xids:
        return Diagnosis("gpu", "infrastructure", f"NVML reported {xids} during the run")
    if oom_kills > 0:
        return Diagnosis("oom", "user", f"the kernel's OOM killer ended {oom_kills} process(es) "
                                        "of the job's memory cgroup")
    for pattern, reason, category in ((_NCCL, "nccl", "infrastructure"),
                                      (_GPU, "gpu", "infrastructure"),
                                      (_CUDA, "cuda", "user")):
        hit = _last(lines, pattern)
        if hit is not None:
            return Diagnosis(reason, category, hit)
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        hit = next((ln for ln in reversed(lines) if _EXCEPTION.match(ln)), None)
        if hit is not None:
            return Diagnosis("exception", "user", hit)
    if died_by is not None and not sent_by_us:
        name = signal.Signals(died_by).name
        return Diagnosis("signal", "infrastructure", f"killed by {name}")
    return Diagnosis("exit", "user", f"the command exited {exit_code}")


def before_start(error: BootstrapError) -> Diagnosis:
    """The diagnosis of a job that stopped before its command ran: what the error that
    stopped it says of itself (bootstrap.errors: each class carries its reason)."""
    return Diagnosis(error.reason, error.category, error.message)


def _last(lines: list[str], pattern: re.Pattern[str]) -> str | None:
    return next((ln for ln in reversed(lines) if pattern.search(ln)), None)


def oom_kills() -> int:
    """The ``oom_kill`` counter of this process's memory cgroup (v2 ``memory.events``,
    else v1 ``memory.oom_control``); 0 where neither is readable."""
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    candidates = []
    for line in groups:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            candidates.append(f"/sys/fs/cgroup/{path}/memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(f"/sys/fs/cgroup/memory/{path}/memory.oom_control")
    candidates += ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]
    for name in candidates:
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0
