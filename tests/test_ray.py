"""Ray mode (BOOTSTRAP_LAUNCH=ray) with the real Ray on network-namespace hosts: one run
command, the driver's, typed once for every node. Node 0 starts the head, the others
join through the launch agents, a plain ray.init() finds the cluster; tasks pinned to
every node report back. Without the mode, each node's ray.init() is a cluster of one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_error_line
from tests.support.lab import Lab, NodeResult, old_contract, port, run_job, signal_node
from tests.support.wait import wait_until

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

SECRET = "a-ray-secret-only-the-test-knows-0123456789"
# The driver as Ray's docs have it: ray.init() with no argument. One task per node
# (STRICT_SPREAD), each reporting its node's rank and host name.
DRIVER = r'''
import os, socket, sys
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]
want = int(os.environ.get("NNODES", "1"))
pg = placement_group([{"CPU": 1}] * want, strategy="STRICT_SPREAD")
ray.get(pg.ready(), timeout=float(os.environ.get("PG_WAIT", "60")))

@ray.remote(num_cpus=1)
def where():
    return int(os.environ.get("NODE_RANK", "0")), socket.gethostname()

got = ray.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(want)])
print(f"OK world={len(nodes)} sum={sum(r for r, _ in got)} "
      f"hosts={','.join(sorted(h for _, h in got))} "
      f"auth={os.environ.get('RAY_AUTH_MODE')}", flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
'''


@pytest.fixture(scope="module")
def driver(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not lab.hosts.real:
        pytest.skip("Ray mode needs real hosts (network namespaces)")
    if shutil.which("ray", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("ray is not installed in .venv (scripts/dev/setup-dev.sh installs it)")
    path = tmp_path_factory.mktemp("ray") / "driver.py"
    path.write_text(DRIVER)
    return path


def ray_job(lab: Lab, tmp_path: Path, n: int, argv: list[str],
            extra: dict[str, str] | None = None) -> list[NodeResult]:
    base = port()
    env = {"BOOTSTRAP_LAUNCH": "ray", "BOOTSTRAP_JOB_SECRET": SECRET,
           "BOOTSTRAP_PEER_TIMEOUT": "120", "BOOTSTRAP_GRACE_SECONDS": "15",
           "BOOTSTRAP_AGENT_PORT": str(base + 10), "BOOTSTRAP_RAY_PORT": str(base + 30),
           "RAY_object_store_memory": str(100 * 1024 * 1024), **(extra or {})}
    return run_job(lab, tmp_path, n, argv, old_contract(lab, n, base), extra=env, timeout=400)


def test_one_command_forms_the_cluster_and_every_node_runs_a_task(lab: Lab, tmp_path: Path,
                                                                   driver: Path) -> None:
    results = ray_job(lab, tmp_path, 2, ["python", str(driver)])
    for r in results:
        assert r.code == 0, f"node {r.rank} exited {r.code}:\n{r.err[-4000:]}"
    out = results[0].out
    assert "OK world=2 sum=1 hosts=node-0,node-1 auth=token" in out, out
    assert "OK" not in results[1].out  # the driver runs on node 0 only
    assert "ray: 2 node(s) in the cluster" in results[0].err
    # The token (derived from the job secret, in a 0600 file on every node) is never
    # printed or logged, and neither is the secret.
    for r in results:
        token_file = r.home / "user-job-dir" / ".bootstrap-ray" / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert len(token) == 64 and token == (results[0].home / "user-job-dir" /
                                               ".bootstrap-ray" / "token").read_text().strip()
        for text in (r.out, r.err, *(p.read_text(errors="replace")
                                      for p in r.home.rglob("*.log") if p.is_file())):
            assert SECRET not in text and token not in text


def test_every_node_ends_with_the_drivers_code(lab: Lab, tmp_path: Path, driver: Path) -> None:
    results = ray_job(lab, tmp_path, 2, ["python", str(driver), "3"])
    assert [r.code for r in results] == [3, 3], [r.err[-2000:] for r in results]
    assert "OK world=2" in results[0].out


def test_without_the_mode_each_node_is_a_cluster_of_one(lab: Lab, tmp_path: Path,
                                                        driver: Path) -> None:
    """The control: the same command, no mode. ray.init() starts a local cluster on each
    node, and the placement group over two nodes never fits (its wait times out)."""
    results = run_job(lab, tmp_path, 2, ["python", str(driver)], old_contract(lab, 2, port()),
                      extra={"RAY_object_store_memory": str(100 * 1024 * 1024), "PG_WAIT": "10",
                             "RAY_USAGE_STATS_ENABLED": "0"}, timeout=300)
    for r in results:
        assert r.code != 0 and "OK world=2" not in r.out, r.out
        assert "GetTimeoutError" in r.err, r.err[-3000:]


def test_a_taken_ray_port_on_node_0_stops_every_node_with_one_line(lab: Lab, tmp_path: Path,
                                                                   driver: Path) -> None:
    base = port()
    gcs = base + 30  # BOOTSTRAP_RAY_PORT as ray_job sets it: node 0's GCS port
    holder = lab.hosts.spawn(0, [sys.executable, "-c",
                                 "import socket, time; s = socket.socket(); "
                                 "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                 f"s.bind(('', {gcs})); s.listen(); print('held', flush=True); "
                                 "time.sleep(300)"], dict(os.environ))
    try:
        assert holder.stdout is not None and "held" in holder.stdout.readline()
        env = {"BOOTSTRAP_LAUNCH": "ray", "BOOTSTRAP_JOB_SECRET": SECRET,
               "BOOTSTRAP_PEER_TIMEOUT": "60", "BOOTSTRAP_AGENT_PORT": str(base + 10),
               "BOOTSTRAP_RAY_PORT": str(gcs)}
        results = run_job(lab, tmp_path, 2, ["python", str(driver)],
                          old_contract(lab, 2, base), extra=env, timeout=200)
    finally:
        holder.kill()
        holder.wait()
    assert [r.code for r in results] == [5, 5], [r.err[-1500:] for r in results]
    assert_one_error_line(results[0].err, f"port {gcs}", "taken", "BOOTSTRAP_RAY_PORT")
    assert not any("OK" in r.out for r in results)
    for pattern in (f"--port={gcs}", "raylet", "gcs_server"):  # no Ray process left
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", (pattern, left.stdout)


# A driver that watches the cluster: it says when both nodes are in, then waits until one
# is gone and reports how many are left.
WATCHER = r'''
import os, sys, time
import ray
ray.init()
def alive():
    return sum(1 for n in ray.nodes() if n["Alive"])
open(sys.argv[1], "w").write(str(alive()))
deadline = time.monotonic() + 120
while alive() > 1 and time.monotonic() < deadline:
    time.sleep(0.5)
print(f"OK left={alive()}", flush=True)
'''


def test_a_node_that_dies_is_reported_and_the_driver_decides(lab: Lab, tmp_path: Path,
                                                             driver: Path) -> None:
    """Node 1 is stopped (SIGTERM to its bootstrap, `docker stop`) while the driver runs:
    its agent stops its Ray worker, node 0's log names the lost node, and the driver,
    which Ray lets go on with the nodes it has, decides the job's code."""
    script, ready = tmp_path / "watcher.py", tmp_path / "ready"
    script.write_text(WATCHER)

    def stop_node_1() -> None:
        wait_until(ready.exists, 200, interval=0.2)
        assert ready.exists() and ready.read_text() == "2"
        signal_node(tmp_path, 1, signal.SIGTERM, bootstrap_only=True)

    base = port()
    env = {"BOOTSTRAP_LAUNCH": "ray", "BOOTSTRAP_JOB_SECRET": SECRET,
           "BOOTSTRAP_PEER_TIMEOUT": "120", "BOOTSTRAP_GRACE_SECONDS": "15",
           "BOOTSTRAP_AGENT_PORT": str(base + 10), "BOOTSTRAP_RAY_PORT": str(base + 30),
           "RAY_object_store_memory": str(100 * 1024 * 1024)}
    results = run_job(lab, tmp_path, 2, ["python", str(script), str(ready)],
                      old_contract(lab, 2, base), extra=env, timeout=400, during=stop_node_1)
    assert results[1].code == 143, results[1].err[-2000:]
    assert results[0].code == 0, results[0].err[-3000:]
    assert "OK left=1" in results[0].out
    assert "ray: node 1's worker ended" in results[0].err
