"""The engines as their users type them, one command for every node, on network-namespace
hosts whose names resolve only through /etc/hosts (as Volcano's DNS names do)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN
from tests.support.lab import Lab, NodeResult, old_contract, port, run_job

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

C10D = ["torchrun", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
        "--rdzv-id=job1"]

# A worker of an elastic job: one all_reduce; on node 1 the first attempt's worker dies
# after it (a crashed process), torchrun's agents restart both nodes' workers in place
# (--max-restarts=1), and the second attempt's all_reduce must give the right sum.
ELASTIC = r'''
import os, sys
from datetime import timedelta
import torch
import torch.distributed as dist
dist.init_process_group("gloo", timeout=timedelta(seconds=30))
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
print(f"OK rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item()} "
      f"attempt={attempt}", flush=True)
if attempt == "0" and os.environ["GROUP_RANK"] == "1":
    os._exit(3)
dist.barrier()
dist.destroy_process_group()
'''


def assert_every_rank(results: list[NodeResult], world: int, expect: str = "") -> None:
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err[-3000:]}\n{r.out}"
        assert f"world={world}" in r.out and expect in r.out, r.out


def test_torchrun_c10d_as_its_docs_type_it(lab: Lab, tmp_path: Path) -> None:
    results = run_job(lab, tmp_path, 2, [*C10D, "allreduce.py"], old_contract(lab, 2, port()))
    assert_every_rank(results, 2)


def test_without_the_endpoint_each_node_meets_itself(lab: Lab, tmp_path: Path) -> None:
    """The control: PET_RDZV_ENDPOINT set empty by hand is what torchrun saw before."""
    results = run_job(lab, tmp_path, 2, [*C10D, "--rdzv-conf=join_timeout=5", "allreduce.py"],
                      old_contract(lab, 2, port()), extra={"PET_RDZV_ENDPOINT": ""},
                      timeout=120)
    assert all(r.code != 0 for r in results), [r.out for r in results]
    assert not any("world=2" in r.out for r in results)


@pytest.mark.parametrize("run", range(3))
def test_an_elastic_job_survives_a_worker_killed_on_one_node(lab: Lab, tmp_path: Path,
                                                             run: int) -> None:
    script = tmp_path / "elastic.py"
    script.write_text(ELASTIC)
    results = run_job(lab, tmp_path, 2, [*C10D, "--max-restarts=1", str(script)],
                      old_contract(lab, 2, port()), timeout=240)
    assert_every_rank(results, 2)
    for r in results:  # two rounds of the collective on each node, both right
        assert r.out.count("world=2 sum=3.0") == 2, r.out
    # The restart count is each agent's own: node 1's worker failed, node 0's were
    # restarted for the new round (torchrun counts that as 0 or 1 depending on timing).
    assert "rank=1 world=2 sum=3.0 attempt=1" in results[1].out, results[1].out


# JAX as its docs have it, with the process count and id from the bootstrap's exports
# (JAX reads only the coordinator's address from the environment); then a collective
# across the processes on the CPU backend.
JAX = r'''
import os, sys
import jax
if sys.argv[1:] == ["bare"]:
    jax.distributed.initialize()
else:
    jax.distributed.initialize(num_processes=int(os.environ["NNODES"]),
                               process_id=int(os.environ["NODE_RANK"]))
import jax.numpy as jnp
from jax.experimental import multihost_utils
total = multihost_utils.process_allgather(jnp.array([jax.process_index() + 1.0])).sum()
print(f"OK rank={jax.process_index()} world={jax.process_count()} sum={float(total)}",
      flush=True)
jax.distributed.shutdown()
'''


def test_jax_finds_its_coordinator_and_the_call_gives_the_rest(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "jax_allgather.py"
    script.write_text(JAX)
    results = run_job(lab, tmp_path, 2, ["python", str(script)], old_contract(lab, 2, port()),
                      extra={"JAX_PLATFORMS": "cpu"}, timeout=240)
    assert_every_rank(results, 2, "sum=3.0")
    assert {r.out.split("rank=")[1].split()[0] for r in results} == {"0", "1"}


def test_jax_without_arguments_cannot_learn_the_process_count(lab: Lab, tmp_path: Path) -> None:
    """The control: what JAX's bare call does here, and why the README gives the call."""
    script = tmp_path / "jax_allgather.py"
    script.write_text(JAX)
    results = run_job(lab, tmp_path, 2, ["python", str(script), "bare"],
                      old_contract(lab, 2, port()), extra={"JAX_PLATFORMS": "cpu"}, timeout=120)
    for r in results:
        assert r.code != 0 and "Number of processes must be defined" in r.err, r.err[-2000:]


# Lightning as its docs have it: `python train.py`, the node count in the Trainer; the
# sum of the ranks reduced across the nodes once training is done.
LIGHTNING = r'''
import sys
import torch
import torch.distributed as dist
import lightning as L

class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
    def training_step(self, batch, index):
        return ((self.w - batch[0]) ** 2).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def on_train_end(self):
        t = torch.tensor([float(self.global_rank + 1)])
        dist.all_reduce(t)
        print(f"OK rank={self.global_rank} world={self.trainer.world_size} sum={t.item()}",
              flush=True)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1)),
                                   batch_size=2)
L.Trainer(num_nodes=2, devices=int(sys.argv[1]), accelerator="cpu", strategy="ddp", max_steps=2,
          logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(Model(), data)
'''

# accelerate's CPU launcher, as its docs have it; one shell string, so that the platform's
# shell leaves $NODE_RANK and the others for the bootstrap's exports.
ACCELERATE = r'''
import torch
from accelerate import Accelerator
acc = Accelerator(cpu=True)
total = acc.reduce(torch.tensor([float(acc.process_index + 1)]), reduction="sum")
print(f"OK rank={acc.process_index} world={acc.num_processes} sum={total.item()}", flush=True)
acc.wait_for_everyone()  # the ranks leave together: rank 0 hosts the store (tests/support/lab.py)
acc.end_training()
'''


@pytest.mark.parametrize("devices", [1, 2])
def test_lightning_on_two_nodes(lab: Lab, tmp_path: Path, devices: int) -> None:
    """With two processes a node Lightning spawns its own children: the exported
    WORLD_SIZE/RANK (nodes, node rank) must not mislead them (it sets its own)."""
    script = tmp_path / "lightning_train.py"
    script.write_text(LIGHTNING)
    results = run_job(lab, tmp_path, 2, ["python", str(script), str(devices)],
                      old_contract(lab, 2, port()), timeout=300)
    world = 2 * devices
    assert_every_rank(results, world, f"sum={world * (world + 1) / 2}")
    for r in results:  # each node's processes hold the ranks after the previous node's
        # (found anywhere in the output: two processes' lines may interleave on the pipe)
        ranks = sorted(int(rank) for rank in re.findall(r"OK rank=(\d+)", r.out))
        assert ranks == list(range(r.rank * devices, (r.rank + 1) * devices)), r.out


def test_accelerate_cpu_launcher_on_two_nodes(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "accelerate_train.py"
    script.write_text(ACCELERATE)
    command = ("accelerate launch --cpu --num_machines 2 --num_processes 2 "
               "--machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR "
               f"--main_process_port $MASTER_PORT {script}")
    results = run_job(lab, tmp_path, 2, [command], old_contract(lab, 2, port()),
                      extra={"HF_HOME": str(tmp_path / "hf")}, timeout=240)
    assert_every_rank(results, 2, "sum=3.0")
    assert [r.out.split("rank=")[1].split()[0] for r in results] == ["0", "1"]


# --------------------------------------------------------------------------- engines in
# their own environments (scripts/dev/setup-engines.sh): their bin/ first on the job's
# PATH, as in an image built for them (their launchers run `python` from PATH); the
# bootstrap itself from .venv.
ENGINES = REPO / ".engines"


def engine_env(name: str) -> dict[str, str]:
    folder = ENGINES / name / "bin"
    if not (folder / "python").exists():
        pytest.skip(f"{name}'s environment is not built (scripts/dev/setup-engines.sh)")
    return {"PATH": f"{folder}{os.pathsep}{VENV_BIN}{os.pathsep}{os.defpath}",
            "BOOTSTRAP_PYTHON": sys.executable}


def debian_hosts(lab: Lab) -> Callable[[], None]:
    """Node 0's /etc/hosts maps its own name to 127.0.1.1, as Debian's installer writes
    it: what a launcher that resolves the master's name on node 0 trips on."""
    def write() -> None:
        text = lab.hosts.hosts_file(0).read_text()
        lab.hosts.hosts_file(0).write_text(text.replace(
            "127.0.0.1 localhost\n", f"127.0.0.1 localhost\n127.0.1.1 {lab.hosts.name(0)}\n"))
    return write


# MindSpore on the CPU: init() through msrun's scheduler, then an AllReduce.
MINDSPORE = r'''
import os
import numpy as np
import mindspore as ms
from mindspore.communication import init, get_rank, get_group_size
ms.set_context(device_target="CPU")
init()
out = ms.ops.AllReduce()(ms.Tensor(np.array([get_rank() + 1.0], dtype=np.float32)))
print(f"OK rank={get_rank()} world={get_group_size()} sum={float(out.asnumpy()[0])}",
      flush=True)
'''
MSRUN = ("msrun --worker_num=2 --local_worker_num=1 --master_addr=$MASTER_ADDR "
         "--master_port=$MASTER_PORT --node_rank=$NODE_RANK --cluster_time_out=30 "
         "--log_dir={logs}")


def worker_lines(logs: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker_*.log")))


def test_msrun_as_its_docs_type_it(lab: Lab, tmp_path: Path) -> None:
    """The table's command, single-quoted, on hosts where node 0's own name resolves to
    127.0.1.1 there: MASTER_ADDR is node 0's IP, so msrun starts its scheduler on node 0
    and every worker reaches it."""
    script = tmp_path / "ms_allreduce.py"
    script.write_text(MINDSPORE)
    command = MSRUN.format(logs="$BOOTSTRAP_HOME/msrun") + f" --join=True {script}"
    results = run_job(lab, tmp_path, 2, [command], old_contract(lab, 2, port()),
                      extra=engine_env("mindspore"), before=debian_hosts(lab), timeout=300)
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err[-3000:]}"
        assert f"OK rank={r.rank} world=2 sum=3.0" in worker_lines(r.home / "msrun"), r.out


def test_msrun_given_the_masters_name_starts_no_scheduler(lab: Lab, tmp_path: Path) -> None:
    """The control: the name (what MASTER_ADDR held before) resolves to 127.0.1.1 on
    node 0, so its msrun starts no scheduler and node 1's worker dials nothing."""
    script = tmp_path / "ms_allreduce.py"
    script.write_text(MINDSPORE)
    command = (MSRUN.replace("$MASTER_ADDR", "$BOOTSTRAP_MASTER_HOST")
               .format(logs="$BOOTSTRAP_HOME/msrun") + f" --join=True {script}")
    results = run_job(lab, tmp_path, 2, [command], old_contract(lab, 2, port()),
                      extra=engine_env("mindspore"), before=debian_hosts(lab), timeout=300)
    for r in results:
        assert r.code != 0, r.out
        assert "sum=3.0" not in worker_lines(r.home / "msrun")


def test_msrun_without_join_is_waited_for(lab: Lab, tmp_path: Path) -> None:
    """msrun returns 0 at once, its workers in sessions of their own: the job ends when
    they do, with their result (the README's BOOTSTRAP_DETACHED), and none outlives it."""
    script = tmp_path / "ms_allreduce.py"
    script.write_text(MINDSPORE)
    command = MSRUN.format(logs="$BOOTSTRAP_HOME/msrun") + f" {script}"
    results = run_job(lab, tmp_path, 2, [command], old_contract(lab, 2, port()),
                      extra=engine_env("mindspore"), timeout=300)
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err[-3000:]}"
        assert "waiting for them" in r.err, r.err[-2000:]
        assert f"OK rank={r.rank} world=2 sum=3.0" in worker_lines(r.home / "msrun")


OLD_TORCH = r'''
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"OK rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item()} "
      f"torch={torch.__version__}", flush=True)
dist.barrier()
'''


def test_torchrun_c10d_on_the_oldest_torch_that_runs_it(lab: Lab, tmp_path: Path) -> None:
    """torch 1.12.1: its torchrun reads the same PET_* defaults (PET_RDZV_ENDPOINT,
    PET_RDZV_CONF's is_host) but takes only underscored flags and has no --local_addr, so
    its workers find node 0 by its host name (the platform's names resolve)."""
    script = tmp_path / "old_torch.py"
    script.write_text(OLD_TORCH)
    command = ["torchrun", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
               "--rdzv_id=job1", str(script)]
    results = run_job(lab, tmp_path, 2, command, old_contract(lab, 2, port()),
                      extra=engine_env("torch1"), timeout=240)
    assert_every_rank(results, 2, "sum=3.0 torch=1.12.1")


# PaddlePaddle's collective launcher on the CPU (gloo): one all_reduce.
PADDLE = r'''
import paddle
import paddle.distributed as dist
dist.init_parallel_env()
t = paddle.to_tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"OK rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item()}", flush=True)
'''


def test_paddle_launch_on_three_nodes_ranks_in_node_order(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "paddle_allreduce.py"
    script.write_text(PADDLE)
    results = run_job(lab, tmp_path, 3, ["python", "-m", "paddle.distributed.launch",
                                         str(script)], old_contract(lab, 3, port()),
                      extra={**engine_env("paddle"), "PADDLE_LOG_DIR": str(tmp_path / "plog")},
                      timeout=300)
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err[-3000:]}\n{r.out}"
        assert f"OK rank={r.rank} world=3 sum=6.0" in r.out, r.out


def test_paddle_without_the_node_count_runs_each_node_alone(lab: Lab, tmp_path: Path) -> None:
    """The control: PADDLE_NNODES as Paddle defaults it (1), what it saw before."""
    script = tmp_path / "paddle_allreduce.py"
    script.write_text(PADDLE)
    results = run_job(lab, tmp_path, 2, ["python", "-m", "paddle.distributed.launch",
                                         str(script)], old_contract(lab, 2, port()),
                      extra={**engine_env("paddle"), "PADDLE_NNODES": "1",
                             "PADDLE_LOG_DIR": str(tmp_path / "plog")}, timeout=200)
    for r in results:
        assert "world=2" not in r.out and "world=3" not in r.out, r.out
    assert any(r.code != 0 for r in results)


# TensorFlow's MultiWorkerMirroredStrategy: TF_CONFIG names the workers by host name.
TENSORFLOW = r'''
import json, os
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
value = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
    tf.distribute.ReduceOp.SUM, tf.constant(float(index + 1))))
total = strategy.experimental_local_results(value)[0].numpy()
print(f"OK rank={index} world={strategy.num_replicas_in_sync} sum={total}", flush=True)
'''


def test_tensorflow_multi_worker_on_two_nodes(lab: Lab, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="tensorflow-cpu is in the test extras")
    script = tmp_path / "tf_allreduce.py"
    script.write_text(TENSORFLOW)
    results = run_job(lab, tmp_path, 2, ["python", str(script)], old_contract(lab, 2, port()),
                      extra={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=240)
    assert_every_rank(results, 2, "sum=3.0")
    assert [r.out.split("rank=")[1].split()[0] for r in results] == ["0", "1"]


def test_tensorflow_without_tf_config_trains_alone(lab: Lab, tmp_path: Path) -> None:
    """The control: TF_CONFIG as TensorFlow reads an unset one ({}), by hand."""
    pytest.importorskip("tensorflow", reason="tensorflow-cpu is in the test extras")
    script = tmp_path / "tf_allreduce.py"
    script.write_text(TENSORFLOW.replace(
        'json.loads(os.environ["TF_CONFIG"])["task"]["index"]', "0"))
    results = run_job(lab, tmp_path, 2, ["python", str(script)], old_contract(lab, 2, port()),
                      extra={"TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": "{}"}, timeout=240)
    for r in results:
        assert r.code == 0 and "world=1 sum=1.0" in r.out, r.out + r.err[-2000:]
