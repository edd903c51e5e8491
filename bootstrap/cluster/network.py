"""The engines' network: which interface reaches the peers, and the HCAs to use.

NCCL and Gloo choose an interface by their own heuristics (the first that is up and
not ``lo``/``docker*``; the address the host's own name resolves to), and on a node
with a bridge, a VLAN, a stray veth or IPoIB beside the VPC NIC they can advertise
one network and connect on another: the job then sits in ``init_process_group``
until a timeout. The bootstrap knows every peer's address before the command starts,
so it asks the kernel which interface really reaches them:

* nodes 1..N-1: the interface the route to node 0 (``MASTER_ADDR`` as resolved
  here, or node 0's IB address with ``BOOTSTRAP_MASTER_ADDR_IB``) goes out of;
* node 0: the interface holding the address its peers connected to (the start
  barrier's connections), else the one the route to node 1 goes out of, else the
  one holding the address its own name resolves to. The route to a peer comes
  before its own name on purpose: a node's name can resolve, on that node, to an
  address its peers never use (a ``docker0`` address every host shares), and that
  is exactly what sends Gloo astray.

It exports ``NCCL_SOCKET_IFNAME==<name>`` (NCCL's exact match: ``eth0`` must not
also match ``eth01``), ``GLOO_SOCKET_IFNAME``, and Open MPI's
``OMPI_MCA_btl_tcp_if_include``/``OMPI_MCA_oob_tcp_if_include``; from sysfs, the
active HCA ports as ``NCCL_IB_HCA`` and, on RoCE, the RoCE v2 GID index as
``NCCL_IB_GID_INDEX``. A value the user set always wins. Route lookups send no
packet (a UDP socket's ``connect`` only asks the kernel); sysfs is read through
``BOOTSTRAP_SYSFS_ROOT`` so tests can point it at a prepared tree.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import backoff
from ..errors import BarrierFailed, PeersNotReady


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface as the kernel reports it: its addresses, whether it is up, its link
    speed."""

    name: str
    addresses: tuple[str, ...]  # IPv4 and IPv6, without prefix length
    up: bool = True
    speed_mbps: int = 0  # 0: unknown


@dataclass(frozen=True, slots=True)
class HcaPort:
    """One port of an RDMA adapter (``/sys/class/infiniband``): InfiniBand or RoCE, and on RoCE
    the v2 GID index NCCL should use."""

    device: str  # mlx5_0
    port: int
    active: bool
    link_layer: str  # "InfiniBand" | "Ethernet" (RoCE)
    roce_v2_gid: int | None = None  # the GID index to use on RoCE, when one exists


@dataclass(frozen=True, slots=True)
class Choice:
    """The interface the engines should use, and why (for the log and ``check``)."""

    interface: str | None
    reason: str
    address: str | None = None  # this node's address on it
    hcas: tuple[HcaPort, ...] = field(default_factory=tuple)

    def exports(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.interface:
            out.update({"NCCL_SOCKET_IFNAME": f"={self.interface}",
                        "GLOO_SOCKET_IFNAME": self.interface,
                        "OMPI_MCA_btl_tcp_if_include": self.interface,
                        "OMPI_MCA_oob_tcp_if_include": self.interface})
        active = [p for p in self.hcas if p.active]
        if active:
            out["NCCL_IB_HCA"] = ",".join(f"{p.device}:{p.port}" for p in active)
            roce = [p.roce_v2_gid for p in active
                    if p.link_layer == "Ethernet" and p.roce_v2_gid is not None]
            if roce:
                out["NCCL_IB_GID_INDEX"] = str(roce[0])
        return out


# --------------------------------------------------------------------------- facts

def interfaces() -> list[Interface]:
    """Every network interface with its addresses, state and speed."""
    import psutil

    stats = psutil.net_if_stats()
    found = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        ips = tuple(a.address.split("%")[0] for a in addrs
                    if a.family in (socket.AF_INET, socket.AF_INET6))
        st = stats.get(name)
        found.append(Interface(name, ips, up=bool(st and st.isup),
                               speed_mbps=int(st.speed) if st else 0))
    return found


def owner(address: str, ifaces: Sequence[Interface]) -> str | None:
    """The interface holding ``address``, if it is one of this host's."""
    for iface in ifaces:
        if address in iface.addresses:
            return iface.name
    return None


def route_source(destination: str) -> str | None:
    """The local address the kernel would send from to reach ``destination``; asking
    sends nothing (a UDP socket's connect only looks the route up)."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((destination, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None  # no route at all


def hca_ports(sysfs: Path) -> list[HcaPort]:
    """InfiniBand / RoCE ports from ``<sysfs>/class/infiniband``."""
    root = sysfs / "class" / "infiniband"
    found = []
    try:
        devices = sorted(os.listdir(root))
    except OSError:
        return []
    for dev in devices:
        try:
            ports = sorted(os.listdir(root / dev / "ports"), key=_as_int)
        except OSError:
            continue
        for port in ports:
            base = root / dev / "ports" / port
            state = _read(base / "state")  # "4: ACTIVE"
            layer = _read(base / "link_layer") or "InfiniBand"
            gid = _roce_v2_gid(base) if layer == "Ethernet" else None
            found.append(HcaPort(dev, _as_int(port), state.endswith("ACTIVE"), layer, gid))
    return found


def _roce_v2_gid(port: Path) -> int | None:
    """The first RoCE v2 GID index with an IPv4-mapped GID (what NCCL wants on RoCE),
    else the first RoCE v2 one with any GID set."""
    try:
        indexes = sorted(os.listdir(port / "gid_attrs" / "types"), key=_as_int)
    except OSError:
        return None
    fallback = None
    for index in indexes:
        if "v2" not in _read(port / "gid_attrs" / "types" / index).lower():
            continue
        gid = _read(port / "gids" / index)
        if not gid or set(gid.replace(":", "")) <= {"0"}:
            continue
        if gid.lower().startswith("0000:0000:0000:0000:0000:ffff:"):
            return _as_int(index)
        fallback = _as_int(index) if fallback is None else fallback
    return fallback


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1 << 30


# --------------------------------------------------------------------------- choice

def choose(rank: int, master_address: str | None, peer_address: str | None,
           barrier_local: str | None, ifaces: Sequence[Interface],
           route: dict[str, str | None] | None = None) -> Choice:
    """Pure: the interface for this node, from what was learned (see the module doc).

    ``master_address``: node 0's address as resolved here (node 0: its own name);
    ``peer_address``: node 1's, for node 0; ``barrier_local``: the local address the
    barrier's connections used (node 0: what peers dialled; others: our source);
    ``route``: route lookups already done (tests), else the kernel is asked.
    """
    def source(dest: str) -> str | None:
        return route[dest] if route is not None and dest in route else route_source(dest)

    def usable(address: str | None) -> str | None:
        if address is None:
            return None
        name = owner(address, ifaces)
        if name is None or ipaddress.ip_address(address).is_loopback:
            return None
        return name

    if barrier_local and usable(barrier_local):
        what = "the address its peers connected to" if rank == 0 else \
            "the source of its connection to node 0"
        return Choice(usable(barrier_local), f"{what}, {barrier_local}", barrier_local)
    if rank != 0 and master_address:
        src = source(master_address)
        name = usable(src)
        if name:
            return Choice(name, f"the route to node 0 ({master_address}) leaves from {src}", src)
        return Choice(None, f"no interface here routes to node 0 ({master_address})")
    if rank == 0 and peer_address:
        src = source(peer_address)
        name = usable(src)
        if name:
            return Choice(name, f"the route to node 1 ({peer_address}) leaves from {src}", src)
    name = usable(master_address)
    if name:
        return Choice(name, f"it holds this node's own address {master_address}",
                      master_address)
    return Choice(None, "no interface could be tied to the cluster's addresses")


def node0_address(own: str | None, peer: str | None, barrier_local: str | None,
                  route: Mapping[str, str | None] | None = None) -> str | None:
    """Node 0's address as its peers reach it, worked out on node 0 (``MASTER_ADDR``):
    the address they connected to at the start barrier, else the source of the route to
    node 1, else what its own name resolves to; never a loopback address (a host whose
    ``/etc/hosts`` maps its own name to ``127.0.1.1`` would otherwise hand its peers an
    address that leads back to themselves). None when nothing qualifies.

    ``own``, ``peer``: node 0's and node 1's names as resolved here; ``route`` as in
    :func:`choose`."""
    via_peer = None
    if peer:
        via_peer = route[peer] if route is not None and peer in route else route_source(peer)
    for candidate in (barrier_local, via_peer, own):
        if candidate and not ipaddress.ip_address(candidate).is_loopback:
            return candidate
    return None


def with_hcas(choice: Choice, sysfs: Path) -> Choice:
    return Choice(choice.interface, choice.reason, choice.address, tuple(hca_ports(sysfs)))


# --------------------------------------------------------------------------- checks

def prove_reachable(master: str, port: int, source: str | None, deadline: float,
                    rank: int) -> None:
    """Nodes 1..N-1 without a barrier: a TCP connect to node 0's port from ``source``.
    Any answer proves the path (accepted, or refused because nothing listens yet);
    only silence (a timeout) or no route does not. Retries until ``deadline``; then
    :class:`PeersNotReady` (exit 3) naming this node and the address."""
    last = "no answer"
    for left in backoff.tries(deadline, 0.2, 2.0):
        family = socket.AF_INET6 if ":" in master else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(min(left, 3.0))
        try:
            if source:
                sock.bind((source, 0))
            sock.connect((master, port))
            return
        except ConnectionRefusedError:
            return  # the host answered: the path works, the engine will listen later
        except OSError as exc:
            last = os.strerror(exc.errno) if exc.errno else (str(exc) or "timed out")
        finally:
            sock.close()
    via = f" from {source}" if source else ""
    raise PeersNotReady(f"node {rank} cannot reach node 0 at {master}:{port}{via} ({last}): "
                        "the address resolves but gives no answer; check routes and "
                        "security groups between the nodes")


def check_port_free(address: str | None, port: int) -> None:
    """Node 0: ``MASTER_PORT`` must be free before the engine binds it; else one line
    naming the port and, when this process may see it, who holds it (exit 5)."""
    with socket.socket(socket.AF_INET6 if address and ":" in address else socket.AF_INET,
                       socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address or "", port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # not ours to judge (no such address): the engine will say
    holder = _holder(port)
    raise BarrierFailed(f"MASTER_PORT {port} on node 0 is already in use"
                        f"{f' by {holder}' if holder else ''}; stop that process or set "
                        "MASTER_PORT (or BOOTSTRAP_MASTER_PORT) to a free port")


def _holder(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy, never a failure
        pass
    return ""

