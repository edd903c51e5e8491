"""Peer-assisted fetch: the job's nodes pass the code directory (and staged data) down
a tree, so the object store sees about one copy instead of one per node.

Design (chosen by ``bench/peer_sim.py`` with per-hop costs measured by
``bench/relay_hop.py``, see bench/README.md): a binary tree by rank; node 0 fetches
from the store, node i pulls from node ``(i-1)//2``, and every node
forwards files to its children as they land, so the job waits about as long as node 0
alone. Contract (each point is tested):

* **The store stays the source of truth.** Every node lists the prefix itself; a file
  from a peer is kept only when its size and checksum match that listing's ETag, as
  :mod:`.verify` checks every download: the MD5 of a plain ETag, or for a multipart
  ETag (``MD5(part MD5s)-N``) the same sum recomputed with the parts' lengths, which the
  node asks the store itself (HeadObject ``partNumber``). An object that cannot be
  checked (another ETag, a store that does not answer for parts) comes from the store.
* **Each node its own port, each end proven.** Node r serves on
  ``BOOTSTRAP_RELAY_PORT + 3r`` (its data tree and a restarted job's outputs on the next
  two), so nodes sharing a
  host (the host-network pools) each serve their own children. Both ends prove
  themselves with :mod:`bootstrap.cluster.auth` (a key per protocol, derived from the
  store's secret key and the job's id; the server first, its rank bound in): a child
  talks only to its parent, a server only to its children.
* **Never worse than today, every wait bounded** (the README's relay table lists each
  bound): a refused connection, a listener that is not the parent, a handshake not
  done within HANDSHAKE seconds, a parent silent for SILENCE seconds, a parent whose
  own progress (files and bytes landed, carried by its heartbeats) has not moved for
  STALL seconds of its own clock, a parent serving slower than the store would
  (``Pace``), a mismatch: that node's remaining files come from the store, with the
  usual retries; a peer failure never fails the job. A child that itself falls behind
  (stopped, starved of CPU) sees it in the parent's clock stamps and does not blame the
  parent. A parent drops a child that has not read or asked for SILENCE seconds, and
  waits for its children, once its own fetch is done, only while they make progress.
* **Open early.** A node binds its port before it lists the store, so a child knocking
  finds it as soon as the node's process has started, however long the listing takes;
  requests wait (with heartbeats) until the node has its listing.
* **Only the job's nodes, only the job's files.** Requests name files of this tree's
  listing only (anything else is refused, logged, and the connection closed); lines
  are capped, handshakes in progress are capped at MAX_PENDING (a new one evicts the
  oldest, so strangers holding slots cannot starve a child), files stream from disk in
  1 MiB chunks.
* Bytes on the wire are not encrypted: they are the code the nodes read from the store
  over the same kind of network, integrity comes from the store's listing, and
  confidentiality is the job network's (the platform's VPC), as for the engines' own
  traffic (NCCL, gloo). The ports are open only during the fetch and closed before
  the command starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..cluster import auth, ports
from ..config.settings import PEER_FETCH_NODES
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.location import Location
    from ..config.platform import Cluster
    from ..config.settings import Settings
    from ..log import Log

FAN_OUT = 2  # as fast as 4 on 25 Gbit/s, faster on slower links (bench/README.md)
# One derived key and one port each: the code, the staged data, a restarted job's outputs.
PROTOCOLS = ("relay-code", "relay-data", "relay-outputs")
BATCH = 64  # files per request line
CHUNK = 1 << 20
MAX_PENDING = 16  # handshakes in progress at once; proven children do not count
CONNECT_WINDOW = 30.0  # seconds a child keeps trying its parent, and a parent waits for it
HANDSHAKE = 5.0  # seconds for the whole handshake, on each end
HEARTBEAT = 2.0  # a parent waiting on its own download says so (with its progress) this often
SILENCE = 10.0  # seconds without a byte (either way): the other end is stuck
STALL = 20.0  # seconds of the parent's clock in which its own progress did not move
LAG = 1.0  # seconds behind the parent's stamps: this node, not the parent, is slow
# A parent slower than this over a PACE_WINDOW of its active time (bytes or files) is
# slower than the store would be: the rest comes from there. Both floors sit well below
# what one store connection gives (tens of MB/s, tens of small objects per second).
MIN_BYTES_PER_S = 2 << 20
MIN_FILES_PER_S = 20.0
PACE_WINDOW = 5.0


def parent(rank: int) -> int | None:
    return None if rank == 0 else (rank - 1) // FAN_OUT


def children(rank: int, size: int) -> list[int]:
    return [c for c in range(rank * FAN_OUT + 1, rank * FAN_OUT + FAN_OUT + 1) if c < size]


def port_of(base: int, rank: int, protocol: str) -> int:
    """Where node ``rank`` serves ``protocol``: a port a protocol, in PROTOCOLS' order."""
    return base + len(PROTOCOLS) * rank + PROTOCOLS.index(protocol)


@dataclass(frozen=True, slots=True)
class Peers:
    """Where this node sits in the job's relay tree for one protocol, and its key."""

    rank: int
    hosts: tuple[str, ...]  # by rank
    ports: tuple[int, ...]  # by rank: where each node serves this protocol
    key: bytes = field(repr=False)  # the job's HMAC key: never in a log line
    protocol: str
    wait: float  # seconds at most a parent waits for children still taking files


def port_conflict(base: int, cluster: Cluster, ephemeral: tuple[int, int]) -> str | None:
    """Why the job's relay ports (every node's code, data and outputs port, three a
    node) cannot be used, or None (the rule: :mod:`bootstrap.cluster.ports`)."""
    wanted = [(port_of(base, r, p), r) for r in range(cluster.size) for p in PROTOCOLS]
    found = ports.conflict(wanted, ports.taken_by_the_job(cluster), ephemeral)
    return found.replace(" go past", " (three a node) go past") if found else None


def plan(settings: Settings, url: Location, protocol: str, log: Log) -> Peers | None:
    """This node's place in the relay tree, when peer-assisted fetch applies
    (BOOTSTRAP_PEER_FETCH): a remote tree, several nodes, static keys every node shares
    (the proofs are derived from them) and ports clear of the job's others; else None,
    and the log says why when it was asked for. A port conflict with the switch set to
    ``on`` is a usage error (exit 2); under ``auto`` the relay stays off and says why."""

    cluster, mode = settings.cluster.layout, settings.cluster.peer_fetch
    if mode == "off" or not url.is_remote or cluster.size == 1:
        return None
    if mode == "auto" and cluster.size < PEER_FETCH_NODES:
        return None
    base = settings.cluster.relay_port
    conflict = port_conflict(base, cluster, ports.ephemeral())
    if conflict is not None:
        fix = (f"BOOTSTRAP_RELAY_PORT={base} leaves no room for {cluster.size} nodes: "
               f"{conflict}; choose another base (node r serves on base + 3r to base + 3r + 2)")
        if mode == "on":
            raise ConfigError(fix)
        log.warn(f"relay: off: {fix}")
        return None
    creds = settings.transfer.credentials
    if creds is None or creds.token:
        log.info("relay: off: the nodes hold no shared static keys (a role or a session "
                 "token), so membership cannot be proven; every node fetches from the store")
        return None
    return Peers(cluster.rank, tuple(m.host for m in cluster.nodes),
                 tuple(port_of(base, r, protocol) for r in range(cluster.size)),
                 auth.derive(creds.secret_key, cluster.job_id, protocol), protocol,
                 min(settings.cluster.peer_timeout, 300.0))
