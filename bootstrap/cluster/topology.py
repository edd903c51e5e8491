"""What the distributed engines are handed: variables and files describing the cluster.

The same variables come out whichever contract described the cluster, and a
variable the user set explicitly is never overwritten.

torchrun / torch.distributed (env://): ``MASTER_ADDR`` (node 0's IP address, the one
its peers reach it at, the same on every node: old ``msrun`` and Paddle start their master
only where that string equals one of the node's own addresses, so a host name starts it
nowhere; the name stays in ``BOOTSTRAP_MASTER_HOST``), ``MASTER_PORT`` (node 0's port),
``NNODES``, ``NODE_RANK``, torchrun's ``PET_NNODES``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, ``PET_NPROC_PER_NODE`` (GPUs here, 1 without),
so an unmodified ``torchrun train.py`` picks the topology up; for one-process-per-node
scripts ``WORLD_SIZE`` = nodes and ``RANK`` = node rank (torchrun overrides both for
its workers).

Elastic torchrun (``--rdzv-backend=c10d``, the command its docs give, typed the same on
every node): ``PET_RDZV_ENDPOINT`` = node 0's address and port (without it every node
meets itself on ``localhost:29400``; static torchrun reads the same endpoint, master
address and port being only its fallback); ``PET_RDZV_CONF=is_host=1`` on node 0 and
``0`` elsewhere (c10d otherwise decides who hosts the store by resolving its own host
name, which Volcano's DNS names and a ``127.0.1.1`` line in /etc/hosts both defeat);
``PET_LOCAL_ADDR`` = this node's name in the job (what the workers of a c10d rendezvous
get as ``MASTER_ADDR`` is the host's ``getfqdn()`` otherwise, ``localhost`` in a
container); ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: torch >= 2.5 keeps one store for
the workers across in-place restarts (``--max-restarts``), so a restarted worker can
read the dead attempt's address (pytorch#135712); without sharing each restart gets
a store on a fresh port.

PaddlePaddle (``python -m paddle.distributed.launch``): ``PADDLE_MASTER`` (node 0's IP and
port: the launcher starts its master only where that IP is the node's own, and a name
matches nowhere), ``PADDLE_NNODES``, ``PADDLE_RANK`` (without it the nodes after node 0
take random ranks) and ``POD_IP``, this node's address on the way to node 0 (Paddle's
own guess resolves the host name, 127.0.1.1 on a Debian-style /etc/hosts).

JAX: ``JAX_COORDINATOR_ADDRESS`` (node 0's address and port), the one variable
``jax.distributed.initialize`` reads; the process count and id it takes only from
clusters it detects (Slurm, Open MPI, Kubernetes indexed jobs, TPUs), whose variables
would mislead other engines if faked, so the README gives the one-line call that passes
``NNODES`` and ``NODE_RANK``.

MPI / DeepSpeed / Horovod: a hostfile (``host slots=N``) at ``BOOTSTRAP_HOSTFILE``.
Everyone: a JSON description at ``BOOTSTRAP_CLUSTER_FILE``. TensorFlow: ``TF_CONFIG``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import landing
from ..config.platform import Cluster

if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """What each node learned about itself (its GPUs, its IB address)."""

    gpus: int = 0
    ib_addr: str | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    """The job's nodes after the start barrier: who they are, what each reported (GPUs, IB
    address), and the interface the engines should use: what the engines' variables and
    :func:`write_files` are made from."""

    cluster: Cluster
    facts: Mapping[int, MemberFacts] = field(default_factory=dict)  # by rank
    master_addr_ib: bool = False  # MASTER_ADDR = node 0's IB address
    master_ip: str | None = None  # node 0's address as its peers reach it
    own_ip: str | None = None  # this node's address on the way to node 0
    network: Mapping[str, str] = field(default_factory=dict)  # the engines' interface/HCAs

    def slots(self, rank: int) -> int:
        return max(self.facts.get(rank, self._mine()).gpus, 1)

    def _mine(self) -> MemberFacts:
        return self.facts.get(self.cluster.rank, MemberFacts())

    @property
    def master_addr(self) -> str:
        ib = self.facts.get(0, MemberFacts()).ib_addr
        if self.master_addr_ib and ib:
            return ib
        return self.master_ip or self.cluster.master.host

    @property
    def master_endpoint(self) -> str:
        """``MASTER_ADDR:MASTER_PORT``, an IPv6 address in brackets."""
        addr = self.master_addr
        return f"[{addr}]:{self.cluster.master.port}" if ":" in addr else \
            f"{addr}:{self.cluster.master.port}"

    def describe(self) -> dict[str, Any]:
        c = self.cluster
        return {
            "source": c.source,
            "size": c.size,
            "rank": c.rank,
            "master": {"addr": self.master_addr, "host": c.master.host, "port": c.master.port},
            "nodes": [{"rank": n.rank, "host": n.host, "port": n.port,
                       "gpus": self.facts.get(n.rank, self._mine()).gpus,
                       "ib_addr": self.facts.get(n.rank, MemberFacts()).ib_addr}
                      for n in c.nodes],
        }

    def hostfile(self) -> str:
        return "".join(f"{n.host} slots={self.slots(n.rank)}\n" for n in self.cluster.nodes)

    def ib_map(self) -> dict[str, dict[str, str | None]] | None:
        """Every node's IPoIB address by rank, once the barrier exchanged them."""
        if not any(f.ib_addr for f in self.facts.values()):
            return None
        return {str(n.rank): {"host": n.host,
                              "ib_addr": self.facts.get(n.rank, MemberFacts()).ib_addr}
                for n in self.cluster.nodes}

    def tf_config(self) -> str:
        c = self.cluster
        return json.dumps({"cluster": {"worker": [f"{n.host}:{n.port}" for n in c.nodes]},
                           "task": {"type": "worker", "index": c.rank}})

    def exports(self, files: Mapping[str, Path]) -> dict[str, str]:
        c = self.cluster
        mine = self._mine()
        out = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(c.master.port),
            "BOOTSTRAP_MASTER_HOST": c.master.host,
            "NNODES": str(c.size),
            "NODE_RANK": str(c.rank),
            "WORLD_SIZE": str(c.size),
            "RANK": str(c.rank),
            "PET_NNODES": str(c.size),
            "PET_NODE_RANK": str(c.rank),
            "PET_MASTER_ADDR": self.master_addr,
            "PET_MASTER_PORT": str(c.master.port),
            "PET_NPROC_PER_NODE": str(max(mine.gpus, 1)),
            "PET_RDZV_ENDPOINT": self.master_endpoint,
            "PET_RDZV_CONF": f"is_host={int(c.rank == 0)}",
            "PET_LOCAL_ADDR": c.nodes[c.rank].host,
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "JAX_COORDINATOR_ADDRESS": self.master_endpoint,
            "PADDLE_MASTER": self.master_endpoint,
            "PADDLE_NNODES": str(c.size),
            "PADDLE_RANK": str(c.rank),
            "TF_CONFIG": self.tf_config(),
            "BOOTSTRAP_NUM_GPUS": str(mine.gpus),
        }
        out.update({name: str(path) for name, path in files.items()})
        out.update(self.network)
        if self.own_ip:
            out["POD_IP"] = self.own_ip
        if mine.ib_addr:
            out["BOOTSTRAP_IB_ADDR"] = mine.ib_addr
        master_ib = self.facts.get(0, MemberFacts()).ib_addr
        if master_ib:
            out["BOOTSTRAP_MASTER_IB_ADDR"] = master_ib
        return out


def without_user_overrides(exports: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Drops every export the user already set: an explicit choice always wins."""
    return {k: v for k, v in exports.items() if k not in env}


def write_files(topology: Topology, job_dir: Path) -> dict[str, Path]:
    """Writes the hostfile, the cluster JSON and (with IB) the IB map atomically;
    returns the variables that point at them."""
    job_dir.mkdir(parents=True, exist_ok=True)
    files = {"BOOTSTRAP_HOSTFILE": job_dir / "hostfile",
             "BOOTSTRAP_CLUSTER_FILE": job_dir / "cluster.json"}
    landing.write_text(files["BOOTSTRAP_HOSTFILE"], topology.hostfile())
    landing.write_text(files["BOOTSTRAP_CLUSTER_FILE"],
                      json.dumps(topology.describe(), indent=2) + "\n")
    ib_map = topology.ib_map()
    if ib_map is not None:
        files["BOOTSTRAP_IB_MAP_FILE"] = job_dir / "ib_map.json"
        landing.write_text(files["BOOTSTRAP_IB_MAP_FILE"], json.dumps(ib_map, indent=2) + "\n")
    return files
