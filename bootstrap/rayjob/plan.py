"""Ray mode (``BOOTSTRAP_LAUNCH=ray``), the pure part: the ports, the token, the flags.

Ray's own way to span nodes is a command per role (``ray start --head`` on one,
``ray start --address=...`` on the others, then the driver), and ``ray start``
daemonizes, so the worker nodes' containers would end at once. In this mode the run
command is the driver, typed once for every node: node 0 starts the head, has every
other node start a worker (through the MPI mode's launch agents, which keep it alive
exactly as long as node 0 asks), waits until all the nodes are in, then runs the
command with ``RAY_ADDRESS``; a plain ``ray.init()`` finds the cluster. When the driver
ends the workers and the head are stopped, and every node exits with its code.

* **Ports**, each named and checked before anything starts: node r's
  ``BOOTSTRAP_RAY_PORT`` + 8r + k for k = the GCS (node 0 only), the raylet's node
  manager, its object manager, the runtime-env agent, the dashboard agent's two ports
  and the metrics exporter; the task workers take ports from
  ``BOOTSTRAP_RAY_WORKER_PORTS`` (``lo-hi``). The dashboard is off (nothing on 8265),
  and Ray's client server is not started.
* **Security**: token authentication (``RAY_AUTH_MODE=token``) with a per-job token
  derived through :mod:`bootstrap.cluster.auth` from the same job secret as the agents'
  key, in a 0600 file (``RAY_AUTH_TOKEN_PATH``): never in argv, the log or the
  command's environment. Usage statistics off.
* Nodes that share a host (the host-network pools) are refused: Ray's worker ports are
  one range per host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cluster import auth, ports
from ..config.platform import Cluster
from ..errors import ConfigError

TOKEN_PROTOCOL = "ray-token"
STRIDE = 8  # ports per node
PORTS = ("gcs", "node-manager", "object-manager", "runtime-env-agent",
         "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export")
FLAGS = {"node-manager": "--node-manager-port", "object-manager": "--object-manager-port",
         "runtime-env-agent": "--runtime-env-agent-port",
         "dashboard-agent-listen": "--dashboard-agent-listen-port",
         "dashboard-agent-grpc": "--dashboard-agent-grpc-port",
         "metrics-export": "--metrics-export-port"}


@dataclass(frozen=True, slots=True)
class Plan:
    """Every node's Ray ports, the worker range, the token."""

    size: int
    base: int  # BOOTSTRAP_RAY_PORT
    workers: tuple[int, int]  # BOOTSTRAP_RAY_WORKER_PORTS
    token: str = field(repr=False)
    job_id: str

    def port(self, rank: int, name: str) -> int:
        return self.base + STRIDE * rank + PORTS.index(name)

    def gcs(self, head: str) -> str:
        """``RAY_ADDRESS``: node 0's address and GCS port."""
        host = f"[{head}]" if ":" in head else head
        return f"{host}:{self.port(0, 'gcs')}"

    def start_args(self, rank: int, node_ip: str, head: str, temp_dir: str) -> list[str]:
        """``ray start`` for node ``rank`` (``--block``: it lives as long as we keep it)."""
        args = ["ray", "start", "--block", f"--node-ip-address={node_ip}",
                f"--temp-dir={temp_dir}", "--disable-usage-stats",
                f"--min-worker-port={self.workers[0]}", f"--max-worker-port={self.workers[1]}"]
        args += [f"{flag}={self.port(rank, name)}" for name, flag in FLAGS.items()]
        if rank == 0:
            return args + ["--head", f"--port={self.port(0, 'gcs')}",
                           "--include-dashboard=false"]
        return args + [f"--address={self.gcs(head)}"]

    def temp_dir(self, rank: int, tmp: str = "/tmp") -> str:
        """Short (Ray's unix sockets live under it) and the node's own: nodes of one
        machine (tests, the local simulation) must not share a session folder."""
        return f"{tmp.rstrip('/')}/ray-{self.job_id[-8:]}-{rank}"


def exports(token_path: str) -> dict[str, str]:
    """What every node's Ray processes and the driver read."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path,
            "RAY_USAGE_STATS_ENABLED": "0"}


def plan(cluster: Cluster, secret: str, base: int, workers: tuple[int, int],
         taken: dict[int, str], ephemeral: tuple[int, int]) -> Plan:
    """The plan, or ConfigError (exit 2) naming what to fix. ``taken``: the job's other
    ports (MASTER_PORT, the agents', the relay's)."""
    if len({m.host for m in cluster.nodes}) < cluster.size:
        raise ConfigError("BOOTSTRAP_LAUNCH=ray needs one node per host, and some nodes of "
                          "this job share a host; run Ray's own commands there instead")
    lo, hi = workers
    if not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"BOOTSTRAP_RAY_WORKER_PORTS={lo}-{hi} is not a range of ports "
                          "within 1024-65535 (e.g. 10002-10999)")
    if lo <= ephemeral[1] and hi >= ephemeral[0]:
        raise ConfigError(f"BOOTSTRAP_RAY_WORKER_PORTS={lo}-{hi} overlaps the ephemeral range "
                          f"{ephemeral[0]}-{ephemeral[1]}, where outgoing connections take "
                          "ports; choose a range below it (e.g. 10002-10999)")
    wanted = [(base + STRIDE * r + k, r) for r in range(cluster.size)
              for k in range(len(PORTS)) if r == 0 or PORTS[k] != "gcs"]
    inside = [p for p, _ in wanted if lo <= p <= hi]
    if inside:
        raise ConfigError(f"BOOTSTRAP_RAY_PORT={base}: port {inside[0]} is inside "
                          f"BOOTSTRAP_RAY_WORKER_PORTS={lo}-{hi}; move one of them")
    for port, what in taken.items():
        if lo <= port <= hi:
            raise ConfigError(f"BOOTSTRAP_RAY_WORKER_PORTS={lo}-{hi} holds port {port}, "
                              f"{what}; move the range")
    conflict = ports.conflict(wanted, taken, ephemeral)
    if conflict is not None:
        raise ConfigError(f"BOOTSTRAP_RAY_PORT={base} leaves no room for {cluster.size} nodes: "
                          f"{conflict}; choose another base (node r uses base + {STRIDE}r .. "
                          f"base + {STRIDE}r + {len(PORTS) - 1})")
    token = auth.derive(secret, cluster.job_id, TOKEN_PROTOCOL).hex()
    return Plan(cluster.size, base, workers, token, cluster.job_id)
