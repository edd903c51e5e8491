"""MPI-style launch (BOOTSTRAP_LAUNCH=mpi) with the real engine: Open MPI's mpirun on
node 0 reaches the other network-namespace hosts through the bootstrap's own ssh client
and launch agents; no sshd anywhere. A control run without the mode shows mpirun's own
failure."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import (
    Lab,
    NodeResult,
    old_contract,
    port,
    run_job,
    shared_contract,
    signal_node,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

PROGRAM = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size, sum = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    char host[256];
    gethostname(host, sizeof host);
    printf("OK rank=%d size=%d sum=%d host=%s\n", rank, size, sum, host);
    fflush(stdout);
    MPI_Finalize();
    return sum == size * (size + 1) / 2 ? 0 : 3;
}
"""
SECRET = "a-job-secret-only-the-test-knows-0123456789"
ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "BOOTSTRAP_PEER_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def program(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not lab.hosts.real:
        pytest.skip("MPI-style launch needs real hosts (network namespaces)")
    if shutil.which("mpicc") is None or shutil.which("mpirun") is None:
        pytest.skip("Open MPI is not installed (scripts/dev/setup-system.sh installs it)")
    folder = tmp_path_factory.mktemp("mpi")
    (folder / "allreduce.c").write_text(PROGRAM)
    subprocess.run(["mpicc", "-O1", "-o", str(folder / "allreduce"), str(folder / "allreduce.c")],
                   check=True, capture_output=True, timeout=120)
    return folder / "allreduce"


def ok_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("OK rank=")]


def logs(results: list[NodeResult]) -> str:
    return "\n".join(f"--- node {r.rank} (exit {r.code})\n{r.err[-3000:]}\n{r.out[-1500:]}"
                     for r in results)


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**ROOT, "BOOTSTRAP_LAUNCH": "mpi", "BOOTSTRAP_JOB_SECRET": SECRET,
            "BOOTSTRAP_AGENT_PORT": str(port()), **(extra or {})}


@pytest.fixture(autouse=True)
def no_sshd() -> Iterator[None]:
    running = subprocess.run(["pgrep", "-x", "sshd"], capture_output=True).returncode == 0
    assert not running, "an sshd runs on this machine: the proof would not be one"
    yield


def test_mpirun_spans_three_nodes_one_rank_each(lab: Lab, tmp_path: Path,
                                                program: Path) -> None:
    results = run_job(lab, tmp_path, 3, ["mpirun", "-np", "3", str(program)],
                      old_contract(lab, 3, port()), mpi_env(), timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    lines = ok_lines(results[0].out)
    assert len(lines) == 3 and all("size=3 sum=6" in line for line in lines), logs(results)
    hosts = {line.split("host=")[1] for line in lines}
    assert hosts == {lab.hosts.name(i) for i in range(3)}, lines  # one rank per node
    for r in results[1:]:
        assert "started pid" in r.err and "ended with 0" in r.err, logs(results)
        assert "the launcher (node 0) ended with 0; this node exits 0" in r.err
        assert ok_lines(r.out) == []  # the ranks' output is the launcher's, on node 0
    hostfile = (results[0].home / "user-job-dir/.bootstrap-mpi/hostfile").read_text()
    assert hostfile == "".join(f"{lab.hosts.name(i)} slots=1\n" for i in range(3))
    assert SECRET not in "".join(r.err + r.out for r in results)


def test_a_process_an_agent_started_reaches_another_node(lab: Lab, tmp_path: Path,
                                                        program: Path) -> None:
    # What Open MPI's tree spawn does (a daemon on node 1 starting node 2's): a rank on
    # node 1, started through node 1's agent, runs `ssh node-2 ...` (the client is first
    # on its PATH) and node 2's agent serves it, proving node 1's membership.
    inner = f"ssh {lab.hosts.name(2)} hostname"
    argv = ["mpirun", "-np", "1", "--host", lab.hosts.name(1), "sh", "-c", inner]
    contract = old_contract(lab, 3, port())
    results = run_job(lab, tmp_path, 3, argv,
                      lambda i: {**contract(i), "BOOTSTRAP_LOG_FILE": str(tmp_path / f"{i}.log")},
                      mpi_env(), timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    assert results[0].out.strip().splitlines()[-1] == lab.hosts.name(2), logs(results)
    assert "node 1 started pid" in results[2].err, logs(results)  # dialled from node 1
    # What an agent runs is teed into its node's log file, as the command's output is.
    assert (tmp_path / "2.log").read_text().strip() == lab.hosts.name(2)


MPI4PY = r"""
from mpi4py import MPI
import socket, sys
world = MPI.COMM_WORLD
total = world.allreduce(world.Get_rank() + 1)
# One write a line: print() writes the text and its newline apart (unbuffered under the
# bootstrap), and mpirun merges the ranks' streams between them.
sys.stdout.write(f"OK rank={world.Get_rank()} size={world.Get_size()} sum={total} "
                 f"host={socket.gethostname()}\n")
sys.stdout.flush()
"""


def test_mpi4py_over_three_nodes(lab: Lab, tmp_path: Path, program: Path) -> None:
    pytest.importorskip("mpi4py")  # a binary wheel, from the test extras
    results = run_job(lab, tmp_path, 3, ["mpirun", "-np", "3", sys.executable, "-c", MPI4PY],
                      old_contract(lab, 3, port()), mpi_env(), timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    lines = ok_lines(results[0].out)
    assert len(lines) == 3 and all("size=3 sum=6" in line for line in lines), logs(results)
    assert {line.split("host=")[1] for line in lines} == {lab.hosts.name(i) for i in range(3)}


def test_several_ranks_a_host_and_one_agent_per_shared_host(lab: Lab, tmp_path: Path,
                                                            program: Path) -> None:
    # 4 nodes on 2 hosts (the host-network pools): nodes 0, 1 on host 0, nodes 2, 3 on
    # host 1. The hostfile lists each host once with 2 slots; node 2 runs host 1's
    # ranks, node 3 only waits; every node ends with the launcher's code.
    where = [0, 0, 1, 1]
    results = run_job(lab, tmp_path, 4, ["mpirun", "-np", "4", str(program)],
                      shared_contract(lab, 4, port(), where.__getitem__), mpi_env(),
                      timeout=180, where=where.__getitem__)
    assert [r.code for r in results] == [0, 0, 0, 0], logs(results)
    lines = ok_lines(results[0].out)
    assert len(lines) == 4 and all("size=4 sum=10" in line for line in lines), logs(results)
    per_host = sorted(line.split("host=")[1] for line in lines)
    assert per_host == sorted([lab.hosts.name(0)] * 2 + [lab.hosts.name(1)] * 2), lines
    hostfile = (results[0].home / "user-job-dir/.bootstrap-mpi/hostfile").read_text()
    assert hostfile == f"{lab.hosts.name(0)} slots=2\n{lab.hosts.name(1)} slots=2\n"
    assert "started pid" in results[2].err, logs(results)
    assert "started pid" not in results[3].err and "started pid" not in results[1].err


def test_control_without_the_mode_mpirun_cannot_reach_the_nodes(lab: Lab, tmp_path: Path,
                                                                program: Path) -> None:
    # The same job without BOOTSTRAP_LAUNCH=mpi: every node runs mpirun with the job's
    # hostfile, which needs a remote shell the image does not have.
    argv = ["sh", "-c", f'exec mpirun -np 3 --hostfile "$BOOTSTRAP_HOSTFILE" {program}']
    results = run_job(lab, tmp_path, 3, argv, old_contract(lab, 3, port()),
                      {**ROOT, "BOOTSTRAP_BARRIER": "on"}, timeout=180)
    assert results[0].code != 0, logs(results)
    assert ok_lines(results[0].out) == [], logs(results)
    said = results[0].err + results[0].out
    assert "ssh" in said or "rsh" in said, said[-3000:]
    # ... and with the mode, the very same command spans the nodes.
    results = run_job(lab, tmp_path / "with", 3, argv, old_contract(lab, 3, port()),
                      mpi_env(), timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    assert len(ok_lines(results[0].out)) == 3


def test_every_node_ends_with_the_launchers_code(lab: Lab, tmp_path: Path,
                                                 program: Path) -> None:
    argv = ["sh", "-c", f"mpirun -np 3 {program} && exit 7"]
    results = run_job(lab, tmp_path, 3, argv, old_contract(lab, 3, port()), mpi_env(),
                      timeout=180)
    assert [r.code for r in results] == [7, 7, 7], logs(results)
    for r in results[1:]:  # each node's record points to the launcher's
        record = json.loads((r.home / "user-job-dir/failure.json").read_text())
        assert (record["exit_code"], record["reason"]) == (7, "launcher"), record


SLEEPER = ["sh", "-c", "sleep 120"]  # a rank that runs until it is stopped


def wait_for_ranks(count: int) -> None:
    """Until ``count`` sleeper ranks run (on any node)."""
    def running() -> bool:
        ranks = subprocess.run(["pgrep", "-c", "-f", "^sleep 120"], capture_output=True,
                               text=True).stdout.strip()  # the ranks' sleeps, not their shells
        return bool(ranks) and int(ranks) >= count

    wait_until(running, 60, interval=0.5)


def _node_of(pid: str) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "(gone)\n"
    return " ".join(e.decode() for e in env if e.startswith(b"DLS_TASK_INDEX=")) + "\n"


def assert_no_rank_left(pattern: str = "sleep 120") -> None:
    leftover = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    detail = "".join(
        subprocess.run(["ps", "-o", "pid,ppid,pgid,sid,stat,cmd", "-p", pid],
                       capture_output=True, text=True).stdout + _node_of(pid)
        for pid in leftover.stdout.split())
    assert leftover.stdout.strip() == "", f"a rank outlived its node: {detail}"


def test_a_launcher_that_dies_ends_every_agent_within_its_bound(lab: Lab, tmp_path: Path,
                                                                program: Path) -> None:
    # Node 0 dies (every process of it SIGKILLed, as when its container goes) while its
    # remote ranks run; the agents stop those ranks and exit 5 (the barrier's family:
    # another node failed) at once.
    killed_at: list[float] = []

    def kill_node0() -> None:
        wait_for_ranks(3)
        signal_node(tmp_path, 0, signal.SIGKILL, bootstrap_only=False)
        killed_at.append(time.monotonic())

    results = run_job(lab, tmp_path, 3, ["mpirun", "-np", "3", *SLEEPER],
                      old_contract(lab, 3, port()), mpi_env(), timeout=120, during=kill_node0)
    ended = time.monotonic()
    assert killed_at, "node 0 was never seen running"
    assert results[0].code == -signal.SIGKILL or results[0].code == 137, logs(results)
    for r in results[1:]:
        assert r.code == 5, logs(results)
        assert "the launcher (node 0) went away without an exit code" in r.err
    assert ended - killed_at[0] < 45, "the agents outlived the launcher past the grace"
    assert_no_rank_left()


def test_a_stop_of_an_agents_node_ends_the_whole_job(lab: Lab, tmp_path: Path,
                                                     program: Path) -> None:
    # `docker stop` of node 1 (SIGTERM to its bootstrap): it stops its remote ranks and
    # exits 143; mpirun on node 0 loses them and fails; every other node ends with that.
    stopped: list[float] = []

    def stop_node1() -> None:
        wait_for_ranks(3)
        signal_node(tmp_path, 1, signal.SIGTERM, bootstrap_only=True)
        stopped.append(time.monotonic())

    results = run_job(lab, tmp_path, 3, ["mpirun", "-np", "3", *SLEEPER],
                      old_contract(lab, 3, port()),
                      mpi_env({"BOOTSTRAP_GRACE_SECONDS": "5"}), timeout=120,
                      during=stop_node1)
    ended = time.monotonic()
    assert stopped, "node 1 was never seen running"
    assert results[1].code == 143, logs(results)
    assert results[0].code != 0, logs(results)
    assert results[2].code == results[0].code, logs(results)
    assert ended - stopped[0] < 60, logs(results)
    assert_no_rank_left()


HANGER = "import time\ndef wait_forever():\n    time.sleep(600)\nwait_forever()\n"


def test_a_hang_dumps_the_stacks_of_every_nodes_ranks(lab: Lab, tmp_path: Path,
                                                      program: Path) -> None:
    # Three Python ranks, one a node, all stuck and silent. Node 0's watchdog sees no
    # progress (the ranks' output would reach it through mpirun) and asks each agent for
    # its ranks' stacks: the stacks file names every node's rank and where it is stuck.
    # Before, only node 0's own rank answered (the agents' commands had no hook).
    results = run_job(lab, tmp_path, 3, ["mpirun", "-np", "3", sys.executable, "-c", HANGER],
                      old_contract(lab, 3, port()),
                      mpi_env({"BOOTSTRAP_HANG_SECONDS": "4", "BOOTSTRAP_GRACE_SECONDS": "5"}),
                      timeout=180)
    assert [r.code for r in results] == [124, 124, 124], logs(results)
    stacks = (results[0].home / "user-job-dir/hang-stacks.txt").read_text()
    blocks = [b for b in stacks.split("--- ")[1:] if "wait_forever" in b]
    assert sorted(b.split(" pid ")[0].strip() if b.startswith("node ") else "node 0"
                  for b in blocks) == ["node 0", "node 1", "node 2"], stacks
    for r in results[1:]:  # each node keeps its own ranks' stacks, and says so
        assert "wait_forever" in (r.home / "user-job-dir/hang-stacks.txt").read_text()
        assert "hang: node 0's watchdog saw no progress" in r.err, logs(results)
    assert_no_rank_left("wait_forever")


def test_pdsh_as_deepspeeds_runner_calls_it_reaches_every_host(lab: Lab, tmp_path: Path,
                                                              program: Path) -> None:
    # DeepSpeed's default multi-node runner: `pdsh -S -f 1024 -w <every host> CMD` with
    # %n the host's index, node 0's own host in the list. pdsh's ssh module runs `ssh`
    # from PATH (the client), with its own flags (-2 -A -x -l<user>); node 0, which has
    # no agent, runs its share here.
    if shutil.which("pdsh") is None:
        pytest.skip("pdsh is not installed (scripts/dev/setup-system.sh installs it)")
    hosts = ",".join(lab.hosts.name(i) for i in range(3))
    argv = ["pdsh", "-S", "-f", "1024", "-w", hosts, "echo OK rank=%n host=$(hostname)"]
    results = run_job(lab, tmp_path, 3, argv, old_contract(lab, 3, port()), mpi_env(),
                      timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    said = sorted(line.split(": ", 1)[1] for line in results[0].out.splitlines()
                  if ": OK rank=" in line)
    assert said == [f"OK rank={i} host={lab.hosts.name(i)}" for i in range(3)], logs(results)
    for r in results[1:]:
        assert "started pid" in r.err, logs(results)


def test_open_mpis_tree_spawn_goes_through_the_agents(lab: Lab, tmp_path: Path,
                                                      program: Path) -> None:
    # Tree spawn (a radix-1 routing tree: node 0 -> node 1 -> node 2): mpirun starts
    # node 1's orted, and that orted starts node 2's through the client on node 1. The
    # proof is node 2's orted itself: its parent (orte_parent_uri) is daemon 1.
    seen: list[str] = []

    def catch_node2s_orted() -> None:
        found = wait_until(lambda: subprocess.run(
            ["pgrep", "-af", "^(\\S*/)?orted .*ess_base_vpid \"?2\"? "],
            capture_output=True, text=True).stdout.splitlines(), 60, interval=0.1)
        seen.extend(found)

    argv = ["mpirun", "--mca", "plm_rsh_no_tree_spawn", "0", "--mca", "routed", "radix",
            "--mca", "routed_radix", "1", "-np", "3", "sh", "-c", "sleep 4"]
    results = run_job(lab, tmp_path, 3, argv, old_contract(lab, 3, port()), mpi_env(),
                      timeout=180, during=catch_node2s_orted)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    assert seen, "node 2's orted was never seen"
    # Launched by mpirun, an orted has no parent daemon: the control (tree spawn off).
    assert "orte_parent_uri" in seen[0], seen[0]
    parent = seen[0].split("orte_parent_uri", 1)[1].split(";", 1)[0]
    assert parent.strip(' "').endswith(".1"), seen[0]  # daemon 1 spawned it, not mpirun


@pytest.mark.parametrize("mode", ["mpi", "off"])
def test_mpichs_hydra_spans_the_nodes_with_a_plain_mpiexec(lab: Lab, tmp_path: Path,
                                                           program: Path, mode: str) -> None:
    # MPICH's launcher reads HYDRA_HOST_FILE and HYDRA_LAUNCHER(_EXEC): `mpiexec.hydra -np 3
    # prog` spans the 3 nodes through the client. Control ("off", no mode): the same
    # command finds no hostfile and runs every rank on node 0.
    if shutil.which("mpicc.mpich") is None or shutil.which("mpiexec.hydra") is None:
        pytest.skip("MPICH is not installed (scripts/dev/setup-system.sh installs it)")
    (tmp_path / "allreduce.c").write_text(PROGRAM)
    built = tmp_path / "allreduce-mpich"
    subprocess.run(["mpicc.mpich", "-O1", "-o", str(built), str(tmp_path / "allreduce.c")],
                   check=True, capture_output=True, timeout=120)
    env = mpi_env() if mode == "mpi" else dict(ROOT)
    results = run_job(lab, tmp_path, 3, ["mpiexec.hydra", "-np", "3", str(built)],
                      old_contract(lab, 3, port()), env, timeout=180)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    lines = ok_lines(results[0].out)
    assert len(lines) == 3 and all("size=3 sum=6" in line for line in lines), logs(results)
    hosts = {line.split("host=")[1] for line in lines}
    if mode == "mpi":
        assert hosts == {lab.hosts.name(i) for i in range(3)}, lines
        assert all("started pid" in r.err for r in results[1:]), logs(results)
    else:
        assert hosts == {lab.hosts.name(0)}, lines  # without the mode: node 0 only


TORCH_ALLREDUCE = r"""
import socket
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1])
dist.all_reduce(total)
print(f"OK rank={dist.get_rank()} size={dist.get_world_size()} sum={int(total)} "
      f"host={socket.gethostname()}", flush=True)
dist.destroy_process_group()
"""


def test_deepspeeds_own_launcher_over_three_nodes(lab: Lab, tmp_path: Path,
                                                  program: Path) -> None:
    # The command line a DeepSpeed user already has: `deepspeed --hostfile H train.py`.
    # Its runner checks ssh to the first host, asks it for its address, then runs pdsh
    # over every host (node 0's own included) to start deepspeed.launcher.launch, which
    # starts the script with RANK/WORLD_SIZE/MASTER_ADDR; the script allreduces on gloo.
    pytest.importorskip("deepspeed")  # scripts/dev/setup-dev.sh installs it (test extra)
    if shutil.which("pdsh") is None:
        pytest.skip("pdsh is not installed (scripts/dev/setup-system.sh installs it)")
    (tmp_path / "train.py").write_text(TORCH_ALLREDUCE)
    runner = Path(sys.executable).parent / "deepspeed"
    line = f'{runner} --hostfile "$BOOTSTRAP_MPI_HOSTFILE" --master_port {port()} train.py'
    results = run_job(lab, tmp_path, 3, ["sh", "-c", f"cd {tmp_path} && {line}"],
                      old_contract(lab, 3, port()), mpi_env(), timeout=240)
    assert [r.code for r in results] == [0, 0, 0], logs(results)
    said = sorted(line.split(": ", 1)[1] for line in results[0].out.splitlines()
                  if ": OK rank=" in line)
    assert said == [f"OK rank={i} size=3 sum=6 host={lab.hosts.name(i)}" for i in range(3)], \
        logs(results)
