"""The engines as their users type them, one command for every node, on network-namespace
hosts whose names resolve only through /etc/hosts (as Volcano's DNS names do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import Lab, NodeResult, old_contract, port, run_job

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
L.Trainer(num_nodes=2, devices=1, accelerator="cpu", strategy="ddp", max_steps=2,
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
acc.wait_for_everyone()  # the ranks leave together: rank 0 hosts the store (see tests/lab.py)
acc.end_training()
'''


def test_lightning_on_two_nodes(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "lightning_train.py"
    script.write_text(LIGHTNING)
    results = run_job(lab, tmp_path, 2, ["python", str(script)], old_contract(lab, 2, port()),
                      timeout=240)
    assert_every_rank(results, 2, "sum=3.0")
    assert [r.out.split("rank=")[1].split()[0] for r in results] == ["0", "1"]


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
