"""MPI-style launch (``BOOTSTRAP_LAUNCH=mpi``), the pure part: who launches, who
serves, on which port, with which key, and what the engines are handed.

Node 0 runs the command (``mpirun``, ``deepspeed --hostfile``, ``horovodrun``); every
other node runs the launch agent (:mod:`.agent`) and ends with node 0's exit code.
The launcher starts remote processes through the bootstrap's own ssh-compatible
client (:mod:`.ssh`), so no sshd, host keys or authorized keys are needed anywhere.

* **Ports.** Node r listens on ``BOOTSTRAP_AGENT_PORT + r`` (co-located nodes each
  have their own), clear of ``MASTER_PORT``, the nodes' ports in the host list, the
  relay's ports and the kernel's ephemeral range (:func:`port_conflict`).
* **One agent per host.** Remote commands for a host go to the lowest-ranked node on
  it other than node 0 (:func:`agent_for`); the other nodes there only wait for the
  launcher's end. The hostfile lists each host once, its slots the sum of its nodes'.
* **Key.** ``BOOTSTRAP_JOB_SECRET`` (or the file ``BOOTSTRAP_JOB_SECRET_FILE`` names)
  first, else the store's static secret key, as the relay does; with a session token
  and no job secret there is nothing every node shares: exit 2 (:func:`job_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..cluster import auth, ports
from ..config.platform import Cluster
from ..config.settings import Launch, Transfer
from ..errors import ConfigError
from ..relay import protocol as relay

PROTOCOL = "launch-agent"
CONNECT_WINDOW = 30.0  # seconds the launcher keeps dialling an agent (they listen first)


def port_of(base: int, rank: int) -> int:
    return base + rank


def port_conflict(base: int, cluster: Cluster, relay_base: int,
                  ephemeral: tuple[int, int]) -> str | None:
    """Why the agents' ports (nodes 1..N-1) cannot be used, or None (the rule:
    :mod:`bootstrap.cluster.ports`, the relay's ports counted as taken)."""
    return ports.conflict([(port_of(base, r), r) for r in range(1, cluster.size)],
                          ports_held(cluster, relay_base), ephemeral)


def ports_held(cluster: Cluster, relay_base: int, agent_base: int | None = None,
               ) -> dict[int, str]:
    """The ports the job holds, each with what it is: MASTER_PORT, the host list's, the
    relay's and, given their base, the launch agents' (a mode on the agents, Ray, must
    keep clear of them all)."""
    taken = ports.taken_by_the_job(cluster)
    for r in range(cluster.size):
        for protocol in relay.PROTOCOLS:
            taken.setdefault(relay.port_of(relay_base, r, protocol),
                             f"node {r}'s relay port (BOOTSTRAP_RELAY_PORT)")
    if agent_base is not None:
        for r in range(1, cluster.size):
            taken.setdefault(port_of(agent_base, r),
                             f"node {r}'s launch agent port (BOOTSTRAP_AGENT_PORT)")
    return taken


def agent_for(cluster: Cluster, host: str) -> int | None:
    """The rank whose agent runs remote commands on ``host``: the lowest on it other
    than the launcher's; None when no such node is there."""
    ranks = [m.rank for m in cluster.nodes if m.host == host and m.rank != 0]
    return min(ranks) if ranks else None


def hostfile(cluster: Cluster, slots: Mapping[int, int]) -> str:
    """Each host once, in rank order, with the slots of all its nodes (``host slots=N``:
    Open MPI, DeepSpeed and Horovod read this form; MPICH's ``host:N`` is the other)."""
    per_host: dict[str, int] = {}
    for m in cluster.nodes:
        per_host[m.host] = per_host.get(m.host, 0) + max(slots.get(m.rank, 1), 1)
    return "".join(f"{host} slots={n}\n" for host, n in per_host.items())


def mpich_hostfile(cluster: Cluster, slots: Mapping[int, int]) -> str:
    return "".join(line.replace(" slots=", ":") for line in
                   hostfile(cluster, slots).splitlines(keepends=True))


def job_key(launch: Launch, transfer: Transfer, job_id: str,
            secret_file_text: str | None) -> bytes:
    """The agents' key; raises ConfigError when the nodes share no secret."""
    return auth.derive(shared_secret(launch, transfer, secret_file_text), job_id, PROTOCOL)


def shared_secret(launch: Launch, transfer: Transfer, secret_file_text: str | None) -> str:
    """The secret every node holds, the source of the agents' key (and Ray's token);
    raises ConfigError when there is none."""
    secret = launch.secret or (secret_file_text or "").strip() or None
    if secret is None:
        creds = transfer.credentials
        if creds is None or creds.token:
            raise ConfigError(
                f"BOOTSTRAP_LAUNCH={launch.mode} needs a secret every node shares, and the store's "
                "credentials are short-lived (a session token) or absent: set "
                "BOOTSTRAP_JOB_SECRET (or BOOTSTRAP_JOB_SECRET_FILE) to the same random "
                "value on every node, e.g. from the job's secret store")
        secret = creds.secret_key
    if len(secret) < 16:
        raise ConfigError("BOOTSTRAP_JOB_SECRET is shorter than 16 characters: use a "
                          "random value (e.g. `openssl rand -hex 32`)")
    return secret


@dataclass(frozen=True, slots=True)
class Plan:
    """This node's part in the launch: its rank, every node's host and port, the key."""

    rank: int
    hosts: tuple[str, ...]  # by rank
    ports: tuple[int, ...]  # by rank (node 0's unused: it launches, it does not listen)
    key: bytes = field(repr=False)
    serves_exec: bool  # this node's agent runs remote commands for its host
    timeout: float  # seconds an agent waits for the launcher to connect

    @property
    def launcher(self) -> bool:
        return self.rank == 0


def plan(cluster: Cluster, launch: Launch, transfer: Transfer, relay_base: int,
         ephemeral: tuple[int, int], secret_file_text: str | None,
         timeout: float) -> Plan:
    """The plan, or ConfigError (exit 2) naming what to fix."""
    if cluster.size < 2:
        raise ConfigError(f"BOOTSTRAP_LAUNCH={launch.mode} is for jobs of several nodes; this "
                          "job has one (run the engine on it directly, without the mode)")
    conflict = port_conflict(launch.agent_port, cluster, relay_base, ephemeral)
    if conflict is not None:
        raise ConfigError(f"BOOTSTRAP_AGENT_PORT={launch.agent_port} leaves no room for "
                          f"{cluster.size} nodes: {conflict}; choose another base (node r "
                          "listens on base + r)")
    key = job_key(launch, transfer, cluster.job_id, secret_file_text)
    me = cluster.nodes[cluster.rank]
    return Plan(cluster.rank, tuple(m.host for m in cluster.nodes),
                tuple(port_of(launch.agent_port, r) for r in range(cluster.size)), key,
                agent_for(cluster, me.host) == cluster.rank, timeout)


def client_config(p: Plan, addresses: Mapping[str, str]) -> dict[str, object]:
    """What the ssh client reads (a 0600 file beside the job): whom to dial for a host,
    and this node's own host when no agent serves it (the launcher's, alone on its
    host): pdsh and DeepSpeed's runner reach every host of the list, their own included,
    and the client runs that one's command here, as ``ssh`` to oneself would."""
    agents: dict[str, list[object]] = {}
    for rank, host in enumerate(p.hosts):
        if rank and host not in agents:
            agents[host] = [rank, addresses.get(host, host), p.ports[rank]]
    mine = p.hosts[p.rank]
    local = {} if mine in agents else {mine: addresses.get(mine, mine)}
    return {"rank": p.rank, "key": p.key.hex(), "agents": agents, "local": local}


def exports(client: Path, hostfile_path: Path, mpich_path: Path) -> dict[str, str]:
    """The launchers' defaults: the remote shell and the hostfile, for Open MPI 4
    (ORTE), Open MPI 5 (PRRTE) and MPICH (Hydra); tools that run ``ssh`` find the
    client first on PATH (:func:`path_with`)."""
    return {
        "OMPI_MCA_plm_rsh_agent": str(client),
        "OMPI_MCA_orte_default_hostfile": str(hostfile_path),
        "PRTE_MCA_plm_ssh_agent": str(client),
        "PRTE_MCA_prte_default_hostfile": str(hostfile_path),
        "HYDRA_LAUNCHER": "ssh",
        "HYDRA_LAUNCHER_EXEC": str(client),
        "HYDRA_HOST_FILE": str(mpich_path),
        "PDSH_RCMD_TYPE": "ssh",  # pdsh's default is rsh; DeepSpeed's runner sets ssh too
        "BOOTSTRAP_MPI_HOSTFILE": str(hostfile_path),
    }


def path_with(bin_dir: Path, path: str) -> str:
    return ":".join([str(bin_dir)] + [p for p in path.split(":") if p and p != str(bin_dir)])
