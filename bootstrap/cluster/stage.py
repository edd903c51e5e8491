"""The cluster stages of a job's start: the peers' names, then the start barrier, the
topology the engines are handed and the network they use.

:func:`resolve_peers` runs beside the download (a name that appears late is waited
for, up to ``BOOTSTRAP_PEER_TIMEOUT``); :func:`form` runs once every node-local stage
is done, because the barrier is where each node says whether it is ready.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import BarrierFailed, BootstrapError, PreflightFailed
from ..log import Log
from . import topology

if TYPE_CHECKING:
    import threading

    from ..config.platform import Cluster
    from ..config.settings import Settings
    from ..node.preflight import Report


def resolve_peers(settings: Settings, log: Log, stop: threading.Event) -> dict[str, str]:
    """Every other node's name resolved to an address (host -> address)."""
    from . import peers

    with log.timed("peers") as t:
        addresses = peers.wait_for_names(settings.cluster.layout.peers,
                                         settings.cluster.peer_timeout, log, stop=stop)
        t.detail = f"{len(addresses)} peer name(s) resolved"
        t.fields = {"resolved": len(addresses)}
    return addresses


def local_failure(report: Report) -> PreflightFailed:
    return PreflightFailed("this node failed its preflight: "
                           + "; ".join(f"{f.check}: {f.message}" for f in report.failures()))


def form(settings: Settings, log: Log, report: Report, addresses: Mapping[str, str],
         data_failure: BootstrapError | None = None,
         force_barrier: bool = False) -> topology.Topology | None:
    """The start barrier and the topology, once the peers resolve; None for a local
    one-node job with no platform variables (nothing to hand the engines).

    A node that failed its preflight (or its data staging) still takes part in the
    barrier, so that every other node learns why the job stops; then it exits with
    that failure's code.
    """
    cluster, knobs = settings.cluster.layout, settings.cluster
    facts = topology.MemberFacts(gpus=report.gpu_count)
    if cluster.size == 1:
        if not report.ok:
            raise local_failure(report)
        if cluster.source == "local":
            return None
        from . import peers

        ip = peers.resolve(cluster.master.host)
        return topology.Topology(cluster, {0: facts}, master_ip=ip, own_ip=ip)

    from . import ipoib, network

    ib_addr = ipoib.local_address(knobs.ipoib_device)
    facts = topology.MemberFacts(gpus=facts.gpus, ib_addr=ib_addr)
    run_barrier = force_barrier or knobs.barrier == "on" or (knobs.barrier == "auto" and ib_addr)
    if ib_addr is None:
        log.info(f"ipoib: no address on {knobs.ipoib_device}; no IB address map"
                 + ("" if run_barrier else " and no start barrier"))
    all_facts: dict[int, topology.MemberFacts] = {cluster.rank: facts}
    barrier_local = None
    if run_barrier:
        all_facts, barrier_local = _barrier(settings, log, report, addresses, facts,
                                            data_failure)
    elif not report.ok:
        raise local_failure(report)
    if data_failure is not None:
        raise data_failure
    master_ip = _master_ip(cluster, addresses, barrier_local, log)
    own_ip = master_ip if cluster.rank == 0 else (
        barrier_local or (network.route_source(master_ip) if master_ip else None))
    topo = topology.Topology(cluster, all_facts, master_addr_ib=knobs.master_addr_ib,
                             master_ip=master_ip, own_ip=own_ip)
    net: dict[str, str] = {}
    if knobs.network == "auto":
        with log.timed("network") as t:
            net = _network(cluster, settings, addresses, barrier_local, topo, log)
            t.detail = ", ".join(f"{k}={v}" for k, v in net.items()) or "no exports"
    return topology.Topology(cluster, all_facts, master_addr_ib=knobs.master_addr_ib,
                             master_ip=master_ip, own_ip=own_ip, network=net)


def _barrier(settings: Settings, log: Log, report: Report, addresses: Mapping[str, str],
             facts: topology.MemberFacts, data_failure: BootstrapError | None,
             ) -> tuple[dict[int, topology.MemberFacts], str | None]:
    """Every node's facts, and this node's address on the barrier's connection (None on
    node 0). This node's own failure is the story, not the other nodes' echo of it."""
    from . import barrier

    cluster = settings.cluster.layout
    with log.timed("barrier") as t:
        reasons = [f"{f.check}: {f.message}" for f in report.failures()]
        if data_failure is not None:
            reasons.append(f"data staging: {data_failure.message}")
        mine = barrier.Readiness(cluster.rank, not reasons, "; ".join(reasons), facts)
        try:
            everyone, barrier_local = barrier.exchange(
                cluster, mine, addresses.get(cluster.master.host),
                settings.cluster.peer_timeout, log)
        except BarrierFailed:
            if not report.ok:
                raise local_failure(report) from None
            if data_failure is not None:
                raise data_failure from None
            raise
        t.detail = f"{len(everyone)} node(s) ready"
    return {r: rep.facts for r, rep in everyone.items()}, barrier_local


def _master_ip(cluster: Cluster, addresses: Mapping[str, str], barrier_local: str | None,
               log: Log) -> str | None:
    """``MASTER_ADDR``: node 0's IP address, the one its peers reach it at. Nodes
    1..N-1 know it as what they resolved node 0's name to (and dialled, if the barrier
    ran); node 0 works it out (:func:`network.node0_address`)."""
    from . import network, peers

    def address(host: str) -> str | None:
        return addresses.get(host) or peers.resolve(host)

    if cluster.rank != 0:
        return address(cluster.master.host)
    found = network.node0_address(address(cluster.master.host),
                                  address(cluster.nodes[1].host), barrier_local)
    if found is None:
        log.info(f"cluster: no address of this node that its peers reach could be found; "
                 f"MASTER_ADDR is its name, {cluster.master.host}")
    return found


def _network(cluster: Cluster, settings: Settings, addresses: Mapping[str, str],
             barrier_local: str | None, topo: topology.Topology, log: Log) -> dict[str, str]:
    """The engines' interface and HCAs; the master proven reachable (nodes 1..N-1)
    and its port free (node 0) before the command starts."""
    from . import network, peers

    def address(host: str) -> str | None:
        return addresses.get(host) or peers.resolve(host)

    ifaces = network.interfaces()
    proven = barrier_local is not None  # the barrier's own connection proved the path
    master_addr = topo.master_addr
    if master_addr != topo.master_ip and master_addr != cluster.master.host:
        # MASTER_ADDR is node 0's IB address (BOOTSTRAP_MASTER_ADDR_IB): the engines go
        # where it routes (node 0: the device holding it), whatever network the barrier,
        # which dials names, went over.
        choice = network.choose(cluster.rank, master_addr, None, None, ifaces)
    elif cluster.rank == 0:
        choice = network.choose(0, address(cluster.master.host),
                                address(cluster.nodes[1].host), barrier_local, ifaces)
    else:
        choice = network.choose(cluster.rank, address(master_addr), None, barrier_local,
                                ifaces)
    choice = network.with_hcas(choice, settings.cluster.sysfs_root)
    log.info(f"network: {choice.interface or 'no interface chosen'}: {choice.reason}")
    port = cluster.master.port
    if cluster.rank == 0:
        network.check_port_free(None, port)
    elif not proven:
        target = address(master_addr) or master_addr
        network.prove_reachable(target, port, choice.address,
                                time.monotonic() + settings.cluster.peer_timeout, cluster.rank)
    return choice.exports()
