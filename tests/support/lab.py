"""The multi-node lab: a job's nodes started through run_train.sh on network-namespace
hosts (tests/support/netns.py), one S3 server beside them, and the job contracts that describe
them. Shared by the multi-node, relay and bench modules (the ``lab`` fixture itself is
conftest.py's)."""

from __future__ import annotations

import itertools
import random
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.s3server import S3Server
from tests.conftest import RUN_TRAIN, base_env
from tests.support.netns import Hosts

# The one torch.distributed check every multi-node test runs (netns hosts, docker):
# an allreduce over gloo, then a barrier so that the ranks leave together (rank 0 hosts
# the rendezvous store; a peer still tearing down when it is gone aborts with SIGABRT).
# T: gloo's timeout in seconds. It prints what the tests check: the world, the host,
# the interface gloo was handed, and when the first step ran.
ALLREDUCE = r'''
import os, socket, sys, time
from datetime import timedelta
import torch
import torch.distributed as dist
dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("T", "60"))))
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
n = dist.get_world_size()
assert t.item() == n * (n + 1) / 2, (t.item(), n)
print(f"OK rank={dist.get_rank()} world={n} gloo={os.environ.get('GLOO_SOCKET_IFNAME')} "
      f"host={socket.gethostname()} ts={time.time():.3f}", flush=True)
dist.barrier()
dist.destroy_process_group()
'''


@dataclass
class Lab:
    hosts: Hosts
    s3: S3Server
    url: str


@dataclass
class NodeResult:
    rank: int
    code: int
    out: str
    err: str
    home: Path


def old_contract(lab: Lab, n: int, port: int) -> Callable[[int], dict[str, str]]:
    hosts = {f"BATCH_CUSTOM{j}_HOSTS": f"{lab.hosts.name(j)}:{port}" for j in range(n)}
    return lambda i: {"DLS_TASK_INDEX": str(i), "DLS_TASK_NUMBER": str(n), **hosts}


def shared_contract(lab: Lab, n: int, port: int,
                    where: Callable[[int], int]) -> Callable[[int], dict[str, str]]:
    """The old contract for nodes that share hosts (the host-network pools): node j is
    on host ``where(j)`` and has its own port, ``port + j``."""
    hosts = {f"BATCH_CUSTOM{j}_HOSTS": f"{lab.hosts.name(where(j))}:{port + j}"
             for j in range(n)}
    return lambda i: {"DLS_TASK_INDEX": str(i), "DLS_TASK_NUMBER": str(n), **hosts}


def new_contract(lab: Lab, n: int, port: int) -> Callable[[int], dict[str, str]]:
    names = ",".join(lab.hosts.name(j) for j in range(n))
    return lambda i: {"VC_TASK_INDEX": str(i), "MA_NUM_HOSTS": str(n),
                      "VC_WORKER_HOSTS": names, "BOOTSTRAP_MASTER_PORT": str(port)}


def run_job(lab: Lab, tmp: Path, n: int, argv: list[str],
            contract: Callable[[int], dict[str, str]], extra: Mapping[str, str] = {},
            timeout: float = 240, during: Callable[[], None] | None = None,
            before: Callable[[], None] | None = None,
            only: Sequence[int] | None = None,
            where: Callable[[int], int] | None = None) -> list[NodeResult]:
    """Starts nodes 0..n-1 of a job (or the ranks in ``only``: the others are absent, or
    played by the test) and waits for them; ``before`` runs once the hosts files are
    written and before any node starts, ``during`` right after they start. Node i runs
    on host ``where(i)`` (default: host i)."""
    for i in range(lab.hosts.n):
        if lab.hosts.real:
            lab.hosts.write_hosts(i, range(lab.hosts.n))
    if before is not None:
        before()
    procs = []
    homes = []
    ranks = list(range(n)) if only is None else list(only)
    for i in ranks:
        home = tmp / f"node{i}"
        home.mkdir(parents=True, exist_ok=True)
        homes.append(home)
        env = base_env(home, {**lab.s3.env(), "DLS_APP_URL": lab.url,
                              "BOOTSTRAP_VOLCANO_DIR": str(tmp / "no-volcano"),
                              **contract(i), **extra})
        host = where(i) if where is not None else i
        procs.append(lab.hosts.spawn(host, ["bash", str(RUN_TRAIN), *argv], env))
    if during is not None:
        during()
    return [NodeResult(i, code, out, err, homes[ranks.index(i)])
            for i, (code, out, err) in zip(ranks, finish(procs, timeout), strict=True)]


def finish(procs: Sequence[subprocess.Popen[str]],
           timeout: float) -> list[tuple[int, str, str]]:
    """Each process's exit code, stdout and stderr, all of them within ``timeout``
    seconds together (one that is still running then is killed, and says so)."""
    out = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            o, e = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            o, e = proc.communicate()
            e += "\n[test: killed after the timeout]"
        out.append((proc.returncode, o, e))
    return out


def port() -> int:
    """The first of a block of PORT_BLOCK ports that no other caller in this run gets
    (the master's and the relay's can never collide), below the ephemeral range (where
    the relay refuses to listen and the kernel's outgoing connections take ports)."""
    return next(_PORTS)


PORT_BLOCK = 64
_PORTS = itertools.count(random.randrange(20000, 24000, PORT_BLOCK), PORT_BLOCK)


def signal_node(tmp_path: Path, rank: int, signum: int, bootstrap_only: bool) -> None:
    """``signum`` to node ``rank``'s processes (found by the home in their environment):
    its bootstrap alone, or all of them (its container going: twice, for a child forked
    while the first pass ran)."""
    for _ in range(1 if bootstrap_only else 2):
        _signal_once(tmp_path, rank, signum, bootstrap_only)


def _signal_once(tmp_path: Path, rank: int, signum: int, bootstrap_only: bool) -> None:
    for pid in (p.name for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"BOOTSTRAP_HOME={tmp_path}/node{rank}".encode() not in env \
                or f"DLS_TASK_INDEX={rank}".encode() not in env:
            continue
        if not bootstrap_only or (b"bootstrap" in cmd and b"ssh" not in cmd):
            subprocess.run(["kill", f"-{int(signum)}", pid], check=False)
