"""Cluster discovery from both contracts, validation, and the topology handed on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootstrap.cluster import topology
from bootstrap.config import platform as cluster
from bootstrap.errors import ConfigError
from tests.conftest import assert_one_error_line, base_env, run_train

NOWHERE = Path("/nonexistent-volcano")


def old(n: int, index: int = 0, **extra: str) -> dict[str, str]:
    env = {f"BATCH_CUSTOM{i}_HOSTS": f"job-w{i}:{6000 + i}" for i in range(n)}
    return {"DLS_TASK_INDEX": str(index), "DLS_TASK_NUMBER": str(n), **env, **extra}


def test_old_contract_sorted_numerically() -> None:
    c = cluster.discover(old(12, 10), NOWHERE)
    assert [n.host for n in c.nodes] == [f"job-w{i}" for i in range(12)]
    assert c.rank == 10 and c.master.port == 6000 and c.source == "old"


def test_single_node_variable_with_a_dot() -> None:
    c = cluster.discover({"BATCH_myjob-1.0_HOSTS": "myjob-1-0:6666"}, NOWHERE)
    assert (c.size, c.master.host, c.master.port) == (1, "myjob-1-0", 6666)


def test_new_contract_and_volcano_file(tmp_path: Path) -> None:
    env = {"VC_TASK_INDEX": "1", "MA_NUM_HOSTS": "2", "VC_WORKER_HOSTS": "a-0,a-1"}
    c = cluster.discover(env, NOWHERE)
    assert [n.host for n in c.nodes] == ["a-0", "a-1"] and c.master.port == 29500
    (tmp_path / "worker.host").write_text("fresh-0\nfresh-1\n")
    c = cluster.discover(env, tmp_path)
    assert [n.host for n in c.nodes] == ["fresh-0", "fresh-1"]


def test_both_contracts_give_the_same_topology() -> None:
    a = cluster.discover(old(2, 1, BATCH_CUSTOM1_HOSTS="job-w1:6000"), NOWHERE)
    b = cluster.discover({"VC_TASK_INDEX": "1", "MA_NUM_HOSTS": "2",
                          "VC_WORKER_HOSTS": "job-w0,job-w1", "BOOTSTRAP_MASTER_PORT": "6000"},
                         NOWHERE)
    ta = topology.Topology(a).exports({})
    tb = topology.Topology(b).exports({})
    assert ta == tb
    assert ta["MASTER_ADDR"] == "job-w0" and ta["NODE_RANK"] == "1" and ta["NNODES"] == "2"
    assert ta["PET_NPROC_PER_NODE"] == "1" and ta["WORLD_SIZE"] == "2" and ta["RANK"] == "1"
    assert json.loads(ta["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}


def test_no_variables_is_a_local_single_node() -> None:
    c = cluster.discover({}, NOWHERE)
    assert c.size == 1 and c.source == "local"


@pytest.mark.parametrize("env, needle", [
    (old(3) | {"DLS_TASK_NUMBER": "4"}, "DLS_TASK_NUMBER=4"),
    ({k: v for k, v in old(3).items() if k != "BATCH_CUSTOM1_HOSTS"}, "gaps"),
    (old(2) | {"BATCH_CUSTOM1_HOSTS": "job-w0:6000"}, "repeats"),
    (old(2) | {"BATCH_CUSTOM1_HOSTS": "job-w1"}, "not host:port"),
    (old(2) | {"BATCH_CUSTOM1_HOSTS": "job-w1:70000"}, "out of range"),
    (old(2) | {"BATCH_CUSTOM1_HOSTS": "job-w1:http"}, "not a number"),
    (old(2) | {"BATCH_CUSTOM1_HOSTS": "bad host!:80"}, "not a valid host"),
    (old(2, 2), "outside [0, 2)"),
    (old(2) | {"DLS_TASK_INDEX": "-1"}, "DLS_TASK_INDEX"),
    (old(2) | {"DLS_TASK_INDEX": "one"}, "DLS_TASK_INDEX"),
    ({"DLS_TASK_NUMBER": "4", "DLS_TASK_INDEX": "0"}, "no BATCH_CUSTOM"),
    ({"VC_WORKER_HOSTS": "a,b", "MA_NUM_HOSTS": "3"}, "MA_NUM_HOSTS=3"),
    ({"VC_WORKER_HOSTS": "a,a"}, "more than once"),
    ({"VC_WORKER_HOSTS": "a,b", "VC_TASK_INDEX": "5"}, "outside"),
    ({"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "0"}, "names the nodes"),
    (old(3, 1) | {"VC_WORKER_HOSTS": "a,b", "VC_TASK_INDEX": "1"}, "disagree"),
    ({"BOOTSTRAP_MASTER_PORT": "0"}, "BOOTSTRAP_MASTER_PORT"),
])
def test_bad_cluster_descriptions(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        cluster.discover(env, NOWHERE)
    assert needle in err.value.message


def test_bad_cluster_exits_2_before_any_download(home: Path) -> None:
    env = base_env(home, {**old(2), "BATCH_CUSTOM1_HOSTS": "x:99999",
                          "DLS_APP_URL": "s3://bucket-never-contacted/code/",
                          "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    r = run_train(["true"], env)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "BATCH_CUSTOM1_HOSTS", "out of range")


def test_user_settings_are_never_overwritten(home: Path) -> None:
    env = base_env(home, {"BATCH_job.0_HOSTS": "localhost:6123", "MASTER_PORT": "1234",
                          "PET_NPROC_PER_NODE": "7"})
    show = ("import json,os; print(json.dumps({k: os.environ.get(k) for k in "
            "['MASTER_ADDR','MASTER_PORT','PET_NPROC_PER_NODE','NNODES','BOOTSTRAP_HOSTFILE']}))")
    r = run_train(["python", "-c", show], env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234",
                                    "PET_NPROC_PER_NODE": "7", "NNODES": "1",
                                    "BOOTSTRAP_HOSTFILE": str(home / "user-job-dir" / "hostfile")}


def test_kubernetes_variables_do_not_reach_the_command(home: Path) -> None:
    """As the original run_train.sh: the pod's KUBERNETES_* service variables are not the
    job's (they would wake JAX's Kubernetes detector); everything else passes."""
    env = base_env(home, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_PORT":
                          "tcp://127.0.0.1:1", "KUBERNETESQ": "kept", "MY_VAR": "kept"})
    show = ("import json,os; print(json.dumps(sorted(k for k in os.environ "
            "if k.startswith('KUBERNETES') or k == 'MY_VAR')))")
    r = run_train(["python", "-c", show], env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["KUBERNETESQ", "MY_VAR"]
