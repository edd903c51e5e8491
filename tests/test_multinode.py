"""Multi-node jobs on real hosts (network namespaces), real torch.distributed over real
sockets, code downloaded from a real S3 server, each node started through run_train.sh."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import REPO, RUN_TRAIN, assert_one_error_line, base_env, stage
from tests.netns import Hosts, LoopbackHosts, namespaces_available

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

ALLREDUCE = r'''
import os, socket, sys, time
import torch
import torch.distributed as dist
dist.init_process_group("gloo")  # env:// : MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
n = dist.get_world_size()
assert t.item() == n * (n + 1) / 2, (t.item(), n)
print(f"OK rank={dist.get_rank()} world={n} host={socket.gethostname()} ts={time.time():.3f}",
      flush=True)
dist.barrier()  # leave together: rank 0 hosts the store the others tear down against
dist.destroy_process_group()
'''


@dataclass
class Lab:
    hosts: Hosts
    s3: S3Server
    url: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = namespaces_available()
    hosts: Hosts = Hosts(4) if reason is None else LoopbackHosts(4)
    if reason is not None:
        print(f"multi-node tests run on loopback addresses: {reason}")
    with hosts, S3Server(ip=hosts.bridge_ip) as s3:
        client = s3.client()
        client.create_bucket(Bucket="mn-code")
        client.put_object(Bucket="mn-code", Key="job/allreduce.py", Body=ALLREDUCE.encode())
        yield Lab(hosts, s3, "s3://mn-code/job/")


@dataclass
class NodeResult:
    rank: int
    code: int
    out: str
    err: str
    home: Path


def old_contract(lab: Lab, n: int, port: int) -> Callable[[int], dict[str, str]]:
    hosts = {f"BATCH_CUSTOM{j}_HOSTS": f"{lab.hosts.name(j)}:{port}" for j in range(n)}
    return lambda i: {"DLS_TASK_INDEX": str(i), "DLS_TASK_NUMBER": str(n), **hosts}


def new_contract(lab: Lab, n: int, port: int) -> Callable[[int], dict[str, str]]:
    names = ",".join(lab.hosts.name(j) for j in range(n))
    return lambda i: {"VC_TASK_INDEX": str(i), "MA_NUM_HOSTS": str(n),
                      "VC_WORKER_HOSTS": names, "BOOTSTRAP_MASTER_PORT": str(port)}


def run_job(lab: Lab, tmp: Path, n: int, argv: list[str],
            contract: Callable[[int], dict[str, str]], extra: Mapping[str, str] = {},
            timeout: float = 240, during: Callable[[], None] | None = None,
            before: Callable[[], None] | None = None,
            only: Sequence[int] | None = None) -> list[NodeResult]:
    """Starts nodes 0..n-1 of a job (or the ranks in ``only``: the others are absent, or
    played by the test) and waits for them; ``before`` runs once the hosts files are
    written and before any node starts, ``during`` right after they start."""
    for i in range(lab.hosts.n):
        if lab.hosts.real:
            lab.hosts.write_hosts(i, range(lab.hosts.n))
    if before is not None:
        before()
    procs = []
    homes = []
    ranks = list(range(n)) if only is None else list(only)
    for i in ranks:
        home = tmp / f"node{i}"
        home.mkdir(parents=True, exist_ok=True)
        homes.append(home)
        env = base_env(home, {**lab.s3.env(), "DLS_APP_URL": lab.url,
                              "BOOTSTRAP_VOLCANO_DIR": str(tmp / "no-volcano"),
                              **contract(i), **extra})
        procs.append(lab.hosts.spawn(i, ["bash", str(RUN_TRAIN), *argv], env))
    if during is not None:
        during()
    results = []
    deadline = time.monotonic() + timeout
    for i, proc in zip(ranks, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n[test: killed after timeout]"
        results.append(NodeResult(i, proc.returncode, out, err, homes[ranks.index(i)]))
    return results


def port() -> int:
    return random.randrange(20000, 40000)


def assert_all_ok(results: list[NodeResult], world: int) -> None:
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err}\n{r.out}"
        assert f"world={world}" in r.out, r.out


@pytest.mark.parametrize("n", [2, 3])
def test_gloo_allreduce_one_process_per_node(lab: Lab, tmp_path: Path, n: int) -> None:
    started = time.time()
    results = run_job(lab, tmp_path, n, ["python", "allreduce.py"], old_contract(lab, n, port()))
    assert_all_ok(results, n)
    first_step = min(float(r.out.split("ts=")[1]) for r in results)
    print(f"{n} nodes: launch to first all_reduce {first_step - started:.2f} s")
    hostnames = {r.out.split("host=")[1].split()[0] for r in results}
    if lab.hosts.real:
        assert hostnames == {f"node-{i}" for i in range(n)}
    cluster = json.loads((results[1].home / "user-job-dir" / "cluster.json").read_text())
    assert cluster["size"] == n and cluster["rank"] == 1
    assert [x["host"] for x in cluster["nodes"]] == [lab.hosts.name(i) for i in range(n)]
    hostfile = (results[0].home / "user-job-dir" / "hostfile").read_text()
    assert hostfile == "".join(f"{lab.hosts.name(i)} slots=1\n" for i in range(n))


@pytest.mark.parametrize("n", [2, 3])
def test_torchrun_without_topology_flags(lab: Lab, tmp_path: Path, n: int) -> None:
    results = run_job(lab, tmp_path, n, ["torchrun", "--nproc-per-node=2", "allreduce.py"],
                      old_contract(lab, n, port()))
    for r in results:
        assert r.code == 0, f"node {r.rank}:\n{r.err}"
        assert r.out.count(f"world={2 * n}") == 2, r.out


def test_new_contract_drives_the_same_run(lab: Lab, tmp_path: Path) -> None:
    results = run_job(lab, tmp_path, 2, ["python", "allreduce.py"], new_contract(lab, 2, port()))
    assert_all_ok(results, 2)


def test_volcano_host_file_wins_over_the_variable(lab: Lab, tmp_path: Path) -> None:
    volcano = tmp_path / "volcano"
    volcano.mkdir()
    (volcano / "worker.host").write_text(f"{lab.hosts.name(0)}\n{lab.hosts.name(1)}\n")
    p = port()
    contract = new_contract(lab, 2, p)
    results = run_job(lab, tmp_path, 2, ["python", "allreduce.py"],
                      lambda i: {**contract(i), "VC_WORKER_HOSTS": "stale-0,stale-1"},
                      extra={"BOOTSTRAP_VOLCANO_DIR": str(volcano)})
    assert_all_ok(results, 2)


def test_ib_exchange_builds_the_full_map(lab: Lab, tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs network namespaces for per-node ib0 devices")
    ib = {i: f"10.77.{random.randrange(1, 250)}.{i + 1}" for i in range(3)}
    for i in range(3):
        lab.hosts.add_ib(i, ib[i])
    try:
        show = ("import json,os; print(json.dumps({k: os.environ.get(k) for k in "
                "['BOOTSTRAP_IB_ADDR','BOOTSTRAP_MASTER_IB_ADDR','MASTER_ADDR']}))")
        results = run_job(lab, tmp_path, 3, ["python", "-c", show], old_contract(lab, 3, port()))
        asked = run_job(lab, tmp_path / "ib-master", 2, ["python", "-c", show],
                        old_contract(lab, 2, port()), extra={"BOOTSTRAP_MASTER_ADDR_IB": "1"})
    finally:
        for i in range(3):
            subprocess.run(["ip", "-n", lab.hosts.ns(i), "link", "del", "ib0"],
                           capture_output=True)
    for r in results:
        assert r.code == 0, r.err
        got = json.loads(r.out)
        assert got == {"BOOTSTRAP_IB_ADDR": ib[r.rank], "BOOTSTRAP_MASTER_IB_ADDR": ib[0],
                       "MASTER_ADDR": "node-0"}
        ib_map = json.loads((r.home / "user-job-dir" / "ib_map.json").read_text())
        assert ib_map == {str(i): {"host": f"node-{i}", "ib_addr": ib[i]} for i in range(3)}
        assert "stage barrier" in r.err
    for r in asked:  # asked for it, MASTER_ADDR is node 0's IB address
        assert r.code == 0, r.err
        assert json.loads(r.out)["MASTER_ADDR"] == ib[0]


def test_peer_that_resolves_late_still_starts(lab: Lab, tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs per-node hosts files")

    def hide() -> None:  # before any node starts: node-0 cannot resolve node-1 yet
        lab.hosts.write_hosts(0, [0])

    def reveal_later() -> None:
        def later() -> None:
            time.sleep(4)
            lab.hosts.add_host(0, 1)

        threading.Thread(target=later, daemon=True).start()

    contract = old_contract(lab, 2, port())
    results = run_job(lab, tmp_path, 2, ["python", "allreduce.py"], contract,
                      extra={"BOOTSTRAP_PEER_TIMEOUT": "60", "BOOTSTRAP_LOG_FORMAT": "json"},
                      before=hide, during=reveal_later)
    assert_all_ok(results, 2)
    waited = stage(results[0].err, "peers")
    # Node 0 really waited for the late name (the reveal comes 4 s after the start),
    # and got it: the test exercised the wait, not a name that was there all along.
    assert waited["seconds"] >= 3.0 and waited["resolved"] == 1, waited


def test_peer_that_never_resolves_fails_within_the_timeout(lab: Lab, tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs per-node hosts files")
    contract = old_contract(lab, 2, port())
    started = time.monotonic()
    results = run_job(lab, tmp_path, 1, ["python", "-c", "print('must not run')"],
                      lambda i: {**contract(i), "BATCH_CUSTOM1_HOSTS": "node-ghost:6000"},
                      extra={"BOOTSTRAP_PEER_TIMEOUT": "3"})
    elapsed = time.monotonic() - started
    r = results[0]
    assert r.code == 3, r.err
    assert_one_error_line(r.err, "node-ghost", "BOOTSTRAP_PEER_TIMEOUT")
    assert "must not run" not in r.out
    assert elapsed < 30


def test_barrier_times_out_cleanly_when_a_node_never_comes(lab: Lab, tmp_path: Path) -> None:
    results = run_job(lab, tmp_path, 1, ["true"], old_contract(lab, 2, port()),
                      extra={"BOOTSTRAP_BARRIER": "on", "BOOTSTRAP_PEER_TIMEOUT": "3"})
    assert results[0].code == 5
    assert_one_error_line(results[0].err, "barrier timed out", lab.hosts.name(1))




def test_a_node_whose_data_does_not_fit_stops_the_others_through_the_barrier(
        lab: Lab, tmp_path: Path) -> None:
    contract = old_contract(lab, 2, port())
    started = time.monotonic()
    results = run_job(lab, tmp_path, 2, ["python", "-c", "print('must not run')"],
                      lambda i: {**contract(i), "DLS_DATA_URL": lab.url,
                                 "BOOTSTRAP_DATA_DIR": str(tmp_path / f"data{i}"),
                                 **({"BOOTSTRAP_DATA_MAX_GB": "0.000000001"} if i == 1 else {})},
                      extra={"BOOTSTRAP_BARRIER": "on", "BOOTSTRAP_PEER_TIMEOUT": "60"})
    assert [r.code for r in results] == [5, 7], [r.err for r in results]
    assert time.monotonic() - started < 40  # node 0 did not wait out its 60 s deadline
    assert_one_error_line(results[0].err, "node 1 (", "data staging", "BOOTSTRAP_DATA_MAX_GB")
    assert_one_error_line(results[1].err, "over BOOTSTRAP_DATA_MAX_GB=1e-09")
    assert all("must not run" not in r.out for r in results)


def test_a_node_whose_gpu_driver_hangs_stops_the_others_at_once(lab: Lab, tmp_path: Path) -> None:
    """NVML never answers on node 1 (a GPU off the bus): it fails its preflight at
    BOOTSTRAP_PREFLIGHT_TIMEOUT and the barrier stops node 0 long before its deadline."""
    contract = old_contract(lab, 2, port())
    hung = {"BOOTSTRAP_NVML_MODULE": "tests.fake_nvml", "PYTHONPATH": str(REPO),
            "FAKE_NVML": json.dumps({"mode": "hang-init"}), "BOOTSTRAP_PREFLIGHT_TIMEOUT": "3"}
    started = time.monotonic()
    results = run_job(lab, tmp_path, 2, ["python", "-c", "print('must not run')"],
                      lambda i: {**contract(i), **(hung if i == 1 else {})},
                      extra={"BOOTSTRAP_BARRIER": "on", "BOOTSTRAP_PEER_TIMEOUT": "120"})
    assert [r.code for r in results] == [5, 4], [r.err for r in results]
    assert time.monotonic() - started < 40  # not node 0's 120 s deadline
    assert_one_error_line(results[1].err, "nvmlInit never returned")
    assert_one_error_line(results[0].err, "node 1 (", "nvmlInit never returned")
    # Each node's record tells its own story: the culprit is the one that is not "barrier".
    reasons = [json.loads((r.home / "user-job-dir" / "failure.json").read_text())["reason"]
               for r in results]
    assert reasons == ["barrier", "preflight"]


def test_a_failing_node_stops_every_node_through_the_barrier(lab: Lab, tmp_path: Path) -> None:
    contract = old_contract(lab, 3, port())
    results = run_job(lab, tmp_path, 3, ["python", "-c", "print('must not run')"],
                      lambda i: {**contract(i),
                                 **({"BOOTSTRAP_REQUIRE_GPU": "1"} if i == 2 else {})},
                      extra={"BOOTSTRAP_BARRIER": "on", "BOOTSTRAP_PEER_TIMEOUT": "60"})
    assert [r.code for r in results] == [5, 5, 4], [r.err for r in results]
    for r in results:
        assert "must not run" not in r.out
    assert_one_error_line(results[0].err, "node 2 (", "BOOTSTRAP_REQUIRE_GPU=1")
    assert_one_error_line(results[1].err, "node 2 (")
    assert_one_error_line(results[2].err, "this node failed its preflight")
