"""The failure diagnosis with real processes: how a command ended (an exception, an exit
code, NCCL's words, a signal, the OOM killer, a GPU's Xid through the NVML fake) is
classified in the failure record and in the log's last line."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import HEALTHY, base_env, fake_env, record, run_train
from tests.support.wait import wait_until


@pytest.mark.parametrize("script, reason, category, evidence", [
    ("raise ValueError('bad lr 0.0')", "exception", "user", "ValueError: bad lr 0.0"),
    ("import sys; sys.exit(3)", "exit", "user", "the command exited 3"),
    ("import sys; print('NCCL WARN Call to connect returned Connection refused', "
     "file=sys.stderr); sys.exit(1)", "nccl", "infrastructure", "NCCL WARN"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "signal", "infrastructure",
     "killed by SIGSEGV"),
])
def test_failures_are_classified(home: Path, script: str, reason: str, category: str,
                                 evidence: str) -> None:
    r = run_train(["python", "-c", script], base_env(home, {"BOOTSTRAP_SUPERVISE": "1"}))
    assert r.returncode != 0
    rec = record(home)
    assert (rec["reason"], rec["category"]) == (reason, category), rec
    assert evidence in rec["evidence"]
    assert f"reason: {reason} ({category})" in r.stderr.strip().splitlines()[-1]


def test_the_oom_killer_is_named_not_just_137(home: Path, tmp_path: Path) -> None:
    """A real memory cgroup (v1 or v2) with a 96 MiB limit; the command allocates past it."""
    root = Path("/sys/fs/cgroup/memory")
    v2 = not root.is_dir()
    group = (Path("/sys/fs/cgroup") if v2 else root) / f"bootstrap-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(96 << 20))
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        script = "x = [bytearray(10**6) for _ in range(1000)]"
        env = base_env(home, {"BOOTSTRAP_SUPERVISE": "1"})
        cmd = (f'echo $$ > {group}/cgroup.procs && exec bash '
               f'{Path(__file__).resolve().parent.parent / "scripts/run_train.sh"} '
               f'python -c "{script}"')
        r = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 137, r.stderr  # the command, not the supervisor, was killed
        rec = record(home)
        assert (rec["reason"], rec["category"]) == ("oom", "user"), rec
        assert rec["oom_kills"] >= 1
    finally:
        def removed() -> bool:  # once the group's last process has gone
            try:
                group.rmdir()
            except OSError:
                return False
            return True

        wait_until(removed, 5, interval=0.1)


def test_an_xid_during_the_run_makes_it_the_nodes_fault(home: Path) -> None:
    """NVML's event API (the kernel log is not readable in a container) reports Xid 79
    (GPU fallen off the bus) while the command runs; the command then crashes."""
    scenario = {**HEALTHY, "gpus": [{}] * 2, "xid": [{"gpu": 1, "xid": 79, "after": 0.3}]}
    env = base_env(home, fake_env(scenario, BOOTSTRAP_SUPERVISE="1"))
    r = run_train(["python", "-c", "import time; time.sleep(2); raise RuntimeError('boom')"],
                  env, timeout=60)
    assert r.returncode == 1, r.stderr
    rec = record(home)
    assert (rec["reason"], rec["category"]) == ("gpu", "infrastructure"), rec
    assert rec["xids"] == "Xid 79 on GPU 1" and "Xid 79 on GPU 1" in rec["evidence"]
    # Control: the same crash without the Xid is the job's own exception.
    (home / "user-job-dir" / "failure.json").unlink()
    env = base_env(home, fake_env({**HEALTHY, "gpus": [{}] * 2}, BOOTSTRAP_SUPERVISE="1"))
    r = run_train(["python", "-c", "raise RuntimeError('boom')"], env, timeout=60)
    assert record(home)["reason"] == "exception"
