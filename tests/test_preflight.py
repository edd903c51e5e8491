"""GPU and node preflight: every check through the fake NVML, the real no-GPU path, an
NVML that never answers, the ``check`` command, and what the engines are handed."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest

from bootstrap.config.settings import load_preflight
from bootstrap.node import gpu, preflight
from tests.conftest import (
    HEALTHY,
    assert_one_error_line,
    base_env,
    fake_env,
    record,
    run_train,
)
from tests.support import fake_nvml


def test_fake_nvml_mirrors_pynvml() -> None:
    """Every name the fake offers exists in the real bindings with the same value or
    the same parameters, so the fake cannot drift into an API that does not exist."""
    for name, value in vars(fake_nvml).items():
        if name.startswith(("NVML_", "nvmlClocks")):
            assert getattr(pynvml, name) == value, name
        elif name.startswith("nvml") and callable(value):
            real = getattr(pynvml, name)
            assert list(inspect.signature(real).parameters)[:2] == \
                list(inspect.signature(value).parameters)[:2], name
        elif name.startswith("NVMLError_"):
            assert issubclass(getattr(pynvml, name), pynvml.NVMLError), name
    assert isinstance(fake_nvml.NVMLError(18), fake_nvml.NVMLError_LibRmVersionMismatch)
    assert isinstance(pynvml.NVMLError(18), pynvml.NVMLError_LibRmVersionMismatch)


def report(scenario: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           **env: str) -> preflight.Report:
    monkeypatch.setenv("FAKE_NVML", json.dumps(scenario))
    full = {"BOOTSTRAP_NVML_MODULE": "tests.support.fake_nvml", "FAKE_NVML": json.dumps(scenario),
            "BOOTSTRAP_CACHE_DIR": str(tmp_path / "no-cache"), **env}
    return preflight.run(load_preflight(full), tmp_path, "ib0")


def levels(rep: preflight.Report) -> dict[str, str]:
    return {f.check: f.level for f in rep.findings if f.level != "ok"}


def test_healthy_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rep = report(HEALTHY, monkeypatch, tmp_path, BOOTSTRAP_EXPECT_GPUS="8",
                 BOOTSTRAP_MIN_NOFILE="0", BOOTSTRAP_MIN_DISK_GB="0", BOOTSTRAP_MIN_SHM_MB="0",
                 BOOTSTRAP_MIN_MEMORY_GB="0")
    assert rep.ok and rep.gpu_count == 8 and levels(rep) == {}
    text = "\n".join(rep.lines())
    assert "8 GPU(s), driver 550.54.15, CUDA 12.4 supported" in text
    assert "GPU7 NVIDIA H100 80GB HBM3" in text and "PCIe gen5 x16/x16" in text


@pytest.mark.parametrize("gpu0, check, level", [
    ({"ecc": 2}, "gpu.ecc", "fail"),
    ({"remap_failed": 1}, "gpu.remap", "fail"),
    ({"retired_pending": 1}, "gpu.pending", "warn"),
    ({"remap_pending": 1}, "gpu.pending", "warn"),
    ({"processes": 1}, "gpu.busy", "fail"),
    ({"memory_used": 70 * 2**30}, "gpu.busy", "fail"),
    ({"pcie_width": 8}, "gpu.pcie", "warn"),
    ({"throttle": 0x40}, "gpu.throttle", "warn"),
    ({"throttle": 0x80}, "gpu.throttle", "warn"),
    ({"ecc": "unsupported", "remap_pending": "unsupported"}, None, None),
])
def test_gpu_health_findings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             gpu0: dict[str, Any], check: str | None, level: str | None) -> None:
    scenario = {**HEALTHY, "gpus": [gpu0] + [{}] * 7}
    rep = report(scenario, monkeypatch, tmp_path, BOOTSTRAP_FATAL_CHECKS="")
    gpu_levels = {c: v for c, v in levels(rep).items() if c.startswith("gpu.")}
    assert gpu_levels == ({check: level} if check else {})
    if check:
        assert any("GPU0" in f.message for f in rep.findings if f.check == check)


def test_fatal_set_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scenario = {**HEALTHY, "gpus": [{"pcie_width": 4}, {"ecc": 1}]}
    rep = report(scenario, monkeypatch, tmp_path, BOOTSTRAP_FATAL_CHECKS="gpu.pcie")
    assert levels(rep)["gpu.pcie"] == "fail" and levels(rep)["gpu.ecc"] == "warn"
    rep = report(scenario, monkeypatch, tmp_path, BOOTSTRAP_FATAL_CHECKS="none")
    assert rep.ok
    with pytest.raises(Exception, match="unknown checks"):
        report(scenario, monkeypatch, tmp_path, BOOTSTRAP_FATAL_CHECKS="gpu.nope")


def test_count_honours_visible_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rep = report(HEALTHY, monkeypatch, tmp_path, BOOTSTRAP_EXPECT_GPUS="8")
    assert "gpu.count" not in levels(rep)
    rep = report(HEALTHY, monkeypatch, tmp_path, MA_NUM_GPUS="8", CUDA_VISIBLE_DEVICES="0,3")
    assert levels(rep)["gpu.count"] == "fail"
    assert [g.index for g in rep.inventory.gpus] == [0, 3] and rep.inventory.hidden == 6
    rep = report(HEALTHY, monkeypatch, tmp_path, CUDA_VISIBLE_DEVICES="GPU-00000005")
    assert [g.index for g in rep.inventory.gpus] == [5]
    rep = report(HEALTHY, monkeypatch, tmp_path, CUDA_VISIBLE_DEVICES="")
    assert rep.gpu_count == 0
    rep = report(HEALTHY, monkeypatch, tmp_path, NVIDIA_VISIBLE_DEVICES="none")
    assert rep.gpu_count == 0


def test_visible_parsing_stops_like_cuda() -> None:
    uuids = [f"GPU-{i}aaa" for i in range(4)]
    assert gpu.visible("2,bogus,1", None, 4, uuids) == [2]
    assert gpu.visible("1,1", None, 4, uuids) == [1]
    assert gpu.visible(None, None, 4, uuids) is None


def test_image_cuda_newer_than_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rep = report(HEALTHY, monkeypatch, tmp_path, CUDA_VERSION="12.8.1")
    assert levels(rep)["gpu.cuda"] == "fail"
    assert "12.8.1 is newer than the driver supports (12.4)" in \
        next(f.message for f in rep.findings if f.check == "gpu.cuda")
    rep = report(HEALTHY, monkeypatch, tmp_path, CUDA_VERSION="12.2.0")
    assert "gpu.cuda" not in levels(rep)


@pytest.mark.parametrize("mode, expect_cpu, check", [
    ("missing", True, None), ("no-driver", True, None), ("mismatch", False, "gpu.nvml")])
def test_nvml_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str,
                     expect_cpu: bool, check: str | None) -> None:
    rep = report({"mode": mode}, monkeypatch, tmp_path)
    assert rep.inventory.nvml is not expect_cpu
    if check:
        assert levels(rep)[check] == "fail"
        assert "version mismatch" in "\n".join(rep.lines())
    else:
        assert "CPU-only" in rep.lines()[0]
    rep = report({"mode": mode}, monkeypatch, tmp_path, BOOTSTRAP_REQUIRE_GPU="1")
    assert not rep.ok


def test_node_thresholds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    rep = report(HEALTHY, monkeypatch, tmp_path, BOOTSTRAP_MIN_SHM_MB="100000000",
                 BOOTSTRAP_MIN_DISK_GB="1e9", BOOTSTRAP_MIN_CACHE_GB="1e9",
                 BOOTSTRAP_MIN_MEMORY_GB="1e9", BOOTSTRAP_MIN_NOFILE="100000000",
                 BOOTSTRAP_CACHE_DIR=str(cache), BOOTSTRAP_FATAL_CHECKS="node.shm")
    got = levels(rep)
    assert got["node.shm"] == "fail" and "bus error" in "\n".join(rep.lines())
    for check in ("node.disk", "node.cache", "node.memory", "node.nofile"):
        assert got[check] == "warn", check


# ------------------------------------------------------------------ through the entrypoint

def show_env(*names: str) -> list[str]:
    return ["python", "-c", "import json,os; print(json.dumps({k: os.environ.get(k) for k in "
            f"{list(names)!r}}}))"]


def test_job_gets_the_gpu_count(home: Path) -> None:
    env = base_env(home, {**fake_env(HEALTHY), "BATCH_job.0_HOSTS": "localhost:6000"})
    r = run_train(show_env("PET_NPROC_PER_NODE", "BOOTSTRAP_NUM_GPUS"), env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"PET_NPROC_PER_NODE": "8", "BOOTSTRAP_NUM_GPUS": "8"}
    assert (home / "user-job-dir" / "hostfile").read_text() == "localhost slots=8\n"
    saved = json.loads((home / "user-job-dir" / "preflight.json").read_text())
    assert saved["ok"] and saved["gpu_count"] == 8


def test_failing_node_exits_4_before_the_command(home: Path) -> None:
    scenario = {**HEALTHY, "gpus": [{}, {"ecc": 3}]}
    r = run_train(["python", "-c", "print('must not run')"], base_env(home, fake_env(scenario)))
    assert r.returncode == 4
    assert "must not run" not in r.stdout
    assert_one_error_line(r.stderr, "gpu.ecc", "GPU1", "3 volatile uncorrected ECC")
    assert "FAIL gpu.ecc" in r.stderr  # the report says it too


def test_nvml_mismatch_is_reported_not_a_traceback(home: Path) -> None:
    r = run_train(["true"], base_env(home, fake_env({"mode": "mismatch"})))
    assert r.returncode == 4
    assert_one_error_line(r.stderr, "version mismatch")


def test_real_no_gpu_path_runs_cpu_only(home: Path) -> None:
    """No fake: this machine's real pynvml finds no NVML library; the job runs anyway."""
    r = run_train(["python", "-c", "print('trained')"], base_env(home))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "trained\n"
    assert "this node runs CPU-only" in r.stderr
    r = run_train(["true"], base_env(home, {"BOOTSTRAP_REQUIRE_GPU": "1"}))
    assert r.returncode == 4
    assert_one_error_line(r.stderr, "BOOTSTRAP_REQUIRE_GPU=1")


def test_check_command(home: Path) -> None:
    # The host's own disk, memory and limits must not add warnings of their own: the count
    # below is the fake GPU's alone (CI's disk once had 30.7 GB free, under the 32 GB bar).
    host = {"BOOTSTRAP_MIN_DISK_GB": "0", "BOOTSTRAP_MIN_CACHE_GB": "0",
            "BOOTSTRAP_MIN_SHM_MB": "0", "BOOTSTRAP_MIN_MEMORY_GB": "0",
            "BOOTSTRAP_MIN_NOFILE": "0"}
    env = base_env(home, {**fake_env({**HEALTHY, "gpus": [{"pcie_width": 8}]}), **host})
    cmd = [sys.executable, "-m", "bootstrap", "check"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "warn gpu.pcie: GPU0 PCIe link is x8 of x16" in r.stdout
    # The facts as a table an operator reads: one row each, the findings under them.
    lines = r.stdout.splitlines()
    rows = {ln.split()[0] for ln in lines[1:lines.index("findings:")]}
    assert rows == {"GPUs", "driver", "disk", "/cache", "/dev/shm", "memory", "nofile",
                    "memlock", "IB"}, r.stdout
    assert lines[0] == "node:"
    assert next(ln for ln in lines if ln.split()[0] == "GPUs").split()[1:3] == ["1", "x"]
    assert any(ln.startswith("verdict: ok, 1 warning(s)") for ln in lines), r.stdout
    r = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=60)
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["inventory"]["gpus"][0]["pcie_width"] == 8
    env = base_env(home, {**fake_env({**HEALTHY, "gpus": [{"processes": 2}]}), **host})
    r = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and json.loads(r.stdout)["ok"] is False
    r = subprocess.run([*cmd, "--bogus"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "--bogus")
    console = Path(sys.executable).parent / "bootstrap-check"
    r = subprocess.run([str(console)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "FAIL gpu.busy" in r.stdout


def test_a_hung_nvml_fails_the_preflight_within_its_timeout(home: Path) -> None:
    env = base_env(home, fake_env({"mode": "hang-init"}, BOOTSTRAP_PREFLIGHT_TIMEOUT="2"))
    started = time.monotonic()
    r = run_train(["python", "-c", "print('must not run')"], env, timeout=60)
    assert r.returncode == 4, r.stderr
    assert time.monotonic() - started < 15
    assert "nvmlInit never returned" in r.stderr and "must not run" not in r.stdout
    rec = record(home)  # stopped before the command: the record says so all the same
    assert (rec["reason"], rec["category"], rec["exit_code"]) == \
        ("preflight", "infrastructure", 4)
    assert "nvmlInit never returned" in rec["evidence"]


def test_the_cuda_compat_driver_is_found_by_its_libcuda(tmp_path: Path) -> None:
    """The forward-compatibility driver counts when a libcuda.so* is in its folder; an
    absent folder, or one with other files only, does not."""
    from bootstrap.node import resources

    compat = tmp_path / "compat"
    assert not resources._has_compat_libcuda(str(compat))
    compat.mkdir()
    (compat / "libnvidia-ptxjitcompiler.so.1").write_bytes(b"")
    assert not resources._has_compat_libcuda(str(compat))
    (compat / "libcuda.so.550.54.15").write_bytes(b"")
    assert resources._has_compat_libcuda(str(compat))
