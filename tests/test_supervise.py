"""Supervision with real processes and signals: PID 1, forwarding, grace, exit codes,
the failure record, the log file, output sync to the real S3 server, sync, pip."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from devtools.s3server import S3Server
from tests.conftest import (
    RUN_TRAIN,
    Bucket,
    assert_one_error_line,
    base_env,
    log_records,
    run_train,
)

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


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(RUN_TRAIN), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"{needle!r} never appeared; stderr: {stderr}")


def keys(bucket: Bucket, prefix: str) -> dict[str, bytes]:
    """The user's objects under ``prefix`` (the bootstrap's own ``.bootstrap/`` left out)."""
    resp = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)
    return {o["Key"]: bucket.client.get_object(Bucket=bucket.name, Key=o["Key"])["Body"].read()
            for o in resp.get("Contents", []) if "/.bootstrap/" not in o["Key"]}


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
subprocess.run(["sh", "-c", "sleep 0.3 & exit 0"])
time.sleep(1.5)
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
time.sleep(1)
print("forwarded", got == [signal.SIGUSR2], flush=True)
''')
    env = base_env(home)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", str(RUN_TRAIN),
                        "python", str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "supervised, pid 1" in r.stderr
    assert "zombies 0" in r.stdout and "forwarded True" in r.stdout


def test_periodic_sync_uploads_complete_changed_files(s3: S3Server, bucket: Bucket, home: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = r'''
import os, time
out = os.environ["BOOTSTRAP_OUTPUT_DIR"]
open(os.path.join(out, "ckpt-1.pt"), "w").write("epoch 1")
time.sleep(3.5)                      # two sync rounds see ckpt-1 complete
with open(os.path.join(out, "growing.log"), "w") as fh:
    for i in range(30):              # modified every 0.1 s: never settles while we run
        fh.write(f"line {i}\n"); fh.flush(); time.sleep(0.1)
print("done", flush=True)
'''
    env = base_env(home, {**s3.env(), "BOOTSTRAP_OUTPUT_DIR": str(out),
                          "DLS_TRAIN_URL": f"s3://{bucket.name}/run1/",
                          "BOOTSTRAP_SYNC_INTERVAL": "1", "BOOTSTRAP_SYNC_SETTLE_SECONDS": "1",
                          "BOOTSTRAP_LOG_FORMAT": "json"})
    proc = start(["python", "-c", script], env)
    seen_mid_run: dict[str, bytes] = {}
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        seen_mid_run.update(keys(bucket, "run1/"))
        time.sleep(0.3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert seen_mid_run.get("run1/ckpt-1.pt") == b"epoch 1"  # there before the job ended
    assert "run1/growing.log" not in seen_mid_run or \
        seen_mid_run["run1/growing.log"].endswith(b"\n")
    final = keys(bucket, "run1/")
    assert final["run1/growing.log"] == "".join(f"line {i}\n" for i in range(30)).encode()
    records = log_records(err)
    rounds = [r for r in records if r.get("sync") == "periodic"]
    # The first round that sends anything sends ckpt-1 alone (an earlier round may find
    # it younger than the settle time: that depends on how fast the command started).
    sending = [r for r in rounds if r["files"] > 0]
    assert sending[0]["files"] == 1, rounds
    assert any(r["files"] == 0 and r["unchanged"] == 1 for r in rounds[1:]), rounds
    assert any(r["settling"] == 1 for r in rounds), rounds
    assert [r["sync"] for r in records if "sync" in r][-1] == "final"


def test_final_sync_runs_after_a_crash(s3: S3Server, bucket: Bucket, home: Path,
                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = os.urandom(6 * 2**20 + 123)  # multipart with the small part size below
    blob = tmp_path / "blob"
    blob.write_bytes(big)
    crash = ("import os,sys,shutil; d=os.environ['BOOTSTRAP_OUTPUT_DIR']; "
             "shutil.copy(os.environ['BLOB'], os.path.join(d,'model.bin')); "
             "os.makedirs(os.path.join(d,'sub'), exist_ok=True); "
             "open(os.path.join(d,'sub','note.txt'),'w').write('partial'); sys.exit(1)")
    env = base_env(home, {**s3.env(), "BOOTSTRAP_OUTPUT_DIR": str(out), "BLOB": str(blob),
                          "DLS_TRAIN_URL": f"obs://{bucket.name}/crash/",
                          "BOOTSTRAP_MULTIPART_THRESHOLD": str(5 * 2**20),
                          "BOOTSTRAP_RANGE_SIZE": str(5 * 2**20)})
    r = run_train(["python", "-c", crash], env, timeout=120)
    assert r.returncode == 1, r.stderr
    got = keys(bucket, "crash/")
    assert got == {"crash/model.bin": big, "crash/sub/note.txt": b"partial"}


def test_output_dir_without_train_url_is_a_config_error(home: Path, tmp_path: Path) -> None:
    r = run_train(["true"], base_env(home, {"BOOTSTRAP_OUTPUT_DIR": str(tmp_path)}))
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "DLS_TRAIN_URL")


def test_a_bad_log_url_stops_the_job_before_the_command_runs(home: Path,
                                                            tmp_path: Path) -> None:
    # Parsed with the settings: a typo is found in milliseconds, not after training.
    ran = tmp_path / "ran"
    r = run_train(["touch", str(ran)],
                  base_env(home, {"BOOTSTRAP_LOG_UPLOAD_URL": "s3:/typo/logs/"}))
    assert r.returncode == 2 and not ran.exists()
    assert_one_error_line(r.stderr, "BOOTSTRAP_LOG_UPLOAD_URL")


def test_log_upload_like_the_original(s3: S3Server, bucket: Bucket, home: Path,
                                      tmp_path: Path) -> None:
    log = tmp_path / "dls-task-0.log"
    env = base_env(home, {**s3.env(), "DLS_USE_UPLOADER": "true", "BOOTSTRAP_LOG_FILE": str(log),
                          "DLS_UPLOAD_LOG_OBS_DIR": f"s3://{bucket.name}/logs/"})
    r = run_train(["python", "-c", "print('training log line')"], env)
    assert r.returncode == 0, r.stderr
    assert keys(bucket, "logs/") == {"logs/dls-task-0.log": b"training log line\n"}
    env["DLS_UPLOAD_LOG_OBS_DIR"] = "s3://no-such-bucket-for-logs/logs/"
    r = run_train(["python", "-c", "import sys; sys.exit(7)"], env)
    assert r.returncode == 7  # an upload error never changes the exit code
    assert "log upload failed" in r.stderr


def test_sync_command_both_ways_and_once_per_node(s3: S3Server, bucket: Bucket, home: Path,
                                                  tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.txt").write_text("x")
    (src / "top.txt").write_text("top")
    env = base_env(home, {**s3.env(), "TMPDIR": str(tmp_path)})
    sync = [sys.executable, "-m", "bootstrap", "sync"]
    r = subprocess.run([*sync, str(src), f"s3://{bucket.name}/data"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert keys(bucket, "data/") == {"data/a/b/x.txt": b"x", "data/top.txt": b"top"}
    dst = tmp_path / "dst"
    procs = [subprocess.Popen([*sync, "--once-per-node", f"obs://{bucket.name}/data/", str(dst)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert sum("already done by another process" in e for e in errs) == 2
    assert (dst / "a" / "b" / "x.txt").read_text() == "x"
    r = subprocess.run([*sync, str(src), str(dst)], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "between a local folder and s3://")


def make_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so pip installs offline."""
    files = {"bootdemo_pkg.py": b"VALUE = 42\n",
             "bootdemo_pkg-1.0.dist-info/METADATA":
                 b"Metadata-Version: 2.1\nName: bootdemo-pkg\nVersion: 1.0\n",
             "bootdemo_pkg-1.0.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "bootdemo_pkg-1.0.dist-info/RECORD,,\n"
    path = folder / "bootdemo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bootdemo_pkg-1.0.dist-info/RECORD", record)
    return path


def test_pip_requirements_are_installed_first(home: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    wheel = make_wheel(code)
    (code / "pip-requirements.txt").write_text(f"{wheel.name}\n")
    target = tmp_path / "site"
    env = base_env(home, {"DLS_APP_URL": str(code), "PIP_TARGET": str(target),
                          "PIP_NO_INDEX": "1"})
    r = run_train(["python", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                   "import bootdemo_pkg; print(bootdemo_pkg.VALUE)"], env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42" and "stage deps" in r.stderr
    (code / "pip-requirements.txt").write_text("no-such-package-bootstrap-xyz==9.9\n")
    r = run_train(["true"], env, timeout=180)
    assert r.returncode == 6
    assert_one_error_line(r.stderr, "pip install -r pip-requirements.txt failed")
    r = run_train(["true"], {**env, "BOOTSTRAP_PIP_INSTALL": "0"})
    assert r.returncode == 0


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
    deadline = time.monotonic() + 20
    while len(list(out.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
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
