"""The benchmark keeps working: its smoke mode (tiny data sets, one repetition) runs
end to end, verifies every tree and prints the ratio table. Timings are not judged
here: a benchmark is a script, not a timed unit test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)


def test_benchmark_smoke(tmp_path: Path) -> None:
    scratch = tmp_path / "smoke" / "out" / "scratch"  # bench.run.scratch's mount point
    try:
        r = subprocess.run([sys.executable, str(REPO / "bench/run.py"), "--smoke", "--data",
                            str(tmp_path)], capture_output=True, text=True, timeout=600)
        assert not os.path.ismount(scratch), "the outputs' file system is still mounted"
    finally:
        if os.path.ismount(scratch):  # a killed run's: taken down by its mount point
            subprocess.run(["umount", "--detach-loop", str(scratch)], check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not (tmp_path / "smoke" / "out" / "scratch.img").exists()
    assert "ratio to s5cmd" in r.stdout and "start-up:" in r.stdout
    path = r.stdout.strip().splitlines()[-1].split("results: ")[1]
    data = json.loads(Path(path).read_text())
    assert set(data["results"]) == {"small2k", "large4x64", "mixed1g"}
    for name in ("small2k", "large4x64"):
        row = data["results"][name]
        assert {"bootstrap", "s5cmd", "boto3-pool", "boto3-fallback"} <= set(row)
        assert row["bootstrap"]["cpu_ms_per_object"] > 0
    assert set(data["results"]["mixed1g"]) == {"staging", "bootstrap", "s5cmd"}
    assert data["results"]["mixed1g"]["staging"]["cpu_ms_per_object"] > 0
    both = data["overlap"]  # code and data at once: the stages overlap
    assert 0 < both["longest_s"] <= both["sum_s"]
    assert set(data["uploads"]) == {"small2k upload", "large4x64 upload"}
    for row in data["uploads"].values():
        assert {"bootstrap", "s5cmd"} <= set(row)
    assert set(data["latency"]) == {f"{name} +{d} ms" for name in ("small2k", "large4x64")
                                    for d in (0, 5, 15, 30)}
    assert "uploads: ratio to s5cmd" in r.stdout and "latency mode" in r.stdout
    if os.geteuid() == 0 and Path("/dev/loop-control").exists():  # as on the CI machine
        assert data["outputs"].startswith("a journaled ext4"), data["outputs"]


# bench/run.py as bench/device.sh runs it on a lent device machine: a Python without
# boto3 (nor tenacity, which the previous engine's row needs) and no GNU time.
DEVICE_LIKE = """
import importlib.machinery, importlib.util, sys
class Hidden(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("boto3", "botocore", "tenacity"):
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
spec = importlib.util.spec_from_file_location("bench_run", sys.argv[1])
run = sys.modules["bench_run"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
run.GNU_TIME = "/nonexistent/time"
sys.argv = sys.argv[1:]
sys.exit(run.main())
"""


def test_benchmark_runs_where_the_device_kit_runs_it(tmp_path: Path) -> None:
    """``--downloads-only`` with no boto3 and no GNU time: the bucket made with s5cmd,
    the contenders that need boto3 or tenacity left out (not failed), CPU from rusage."""
    scratch = tmp_path / "smoke" / "out" / "scratch"
    try:
        r = subprocess.run([sys.executable, "-c", DEVICE_LIKE, str(REPO / "bench/run.py"),
                            "--smoke", "--downloads-only", "--only", "large4x64", "--data",
                            str(tmp_path)], capture_output=True, text=True, timeout=600)
    finally:
        if os.path.ismount(scratch):
            subprocess.run(["umount", "--detach-loop", str(scratch)], check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    path = r.stdout.strip().splitlines()[-1].split("results: ")[1]
    data = json.loads(Path(path).read_text())
    row = data["results"]["large4x64"]
    assert {"bootstrap", "s5cmd", "s5cmd+md5sum"} <= set(row)
    assert not {"boto3-pool", "boto3-fallback", "lean-py"} & set(row)
    assert row["bootstrap"]["cpu_ms_per_object"] > 0  # rusage, not GNU time
    assert data["uploads"] == {} and data["latency"] == {} and data["overlap"] == {}
    assert "uploads: ratio" not in r.stdout and "start-up:" in r.stdout


def test_peer_fanout_simulation_runs_and_separates_the_designs() -> None:
    """bench/peer_sim.py (issue #16's design study) keeps running; its model must show
    the store-only design growing with the node count and a tree asking for one copy."""
    r = subprocess.run([sys.executable, str(REPO / "bench/peer_sim.py"), "--nodes", "4,64"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {int(cols[0]): cols for cols in (line.split() for line in r.stdout.splitlines())
            if cols and cols[0].isdigit()}
    store_4, store_64 = float(rows[4][1]), float(rows[64][1])
    assert store_64 > 10 * store_4  # every node asks the store: linear in the nodes
    assert int(rows[64][2]) == 64 * 2000 and int(rows[64][7]) == 2000  # GETs: N copies vs one
    assert float(rows[64][4]) < store_64 / 10  # tree-4 near node 0's own fetch time


def test_relay_hop_measures_a_parent_serving_children() -> None:
    """bench/relay_hop.py (the per-hop costs that chose the fan-out) keeps running with
    the real relay: every child gets every file verified, and it prints the model's
    calibration."""
    r = subprocess.run([sys.executable, str(REPO / "bench/relay_hop.py"), "--files", "50",
                        "--big-mib", "4", "--kids", "1", "2", "--port", "29791"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    model = r.stdout.strip().splitlines()[-1]
    assert model.startswith("model: python bench/peer_sim.py --peer-file-us "), r.stdout
    assert "k=2 vs k=1" in r.stdout
