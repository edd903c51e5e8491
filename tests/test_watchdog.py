"""The hang watchdog, with real processes, signals and a real S3 server for the outputs
(the GPU only through the NVML fake). The failure diagnosis has test_diagnose.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import HEALTHY, Bucket, base_env, fake_env, record, run_train

STUCK = r'''
import os, time
print("epoch 1 done", flush=True)
def stuck_in_a_distinctive_function_q7():
    time.sleep(600)
stuck_in_a_distinctive_function_q7()
'''


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
