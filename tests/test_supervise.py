"""Supervision with real processes and signals: PID 1, forwarding (and the checkpoint a
SIGTERM saves, uploaded), grace, exit codes, the failure record, the log file, workers in
sessions of their own and what the command leaves in the background. Output sync, log
upload, the sync command and pip have files of their own (test_outputs.py,
test_log_upload.py, test_sync.py, test_deps.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.s3server import S3Server
from tests.conftest import RUN_TRAIN, Bucket, base_env, keys, run_train, start
from tests.support.wait import wait_for_line, wait_until

pytestmark = pytest.mark.timeout(300)

ON_TERM_CHECKPOINT = r'''
import os, signal, sys, time
out = os.environ["BOOTSTRAP_OUTPUT_DIR"]
def on_term(signum, frame):
    with open(os.path.join(out, "ckpt-final.pt"), "w") as fh:
        fh.write("saved on SIGTERM")
    print("child got SIGTERM", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(60)
'''


def manifest(bucket: Bucket, prefix: str, rank: int = 0) -> dict[str, Any] | None:
    try:
        body = bucket.client.get_object(Bucket=bucket.name,
                                        Key=f"{prefix}.bootstrap/{rank}/complete.json")["Body"]
    except bucket.client.exceptions.NoSuchKey:
        return None
    found: dict[str, Any] = json.loads(body.read())
    return found


def test_sigterm_is_forwarded_and_the_checkpoint_uploaded(s3: S3Server, bucket: Bucket, home: Path,
                                                          tmp_path: Path) -> None:
    env = base_env(home, {**s3.env(), "BOOTSTRAP_OUTPUT_DIR": str(tmp_path / "out"),
                          "DLS_TRAIN_URL": f"s3://{bucket.name}/train/"})
    proc = start(["python", "-c", ON_TERM_CHECKPOINT], env)
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "child got SIGTERM" in out
    assert "ended by SIGTERM: exit code 143" in err
    assert keys(bucket, "train/") == {"train/ckpt-final.pt": b"saved on SIGTERM"}
    done = manifest(bucket, "train/")  # written last, with what a reader can check
    assert done is not None and done["exit_code"] == 143
    assert done["objects"] == {"train/ckpt-final.pt": {
        "size": 16, "etag": hashlib.md5(b"saved on SIGTERM").hexdigest()}}
    record = json.loads((home / "user-job-dir" / "failure.json").read_text())
    assert record["exit_code"] == 143 and record["signal"] == "SIGTERM"


def test_grace_period_then_sigkill(home: Path) -> None:
    ignore = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(120)")
    env = base_env(home, {"BOOTSTRAP_SUPERVISE": "1", "BOOTSTRAP_GRACE_SECONDS": "1"})
    proc = start(["python", "-c", ignore], env)
    wait_for_line(proc, "ready")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137
    assert "killed by SIGKILL after the grace period" in err
    assert 0.9 < time.monotonic() - started < 15


@pytest.mark.parametrize("script, code", [
    ("pass", 0), ("import sys; sys.exit(1)", 1), ("import sys; sys.exit(42)", 42),
    ("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)", 128 + signal.SIGUSR1),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137),
])
def test_supervised_exit_codes(home: Path, script: str, code: int) -> None:
    r = run_train(["python", "-c", script], base_env(home, {"BOOTSTRAP_SUPERVISE": "1"}))
    assert r.returncode == code, r.stderr
    assert f"exit code {code}" in r.stderr


def test_failure_record_is_written_once(home: Path, tmp_path: Path) -> None:
    record = tmp_path / "failure.json"
    env = base_env(home, {"BOOTSTRAP_SUPERVISE": "1", "BOOTSTRAP_FAILURE_FILE": str(record),
                          "AWS_SECRET_ACCESS_KEY": "MARKER-SECRET-77"})
    fail = "import sys; print('boom: bad batch', file=sys.stderr); sys.exit(3)"
    assert run_train(["python", "-c", fail], env).returncode == 3
    first = json.loads(record.read_text())
    assert first["exit_code"] == 3 and "boom: bad batch" in first["stderr_tail"]
    leak = "import sys; print('MARKER-SECRET-77', file=sys.stderr); sys.exit(5)"
    assert run_train(["python", "-c", leak], env).returncode == 5
    assert json.loads(record.read_text()) == first  # never overwritten
    assert run_train(["python", "-c", "pass"], env).returncode == 0
    assert json.loads(record.read_text()) == first
    record.unlink()
    assert run_train(["python", "-c", leak], env).returncode == 5
    assert "MARKER-SECRET-77" not in record.read_text()  # redacted like every log line


def test_log_file_gets_both_streams_while_stdout_streams(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "task.log"
    script = "import sys; print('to-out'); print('to-err', file=sys.stderr)"
    r = run_train(["python", "-c", script],
                  base_env(home, {"BOOTSTRAP_SUPERVISE": "1", "BOOTSTRAP_LOG_FILE": str(log)}))
    assert r.returncode == 0
    assert r.stdout == "to-out\n" and "to-err" in r.stderr
    assert set(log.read_text().splitlines()) == {"to-out", "to-err"}


def test_pid1_reaps_zombies_and_forwards_signals(home: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root here")
    script = tmp_path / "pid1.py"
    script.write_text(r'''
import os, signal, subprocess, time
# An orphan: its parent (sh) exits at once, so the kernel hands it to PID 1.
orphan = subprocess.run(["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], capture_output=True,
                        text=True).stdout.strip()
deadline = time.monotonic() + 10
while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
    time.sleep(0.05)  # until it has ended and PID 1 has reaped it (a zombie stays listed)
zombies = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            zombies.append(pid)
print("zombies", len(zombies), flush=True)
got = []
signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
os.kill(1, signal.SIGUSR2)  # PID 1 is the bootstrap: it must forward this to us
deadline = time.monotonic() + 10
while not got and time.monotonic() < deadline:
    time.sleep(0.05)  # until the forwarded signal has come
print("forwarded", got == [signal.SIGUSR2], flush=True)
''')
    env = base_env(home)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", str(RUN_TRAIN),
                        "python", str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "supervised, pid 1" in r.stderr
    assert "zombies 0" in r.stdout and "forwarded True" in r.stdout


# A launcher like msrun without --join=True: its workers go to sessions of their own
# (setsid), out of reach of the command's process group, and it exits 0 at once. Each
# worker records its pid, then after `work` seconds its result; on SIGTERM, that it got it.
DETACHER = r'''
import subprocess, sys
out, work, code1 = sys.argv[1], sys.argv[2], sys.argv[3]
worker = """
import os, signal, sys, time
out, rank, work, code = sys.argv[1:5]
def on_term(signum, frame):
    open(os.path.join(out, rank + ".term"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(out, rank + ".pid"), "w").write(str(os.getpid()))
time.sleep(float(work))
open(os.path.join(out, rank + ".done"), "w").close()
sys.exit(int(code))
"""
for rank, code in (("0", "0"), ("1", code1)):
    subprocess.Popen([sys.executable, "-c", worker, out, rank, work, code],
                     start_new_session=True)
print("launcher returned", flush=True)
'''


def _detacher(tmp_path: Path, work: float, code1: int = 0) -> list[str]:
    script = tmp_path / "launcher.py"
    script.write_text(DETACHER)
    out = tmp_path / "workers"
    out.mkdir()
    return ["python", str(script), str(out), str(work), str(code1)]


def _worker_pids(out: Path) -> list[int]:
    wait_until(lambda: len(list(out.glob("*.pid"))) >= 2, 20)
    return [int(p.read_text()) for p in sorted(out.glob("*.pid"))]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("code1", [0, 3])
def test_workers_in_their_own_sessions_are_the_jobs_end(home: Path, tmp_path: Path,
                                                        code1: int) -> None:
    """The launcher exits 0 at once; the job ends when its detached workers do, with the
    first failure among them."""
    argv = _detacher(tmp_path, 2, code1)
    started = time.monotonic()
    r = run_train(argv, base_env(home, {"BOOTSTRAP_SUPERVISE": "1"}))
    assert r.returncode == code1, r.stderr
    assert time.monotonic() - started > 2
    assert {p.name for p in (tmp_path / "workers").glob("*.done")} == {"0.done", "1.done"}
    assert "waiting for them" in r.stderr


def test_without_waiting_the_job_would_end_before_its_workers(home: Path,
                                                              tmp_path: Path) -> None:
    """The control, BOOTSTRAP_DETACHED=stop: the job is over while the workers have done
    nothing (before, they also ran on unseen); they are stopped, none outlives it."""
    argv = _detacher(tmp_path, 60)
    started = time.monotonic()
    r = run_train(argv, base_env(home, {"BOOTSTRAP_SUPERVISE": "1", "BOOTSTRAP_DETACHED": "stop",
                                        "BOOTSTRAP_GRACE_SECONDS": "5"}))
    assert r.returncode == 0 and time.monotonic() - started < 30, r.stderr
    out = tmp_path / "workers"
    assert not list(out.glob("*.done"))
    assert not any(_running(pid) for pid in _worker_pids(out))
    assert "stopping them" in r.stderr


def test_a_stop_reaches_workers_in_their_own_sessions(home: Path, tmp_path: Path) -> None:
    argv = _detacher(tmp_path, 120)
    proc = start(argv, base_env(home, {"BOOTSTRAP_SUPERVISE": "1"}))
    wait_for_line(proc, "launcher returned")
    out = tmp_path / "workers"
    pids = _worker_pids(out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert {p.name for p in out.glob("*.term")} == {"0.term", "1.term"}
    assert not any(_running(pid) for pid in pids)


def test_what_the_command_leaves_in_the_background_is_stopped(home: Path,
                                                              tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    r = run_train(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo started"],
                  base_env(home, {"BOOTSTRAP_SUPERVISE": "1", "BOOTSTRAP_GRACE_SECONDS": "5"}))
    assert r.returncode == 0 and "started" in r.stdout, r.stderr
    assert not _running(int(pidfile.read_text()))
    assert "left 1 process(es) running" in r.stderr
