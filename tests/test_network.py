"""The engines' network: interface choice and HCA exports (pure, in milliseconds), then
the failure it fixes on real hosts (network namespaces, real torch.distributed).

The multi-node lab gives every host a decoy interface that sorts before ``eth0`` and
holds the same address on every host (the ``docker0`` case, named so NCCL's default
``^docker,lo`` filter would not skip it), and makes each host's own name resolve to
it, as a misconfigured node's does. A control run without the bootstrap's exports
must fail or hang there; the same job through run_train.sh must succeed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.cluster import network
from bootstrap.cluster.network import Choice, HcaPort, Interface
from tests.conftest import RUN_TRAIN, VENV_BIN, assert_one_error_line, base_env
from tests.support.lab import ALLREDUCE, finish
from tests.support.netns import Hosts, namespaces_available

ETH0 = Interface("eth0", ("10.9.0.2", "fe80::1"))
DECOY = Interface("dcy0", ("10.200.200.1",))
LO = Interface("lo", ("127.0.0.1", "::1"))
IFACES = [DECOY, ETH0, LO]


# --------------------------------------------------------------------------- pure

def test_a_worker_takes_the_interface_its_route_to_node_0_leaves_from() -> None:
    c = network.choose(1, "10.9.0.1", None, None, IFACES, route={"10.9.0.1": "10.9.0.2"})
    assert c.interface == "eth0" and c.address == "10.9.0.2"
    assert c.exports() == {"NCCL_SOCKET_IFNAME": "=eth0", "GLOO_SOCKET_IFNAME": "eth0",
                           "OMPI_MCA_btl_tcp_if_include": "eth0",
                           "OMPI_MCA_oob_tcp_if_include": "eth0"}


def test_node_0_prefers_what_peers_dialled_then_the_route_to_node_1() -> None:
    # Its own name resolves to the decoy (held locally!): still not the decoy.
    via_route = network.choose(0, "10.200.200.1", "10.9.0.3", None, IFACES,
                               route={"10.9.0.3": "10.9.0.2"})
    assert via_route.interface == "eth0", via_route
    via_barrier = network.choose(0, "10.200.200.1", "10.9.0.3", "10.9.0.2", IFACES,
                                 route={"10.9.0.3": "10.200.200.1"})
    assert via_barrier.interface == "eth0", via_barrier
    own_name = network.choose(0, "10.9.0.2", None, None, IFACES)
    assert own_name.interface == "eth0" and "own address" in own_name.reason


def test_node_0s_address_is_what_its_peers_reach_never_loopback() -> None:
    """MASTER_ADDR on node 0: the barrier's address, the route to node 1, its own name,
    in that order; a name that resolves to 127.0.1.1 on its own host is passed over."""
    route = {"10.9.0.3": "10.9.0.2"}
    assert network.node0_address("10.9.0.5", "10.9.0.3", "10.9.0.7", route) == "10.9.0.7"
    assert network.node0_address("127.0.1.1", "10.9.0.3", None, route) == "10.9.0.2"
    assert network.node0_address("10.9.0.5", None, None) == "10.9.0.5"
    assert network.node0_address("127.0.1.1", "10.9.0.3", "127.0.0.1",
                                 {"10.9.0.3": "127.0.0.1"}) is None


def test_loopback_and_foreign_addresses_choose_nothing() -> None:
    assert network.choose(1, "127.0.0.2", None, None, IFACES,
                          route={"127.0.0.2": "127.0.0.1"}).interface is None
    assert network.choose(1, "10.9.0.1", None, None, IFACES,
                          route={"10.9.0.1": None}).interface is None
    assert network.choose(0, "192.0.2.77", None, None, IFACES).interface is None
    assert Choice(None, "nothing").exports() == {}


def _sysfs(root: Path) -> Path:
    """Two active HCAs (InfiniBand, RoCE), one down; the RoCE port has v1 and v2 GIDs."""
    ib = root / "class" / "infiniband"

    def port(dev: str, state: str, layer: str, gids: dict[str, tuple[str, str]]) -> None:
        p = ib / dev / "ports" / "1"
        (p / "gid_attrs" / "types").mkdir(parents=True)
        (p / "gids").mkdir()
        (p / "state").write_text(state + "\n")
        (p / "link_layer").write_text(layer + "\n")
        for index, (kind, gid) in gids.items():
            (p / "gid_attrs" / "types" / index).write_text(kind + "\n")
            (p / "gids" / index).write_text(gid + "\n")

    zero = "0000:0000:0000:0000:0000:0000:0000:0000"
    port("mlx5_0", "4: ACTIVE", "InfiniBand", {"0": ("IB/RoCE v1", "fe80:0000:0000:0000:"
                                                                    "0000:0000:0000:0001")})
    port("mlx5_1", "4: ACTIVE", "Ethernet", {
        "0": ("IB/RoCE v1", "fe80:0000:0000:0000:5054:00ff:fe12:3456"),
        "1": ("RoCE v2", "fe80:0000:0000:0000:5054:00ff:fe12:3456"),
        "2": ("IB/RoCE v1", "0000:0000:0000:0000:0000:ffff:0a09:0002"),
        "3": ("RoCE v2", "0000:0000:0000:0000:0000:ffff:0a09:0002"),
        "4": ("RoCE v2", zero)})
    port("mlx5_2", "1: DOWN", "InfiniBand", {})
    return root


def test_hca_ports_and_their_exports(tmp_path: Path) -> None:
    ports = network.hca_ports(_sysfs(tmp_path))
    assert ports == [HcaPort("mlx5_0", 1, True, "InfiniBand", None),
                     HcaPort("mlx5_1", 1, True, "Ethernet", 3),
                     HcaPort("mlx5_2", 1, False, "InfiniBand", None)]
    exports = Choice("eth0", "test", "10.9.0.2", tuple(ports)).exports()
    assert exports["NCCL_IB_HCA"] == "mlx5_0:1,mlx5_1:1"  # the down port is left out
    assert exports["NCCL_IB_GID_INDEX"] == "3"  # RoCE v2 with an IPv4-mapped GID
    assert network.hca_ports(tmp_path / "no-sysfs") == []


def test_check_shows_interfaces_hcas_and_exports(tmp_path: Path, home: Path) -> None:
    env = base_env(home, {"BOOTSTRAP_SYSFS_ROOT": str(_sysfs(tmp_path / "sys")),
                          "VC_TASK_INDEX": "1", "MA_NUM_HOSTS": "2",
                          "VC_WORKER_HOSTS": "127.0.0.1,localhost"})
    r = subprocess.run([f"{VENV_BIN}/python", "-m", "bootstrap", "check"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert "network:" in r.stdout, r.stdout + r.stderr
    assert "hca mlx5_1:1 ACTIVE, Ethernet, RoCE v2 GID 3" in r.stdout
    assert "would export NCCL_IB_HCA=mlx5_0:1,mlx5_1:1" in r.stdout


# --------------------------------------------------------------------------- real hosts

DECOY_ADDR = "10.200.200.1"


@pytest.fixture(scope="module")
def decoyed() -> Iterator[Hosts]:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")
    with Hosts(2) as hosts:
        for i in range(hosts.n):
            ns = hosts.ns(i)
            try:
                _ip("-n", ns, "link", "add", "dcy0", "type", "dummy")
            except subprocess.CalledProcessError:  # no dummy driver here: a veth end
                _ip("-n", ns, "link", "add", "dcy0", "type", "veth", "peer", "name", "dcy0p")
            _ip("-n", ns, "addr", "add", f"{DECOY_ADDR}/24", "dev", "dcy0")
            _ip("-n", ns, "link", "set", "dcy0", "up")
        yield hosts


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _misresolve(hosts: Hosts) -> None:
    """Each host's own name resolves to the decoy there; the others' to their real
    addresses (what Gloo's default, "the address my hostname resolves to", trips on)."""
    for i in range(hosts.n):
        lines = ["127.0.0.1 localhost", f"{DECOY_ADDR} {hosts.name(i)}"]
        lines += [f"{hosts.addr(j)} {hosts.name(j)}" for j in range(hosts.n) if j != i]
        hosts.hosts_file(i).write_text("\n".join(lines) + "\n")


def _job_env(hosts: Hosts, home: Path, i: int, port: int, **extra: str) -> dict[str, str]:
    names = ",".join(hosts.name(j) for j in range(hosts.n))
    return base_env(home / f"n{i}", {"VC_TASK_INDEX": str(i), "MA_NUM_HOSTS": str(hosts.n),
                                     "VC_WORKER_HOSTS": names,
                                     "BOOTSTRAP_MASTER_PORT": str(port),
                                     "BOOTSTRAP_VOLCANO_DIR": str(home / "no-volcano"),
                                     "BOOTSTRAP_PEER_TIMEOUT": "30", **extra})


@pytest.mark.multinode
@pytest.mark.timeout(300)
def test_decoy_interface_control_fails_and_the_bootstrap_fixes_it(decoyed: Hosts, home: Path,
                                                                  tmp_path: Path) -> None:
    _misresolve(decoyed)
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    port = 29611
    # Control: the engines on their own (the variables the bootstrap would export for
    # the topology, none for the network). Gloo binds the decoy and cannot connect.
    procs = []
    for i in range(2):
        env = base_env(home / f"c{i}", {"MASTER_ADDR": decoyed.name(0),
                                        "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                                        "RANK": str(i), "T": "15"})
        (home / f"c{i}").mkdir(parents=True)
        procs.append(decoyed.spawn(i, ["python", str(script)], env))
    control = finish(procs, 40)
    assert not any("OK rank" in out for _, out, _ in control), control
    # The failure is the one the decoy causes: a peer dialled at the shared address
    # (or a rank left waiting for it until the test's timeout).
    assert any(f"remote=[{DECOY_ADDR}]" in err for _, _, err in control), control
    assert all(code != 0 for code, _, _ in control), control
    decoyed.kill_all()

    # The same job through run_train.sh: it exports the interface that reaches node 0.
    procs = []
    for i in range(2):
        (home / f"n{i}").mkdir(parents=True, exist_ok=True)
        procs.append(decoyed.spawn(i, ["bash", str(RUN_TRAIN), "python", str(script)],
                                   _job_env(decoyed, home, i, port + 1)))
    results = finish(procs, 120)
    for code, out, err in results:
        assert code == 0, err + out
        assert "world=2 gloo=eth0" in out, out
        assert "network: eth0" in err, err


@pytest.mark.multinode
@pytest.mark.timeout(300)
def test_decoy_with_torchrun_2x2_and_a_user_choice_that_wins(decoyed: Hosts, home: Path,
                                                             tmp_path: Path) -> None:
    _misresolve(decoyed)
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    procs = []
    for i in range(2):
        (home / f"n{i}").mkdir(parents=True, exist_ok=True)
        procs.append(decoyed.spawn(i, ["bash", str(RUN_TRAIN), "torchrun", "--nproc-per-node=2",
                                       str(script)], _job_env(decoyed, home, i, 29631)))
    for code, out, err in finish(procs, 180):
        assert code == 0, err + out
        assert out.count("world=4 gloo=eth0") == 2, out
    # A user's own GLOO_SOCKET_IFNAME wins (here: the wrong one on purpose; the job
    # is not run to completion, only the exports are read).
    probe = ["bash", str(RUN_TRAIN), "python", "-c",
             "import os; print(os.environ.get('GLOO_SOCKET_IFNAME'), "
             "os.environ.get('NCCL_SOCKET_IFNAME'))"]
    procs = [decoyed.spawn(i, probe, _job_env(decoyed, home, i, 29641,
                                              GLOO_SOCKET_IFNAME="dcy0"))
             for i in range(2)]
    for code, out, err in finish(procs, 60):
        assert code == 0, err
        assert out.strip() == "dcy0 =eth0", out


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_master_port_in_use_on_node_0_is_exit_5(decoyed: Hosts, home: Path) -> None:
    decoyed.write_hosts(0, range(2))
    decoyed.write_hosts(1, range(2))
    holder = decoyed.spawn(0, ["python", "-c", "import socket, time; s = socket.socket(); "
                               "s.bind(('', 29651)); s.listen(); print('listening', "
                               "flush=True); time.sleep(60)"], base_env(home))
    assert holder.stdout is not None and "listening" in holder.stdout.readline()
    (home / "n0").mkdir(parents=True)
    proc = decoyed.spawn(0, ["bash", str(RUN_TRAIN), "python", "-c", "print('ran')"],
                         _job_env(decoyed, home, 0, 29651))
    code, out, err = finish([proc], 60)[0]
    assert code == 5, err
    assert "ran" not in out
    assert_one_error_line(err, "MASTER_PORT 29651", "in use", "pid")


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_master_without_route_is_exit_3_within_the_deadline(decoyed: Hosts,
                                                              home: Path) -> None:
    decoyed.write_hosts(1, range(2))
    _ip("-n", decoyed.ns(1), "route", "add", "unreachable", f"{decoyed.addr(0)}/32")
    try:
        (home / "n1").mkdir(parents=True)
        started = time.monotonic()
        proc = decoyed.spawn(1, ["bash", str(RUN_TRAIN), "python", "-c", "print('ran')"],
                             _job_env(decoyed, home, 1, 29661, BOOTSTRAP_PEER_TIMEOUT="5"))
        code, out, err = finish([proc], 60)[0]
        elapsed = time.monotonic() - started
    finally:
        _ip("-n", decoyed.ns(1), "route", "del", "unreachable", f"{decoyed.addr(0)}/32")
    assert code == 3, err
    assert "ran" not in out
    assert_one_error_line(err, "node 1 cannot reach node 0", decoyed.addr(0))
    assert elapsed < 30, elapsed
