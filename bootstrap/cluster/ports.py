"""The ports a node-to-node protocol listens on, checked against the job's others.

One rule for every protocol that gives each node a port of its own (the relay's code
and data ports, the MPI launch agent's): none may land on ``MASTER_PORT``, on a node's
port in the job's host list, on another protocol's port, in the kernel's ephemeral range
(where any outgoing connection on the host may hold it) or past 65535.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..config.platform import Cluster


def ephemeral() -> tuple[int, int]:
    """The kernel's range for outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def taken_by_the_job(cluster: Cluster) -> dict[int, str]:
    """The ports the job itself uses, each with what it is."""
    taken = {m.port: f"node {m.rank}'s port in the job's host list" for m in cluster.nodes}
    taken[cluster.master.port] = "the engines' MASTER_PORT"
    return taken


def conflict(wanted: Iterable[tuple[int, int]], taken: Mapping[int, str],
             ephemeral: tuple[int, int]) -> str | None:
    """Why one of ``wanted`` ((port, the rank it is for) pairs) cannot be used, or None."""
    pairs = list(wanted)
    top = max(port for port, _ in pairs)
    if top > 65535:
        return f"the ports {min(p for p, _ in pairs)}-{top} go past 65535"
    for port, rank in pairs:
        if port in taken:
            return f"port {port} (node {rank}'s) is {taken[port]}"
        if ephemeral[0] <= port <= ephemeral[1]:
            return (f"port {port} (node {rank}'s) is in the ephemeral range "
                    f"{ephemeral[0]}-{ephemeral[1]}, where outgoing connections take ports")
    return None
