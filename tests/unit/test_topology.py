"""What the engines are handed: the exports of a topology, and the user's overrides."""

from __future__ import annotations

import json
from pathlib import Path

from bootstrap.cluster.topology import MemberFacts, Topology, without_user_overrides
from bootstrap.config.platform import Cluster, Member


def cluster(rank: int, size: int = 2) -> Cluster:
    return Cluster(tuple(Member(i, f"job-w{i}", 6000) for i in range(size)), rank, "old", "j")


def test_exports_for_torchrun_mpi_and_tensorflow() -> None:
    topo = Topology(cluster(1), {0: MemberFacts(8), 1: MemberFacts(4)})
    out = topo.exports({"BOOTSTRAP_HOSTFILE": Path("/j/hostfile")})
    assert out["MASTER_ADDR"] == out["PET_MASTER_ADDR"] == "job-w0"
    assert out["MASTER_PORT"] == "6000" and out["NNODES"] == out["WORLD_SIZE"] == "2"
    assert out["NODE_RANK"] == out["RANK"] == "1"
    assert out["PET_NPROC_PER_NODE"] == out["BOOTSTRAP_NUM_GPUS"] == "4"
    assert out["PET_RDZV_ENDPOINT"] == "job-w0:6000"  # elastic torchrun's rendezvous
    assert out["PET_RDZV_CONF"] == "is_host=0" and out["PET_LOCAL_ADDR"] == "job-w1"
    assert Topology(cluster(0), {}).exports({})["PET_RDZV_CONF"] == "is_host=1"
    assert out["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert out["JAX_COORDINATOR_ADDRESS"] == "job-w0:6000"
    assert json.loads(out["TF_CONFIG"]) == {
        "cluster": {"worker": ["job-w0:6000", "job-w1:6000"]},
        "task": {"type": "worker", "index": 1}}
    assert out["BOOTSTRAP_HOSTFILE"] == "/j/hostfile"
    assert topo.hostfile() == "job-w0 slots=8\njob-w1 slots=4\n"
    assert "BOOTSTRAP_IB_ADDR" not in out and topo.ib_map() is None


def test_master_addr_is_node_0s_ip_and_the_name_stays_beside_it() -> None:
    """Old msrun and Paddle compare MASTER_ADDR with the node's own IPs as strings."""
    out = Topology(cluster(1), {}, master_ip="10.0.0.1").exports({})
    assert out["MASTER_ADDR"] == out["PET_MASTER_ADDR"] == "10.0.0.1"
    assert out["BOOTSTRAP_MASTER_HOST"] == "job-w0"
    assert out["PET_RDZV_ENDPOINT"] == out["JAX_COORDINATOR_ADDRESS"] == "10.0.0.1:6000"
    assert out["PADDLE_MASTER"] == "10.0.0.1:6000" and out["PADDLE_NNODES"] == "2"
    assert out["PADDLE_RANK"] == "1" and "POD_IP" not in out  # unknown: not guessed
    assert Topology(cluster(1), {}, own_ip="10.0.0.2").exports({})["POD_IP"] == "10.0.0.2"
    v6 = Topology(cluster(1), {}, master_ip="fd00::1").exports({})
    assert v6["MASTER_ADDR"] == "fd00::1" and v6["PET_RDZV_ENDPOINT"] == "[fd00::1]:6000"
    ib = Topology(cluster(1), {0: MemberFacts(8, "10.1.0.1")}, master_addr_ib=True,
                  master_ip="10.0.0.1")
    assert ib.master_addr == "10.1.0.1"  # BOOTSTRAP_MASTER_ADDR_IB still wins


def test_a_cpu_node_still_runs_one_process() -> None:
    out = Topology(cluster(0, 1), {0: MemberFacts(0)}).exports({})
    assert out["PET_NPROC_PER_NODE"] == "1" and out["BOOTSTRAP_NUM_GPUS"] == "0"


def test_master_addr_ib_uses_node_0s_ib_address_only_when_asked() -> None:
    facts = {0: MemberFacts(8, "10.0.0.1"), 1: MemberFacts(8, "10.0.0.2")}
    assert Topology(cluster(1), facts).master_addr == "job-w0"
    topo = Topology(cluster(1), facts, master_addr_ib=True)
    out = topo.exports({})
    assert out["MASTER_ADDR"] == "10.0.0.1" and out["BOOTSTRAP_IB_ADDR"] == "10.0.0.2"
    assert out["BOOTSTRAP_MASTER_IB_ADDR"] == "10.0.0.1"
    assert topo.ib_map() == {"0": {"host": "job-w0", "ib_addr": "10.0.0.1"},
                             "1": {"host": "job-w1", "ib_addr": "10.0.0.2"}}


def test_network_exports_ride_along_and_the_user_wins() -> None:
    topo = Topology(cluster(0), {0: MemberFacts(8)}, network={"NCCL_SOCKET_IFNAME": "=eth0"})
    out = topo.exports({})
    assert out["NCCL_SOCKET_IFNAME"] == "=eth0"
    kept = without_user_overrides(out, {"MASTER_PORT": "1234", "NCCL_SOCKET_IFNAME": "ib0"})
    assert "MASTER_PORT" not in kept and "NCCL_SOCKET_IFNAME" not in kept
    assert kept["MASTER_ADDR"] == "job-w0"
