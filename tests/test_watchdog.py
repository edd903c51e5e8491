"""The hang watchdog and the failure diagnosis, with real processes, signals and a real
S3 server for the outputs (the GPU only through the NVML fake)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.s3server import S3Server
from tests.conftest import HEALTHY, Bucket, base_env, fake_env, run_train

STUCK = r'''
import os, time
print("epoch 1 done", flush=True)
def stuck_in_a_distinctive_function_q7():
    time.sleep(600)
stuck_in_a_distinctive_function_q7()
'''


def record(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "user-job-dir" / "failure.json").read_text())
    return data


def test_a_hang_ends_with_its_stacks_exit_124_and_synced_outputs(
        s3: S3Server, bucket: Bucket, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt-1.pt").write_bytes(b"weights")
    env = base_env(home, {**s3.env(), "BOOTSTRAP_HANG_SECONDS": "3",
                          "BOOTSTRAP_GRACE_SECONDS": "2", "BOOTSTRAP_OUTPUT_DIR": str(out),
                          "DLS_TRAIN_URL": f"s3://{bucket.name}/run/"})
    started = time.monotonic()
    r = run_train(["python", "-c", STUCK], env, timeout=60)
    elapsed = time.monotonic() - started
    assert r.returncode == 124, r.stderr
    assert elapsed < 3 + 2 + 10, elapsed
    assert "epoch 1 done" in r.stdout
    rec = record(home)
    assert (rec["reason"], rec["category"], rec["exit_code"]) == ("hang", "user", 124)
    assert "stuck_in_a_distinctive_function_q7" in rec["evidence"]
    stacks = Path(rec["stacks_file"]).read_text()
    assert "stuck_in_a_distinctive_function_q7" in stacks and "<module>" in stacks
    assert "stuck_in_a_distinctive_function_q7" in r.stderr  # the log has them too
    body = bucket.client.get_object(Bucket=bucket.name, Key="run/ckpt-1.pt")["Body"].read()
    assert body == b"weights"  # outputs still synced
    assert r.stderr.strip().splitlines()[-1].endswith(rec["evidence"])  # the last word
    # The attempt's evidence keeps the stacks once the container is gone.
    kept = bucket.client.get_object(
        Bucket=bucket.name, Key="run/.bootstrap/0/no-job-id/attempt-1/hang-stacks.txt")
    assert "stuck_in_a_distinctive_function_q7" in kept["Body"].read().decode()


@pytest.mark.parametrize("kind, script", [
    ("checkpoint", "import os, time\nfor i in range(7):\n"
                   "    open(os.path.join(os.environ['BOOTSTRAP_OUTPUT_DIR'], f'c{i}'), 'w')"
                   ".write('x' * i)\n    time.sleep(1)\n"),
    ("heartbeat", "import os, time\nfor i in range(7):\n"
                  "    open(os.environ['BOOTSTRAP_HEARTBEAT_FILE'], 'w').write(str(i))\n"
                  "    time.sleep(1)\n"),
    ("progress-bar", "import sys, time\nfor i in range(7):\n"
                     "    sys.stderr.write(f'\\r{i}/7 [' + '#' * i + ']'); sys.stderr.flush()\n"
                     "    time.sleep(1)\n"),
])
def test_quiet_but_alive_is_not_a_hang(s3: S3Server, bucket: Bucket, home: Path,
                                       tmp_path: Path, kind: str, script: str) -> None:
    env = base_env(home, {"BOOTSTRAP_HANG_SECONDS": "3", "BOOTSTRAP_GRACE_SECONDS": "1"})
    if kind == "checkpoint":
        (tmp_path / "out").mkdir()
        env.update(s3.env(), BOOTSTRAP_OUTPUT_DIR=str(tmp_path / "out"),
                   DLS_TRAIN_URL=f"s3://{bucket.name}/x/")
    r = run_train(["python", "-c", script], env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "hang:" not in r.stderr
    # Control: the same 7 quiet seconds with nothing moving at all is a hang.
    if kind == "heartbeat":
        r = run_train(["python", "-c", "import time; time.sleep(7)"], env, timeout=60)
        assert r.returncode == 124, r.stderr


def test_silent_at_full_gpu_utilisation_is_a_hang(home: Path) -> None:
    """The stuck-collective case: the GPUs spin at 100 %, nothing else moves."""
    busy = {**HEALTHY, "gpus": [{"utilization": 100}] * 2}
    env = base_env(home, fake_env(busy, BOOTSTRAP_HANG_SECONDS="2",
                                  BOOTSTRAP_GRACE_SECONDS="1"))
    r = run_train(["python", "-c", STUCK], env, timeout=60)
    assert r.returncode == 124, r.stderr
    assert record(home)["reason"] == "hang"


def test_dump_action_dumps_twice_and_keeps_the_commands_code(home: Path) -> None:
    script = ("import time\nprint('start', flush=True)\n"
              "def waiting_here_z3():\n    time.sleep(5)\nwaiting_here_z3()\nraise SystemExit(3)\n")
    env = base_env(home, {"BOOTSTRAP_HANG_SECONDS": "1.5", "BOOTSTRAP_HANG_ACTION": "dump"})
    r = run_train(["python", "-c", script], env, timeout=60)
    assert r.returncode == 3, r.stderr
    stacks = (home / "user-job-dir" / "hang-stacks.txt").read_text()
    assert stacks.count("=== hang ") >= 2 and "waiting_here_z3" in stacks
    assert record(home)["reason"] == "exit"  # it was not stopped: its own end decides


def test_explicit_no_supervision_with_a_watchdog_is_a_usage_error(home: Path) -> None:
    r = run_train(["true"], base_env(home, {"BOOTSTRAP_HANG_SECONDS": "5",
                                            "BOOTSTRAP_SUPERVISE": "0"}))
    assert r.returncode == 2 and "BOOTSTRAP_SUPERVISE=0" in r.stderr


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
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


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


USER_PYTHONS = sorted(str(p) for p in Path("/root/.pyenv/versions").glob("3.*/bin/python3"))


@pytest.mark.skipif(not USER_PYTHONS, reason="no other interpreters in /root/.pyenv/versions")
@pytest.mark.parametrize("python", USER_PYTHONS, ids=lambda p: p.split("/")[-3])
def test_the_stack_hook_runs_in_every_users_python(home: Path, python: str) -> None:
    """The hook is injected into the user's interpreter, whatever its version (images
    bring 3.6 to 3.13): its stacks come back, and the command's own Python is the one
    the image gives (nothing of the bootstrap's Python leaks in)."""
    script = ("import sys\nprint('running on', sys.executable, sys.version_info[:2], "
              "flush=True)\ndef hung_in_an_old_python_w5():\n    import time\n"
              "    time.sleep(600)\nhung_in_an_old_python_w5()\n")
    env = base_env(home, {"BOOTSTRAP_HANG_SECONDS": "2", "BOOTSTRAP_GRACE_SECONDS": "1"})
    r = run_train([python, "-c", script], env, timeout=60)
    assert r.returncode == 124, r.stderr
    assert f"running on {python}" in r.stdout
    assert "hung_in_an_old_python_w5" in record(home)["evidence"], r.stderr
