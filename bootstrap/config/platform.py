"""Who the nodes of this job are, from the platform's variables: pure discovery.

Two contracts describe a cluster; the same :class:`Cluster` comes out of either.

Old (DLS) contract:
  ``DLS_TASK_INDEX``, ``DLS_TASK_NUMBER``, ``BATCH_CUSTOM{i}_HOSTS=host:port`` (one per
  node, ordered by the number i, so 10 follows 9), ``BATCH_{jobName}.0_HOSTS`` for a
  single node (its name holds a dot), ``BATCH_WORKER_HOSTS=h:p,h:p`` where present.

New (Volcano) contract:
  ``VC_TASK_INDEX``, ``MA_NUM_HOSTS`` / ``VC_WORKER_NUM``, ``VC_WORKER_HOSTS=h0,h1``
  (in rank order, no ports) and ``/etc/volcano/worker.host`` (one host per line). The
  file wins over the variable: the platform refreshes it, not the environment. Ports
  come from ``BOOTSTRAP_MASTER_PORT`` (default 29500).

When both contracts are present, the new one wins (it is what current platforms
maintain) and the old one must agree on the node count and this node's index, or
the job stops with an error: two descriptions that disagree mean a broken job spec.

No variables at all: a one-node job on this host (local development).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from . import parse

DEFAULT_PORT = 29500
# Patterns as text, compiled on first use (re caches them): compiling one costs ~0.5 ms of
# every start, and most runs never need these (the environment's names are matched
# only once they start with BATCH_).
_CUSTOM = r"^BATCH_CUSTOM(\d+)_HOSTS$"
_SINGLE = r"^BATCH_(.+)\.0_HOSTS$"
_HOSTNAME = r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$"


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the job: its rank, the host name or address the platform gave, and the port
    the platform's variables named for it."""

    rank: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Cluster:
    """The job's nodes as the platform's variables describe them (``BATCH_*`` or
    ``VC_*``/``MA_*``), with this node's rank; ``source`` says which contract it came from."""

    nodes: tuple[Member, ...]
    rank: int  # this node's rank
    source: str  # "old", "new" or "local": which contract described it
    job_id: str

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def master(self) -> Member:
        return self.nodes[0]

    @property
    def peers(self) -> tuple[Member, ...]:
        return tuple(n for n in self.nodes if n.rank != self.rank)


def parse_host_port(value: str, where: str) -> tuple[str, int]:
    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        raise ConfigError(f"{where}={value!r} is not host:port (e.g. job-worker-0:6666)")
    host = host.strip("[]")  # [::1]:6666
    if not host or not (re.match(_HOSTNAME, host) or ":" in host):
        raise ConfigError(f"{where}={value!r}: {host!r} is not a valid host name")
    if not port_text.isdigit():
        raise ConfigError(f"{where}={value!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}={value!r}: port {port} is out of range 1-65535")
    return host, port


def _check_host(host: str, where: str) -> str:
    host = host.strip()
    if not re.match(_HOSTNAME, host):
        raise ConfigError(f"{where}: {host!r} is not a valid host name")
    return host


def _index(env: Mapping[str, str], name: str, size: int) -> int:
    index = parse.integer(env, name, 0, minimum=0)
    if index >= size:
        raise ConfigError(f"{name}={index} is outside [0, {size}): the job has {size} "
                          f"node{'s' if size != 1 else ''}")
    return index


def _count(env: Mapping[str, str], names: tuple[str, ...], found: int, what: str) -> None:
    for name in names:
        if env.get(name, "").strip():
            n = parse.integer(env, name, found, minimum=1)
            if n != found:
                raise ConfigError(f"{name}={n} but {what} lists {found} node"
                                  f"{'s' if found != 1 else ''}; they must agree")


def _no_hosts(env: Mapping[str, str], count: str, index: str, missing: str) -> None:
    """A contract that gives a node count above 1 but names no node is a broken spec."""
    if env.get(count, "").strip() or env.get(index, "").strip():
        n = parse.integer(env, count, 1, minimum=1)
        if n > 1:
            raise ConfigError(f"{count}={n} but {missing}")


def _old_contract(env: Mapping[str, str]) -> tuple[list[tuple[str, int]], int] | None:
    custom: dict[int, str] = {}
    for name, value in env.items():
        m = re.match(_CUSTOM, name) if name.startswith("BATCH_") else None
        if m:
            custom[int(m.group(1))] = value
    hosts: list[tuple[str, int]]
    if custom:
        expected = list(range(len(custom)))
        if sorted(custom) != expected:
            missing = sorted(set(range(max(custom) + 1)) - set(custom))
            raise ConfigError(f"BATCH_CUSTOM*_HOSTS has gaps: indices {sorted(custom)} "
                              f"(missing {missing}); every node 0..N-1 needs one")
        hosts = [parse_host_port(custom[i], f"BATCH_CUSTOM{i}_HOSTS") for i in expected]
        what = "BATCH_CUSTOM*_HOSTS"
    elif env.get("BATCH_WORKER_HOSTS", "").strip():
        hosts = [parse_host_port(v, "BATCH_WORKER_HOSTS")
                 for v in env["BATCH_WORKER_HOSTS"].split(",") if v.strip()]
        what = "BATCH_WORKER_HOSTS"
    else:
        singles = [(n, v) for n, v in env.items()
                   if n.startswith("BATCH_") and re.match(_SINGLE, n)]
        if not singles:
            _no_hosts(env, "DLS_TASK_NUMBER", "DLS_TASK_INDEX",
                      "no BATCH_CUSTOM*_HOSTS variables name the nodes")
            return None
        if len(singles) > 1:
            raise ConfigError("several BATCH_<job>.0_HOSTS variables: "
                              + ", ".join(sorted(n for n, _ in singles)))
        hosts = [parse_host_port(singles[0][1], singles[0][0])]
        what = singles[0][0]
    seen: dict[tuple[str, int], int] = {}
    for i, hp in enumerate(hosts):
        if hp in seen:
            raise ConfigError(f"{what}: node {i} repeats node {seen[hp]}'s address "
                              f"{hp[0]}:{hp[1]}; every node needs its own")
        seen[hp] = i
    _count(env, ("DLS_TASK_NUMBER",), len(hosts), what)
    return hosts, _index(env, "DLS_TASK_INDEX", len(hosts))


def _volcano_hosts(volcano_dir: Path) -> list[str] | None:
    try:
        files = sorted(volcano_dir.glob("*.host"))
    except OSError:
        return None
    chosen = volcano_dir / "worker.host"
    if not chosen.exists():
        if len(files) != 1:
            return None
        chosen = files[0]
    try:
        lines = chosen.read_text().split()
    except OSError:
        return None
    return [_check_host(h, str(chosen)) for h in lines if h.strip()] or None


def _new_contract(env: Mapping[str, str], volcano_dir: Path,
                  port: int) -> tuple[list[tuple[str, int]], int] | None:
    names = _volcano_hosts(volcano_dir)
    what = str(volcano_dir / "worker.host")
    if names is None and env.get("VC_WORKER_HOSTS", "").strip():
        names = [_check_host(h, "VC_WORKER_HOSTS")
                 for h in env["VC_WORKER_HOSTS"].split(",") if h.strip()]
        what = "VC_WORKER_HOSTS"
    if names is None:
        _no_hosts(env, "MA_NUM_HOSTS", "VC_TASK_INDEX",
                  "neither VC_WORKER_HOSTS nor /etc/volcano/*.host names the nodes")
        return None
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise ConfigError(f"{what} names {dupes[0]!r} more than once; every node needs "
                          "its own host")
    _count(env, ("MA_NUM_HOSTS", "VC_WORKER_NUM"), len(names), what)
    return [(h, port) for h in names], _index(env, "VC_TASK_INDEX", len(names))


# Where the platform names the job, in the order they are read. The old contract's
# run_train.sh documents DLS_JOB_ID ("Job ID") and sets BATCH_JOB_ID; the Volcano
# contract's is MA_VJ_NAME, "ma-job-<training job id>" (its launcher helpers turn it
# into the "modelarts-job-<id>" of the job's log names), with a "-vcN" suffix on
# super-node scheduling. A restart is the same job: its containers get the same id.
JOB_ID_VARIABLES = ("DLS_JOB_ID", "BATCH_JOB_ID", "MA_VJ_NAME", "MA_JOB_ID", "VC_JOB_ID")


def platform_job_id(env: Mapping[str, str]) -> str | None:
    """The platform's id of this job, the same in every container of it and across its
    restarts; None when no variable names it (a local run)."""
    for name in JOB_ID_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            if name == "MA_VJ_NAME":
                value = re.sub(r"-vc\d+$", "", value)
                if value.startswith("ma-job-"):
                    value = "modelarts-job-" + value[len("ma-job-"):]
            return value
    return None


def job_id(env: Mapping[str, str], hosts: list[tuple[str, int]]) -> str:
    """The job's id for the keys its nodes derive; the node list when there is none."""
    return platform_job_id(env) or ",".join(f"{h}:{p}" for h, p in hosts)


def discover(env: Mapping[str, str], volcano_dir: Path) -> Cluster:
    port = parse.integer(env, "BOOTSTRAP_MASTER_PORT", DEFAULT_PORT, minimum=1)
    if port > 65535:
        raise ConfigError(f"BOOTSTRAP_MASTER_PORT={port} is out of range 1-65535")
    old = _old_contract(env)
    new = _new_contract(env, volcano_dir, port)
    if new is not None:
        if old is not None and (len(old[0]) != len(new[0]) or old[1] != new[1]):
            raise ConfigError(
                f"the old contract (BATCH_*/DLS_*: {len(old[0])} nodes, index {old[1]}) and "
                f"the new one (VC_*/MA_*: {len(new[0])} nodes, index {new[1]}) disagree; "
                "fix the job's variables so they describe the same cluster")
        hosts, rank, source = new[0], new[1], "new"
    elif old is not None:
        hosts, rank, source = old[0], old[1], "old"
    else:
        hosts, rank, source = [(os.uname().nodename, port)], 0, "local"
    nodes = tuple(Member(i, h, p) for i, (h, p) in enumerate(hosts))
    return Cluster(nodes=nodes, rank=rank, source=source, job_id=job_id(env, hosts))
