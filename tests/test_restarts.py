"""A restarted job resumes: the checkpoint back before the command starts, the attempt's
number, each attempt's evidence kept in the store, a capped log. Real SeaweedFS, real
processes, a node crash played by SIGKILL to every process of the job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from devtools.s3server import S3Server
from tests.conftest import RUN_TRAIN, Bucket, base_env, run_train
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(300)

JOB = "modelarts-job-5f0c1e2a"
TOKEN = "tok-5ecret-7788"  # a user's secret the command prints: never in an upload

# A training loop as users write it: resume from last.ckpt when it is there, save a
# step-numbered checkpoint every half second (written aside, then renamed over).
TRAIN = r'''
import json, os, sys, time
out = os.environ["BOOTSTRAP_OUTPUT_DIR"]
ckpt = os.path.join(out, "last.ckpt")
start = json.load(open(ckpt))["step"] + 1 if os.path.exists(ckpt) else 0
print(f"attempt {os.environ['BOOTSTRAP_ATTEMPT']} starts at step {start}", flush=True)
print(f"api token {os.environ['MY_API_TOKEN']}", flush=True)
stop = start + int(sys.argv[1])
for step in range(start, stop):
    tmp = os.path.join(out, ".last.ckpt.tmp")
    with open(tmp, "w") as fh:
        json.dump({"step": step}, fh)
    os.replace(tmp, ckpt)
    print(f"saved step {step}", flush=True)
    time.sleep(0.5)
'''


def job_env(s3: S3Server, bucket: Bucket, home: Path, **extra: str) -> dict[str, str]:
    return base_env(home, {**s3.env(), "BOOTSTRAP_OUTPUT_DIR": str(home / "out"),
                           "DLS_TRAIN_URL": f"s3://{bucket.name}/train/", "DLS_JOB_ID": JOB,
                           "BOOTSTRAP_SYNC_INTERVAL": "1",
                           "BOOTSTRAP_SYNC_SETTLE_SECONDS": "0.2",
                           "BOOTSTRAP_LOG_FILE": str(home / "task.log"),
                           "MY_API_TOKEN": TOKEN, **extra})


def stored_step(bucket: Bucket) -> int | None:
    try:
        body = bucket.client.get_object(Bucket=bucket.name, Key="train/last.ckpt")["Body"]
    except bucket.client.exceptions.NoSuchKey:
        return None
    return int(json.loads(body.read())["step"])


def stored_text(bucket: Bucket, key: str) -> str:
    try:
        return read(bucket, key).decode(errors="replace")
    except bucket.client.exceptions.NoSuchKey:
        return ""


def read(bucket: Bucket, key: str) -> bytes:
    return bytes(bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read())


def crash(proc: subprocess.Popen[Any]) -> None:
    """A node's crash: SIGKILL to the bootstrap and every process under it at once (the
    command runs in a session of its own, so a process group would not reach it)."""
    root = psutil.Process(proc.pid)
    family = [root, *root.children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def first_attempt_killed_after_step(s3: S3Server, bucket: Bucket, home: Path,
                                    at_least: int, whole_round: bool = False) -> int:
    """Attempt 1 trains until a sync round has sent a checkpoint of ``at_least`` steps,
    then its node crashes; returns the step the store holds. ``whole_round``: the crash
    waits until that round has also sent the log (a round sends the outputs, then the
    evidence; a crash between the two leaves the previous round's log), and the step
    returned is that round's (a later round may have sent outputs before the crash)."""
    proc = subprocess.Popen(["bash", str(RUN_TRAIN), "python", "-c", TRAIN, "1000"],
                            env=job_env(s3, bucket, home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log_key = f"train/.bootstrap/0/{JOB}/attempt-1/task.log"

    def synced() -> tuple[int] | None:  # the step, once the store has it (and its log)
        step = stored_step(bucket)
        if step is not None and step >= at_least and (
                not whole_round or f"saved step {step}\n" in stored_text(bucket, log_key)):
            return (step,)
        return None

    try:
        found = wait_until(synced, 90, interval=0.1)
        if found is None:
            raise AssertionError("attempt 1 never synced a checkpoint")
        (round_step,) = found
    finally:
        crash(proc)
    if whole_round:
        return round_step
    step = stored_step(bucket)
    assert step is not None and step >= at_least
    return step


@pytest.mark.parametrize("restore", ["auto", "off"])
def test_a_restarted_job_resumes_from_the_checkpoint_its_last_round_sent(
        s3: S3Server, bucket: Bucket, tmp_path: Path, restore: str) -> None:
    """``off`` is the control: the bootstrap before this feature. Attempt 2 then starts at
    step 0 and its rounds put younger checkpoints over the good one."""
    saved = first_attempt_killed_after_step(s3, bucket, tmp_path / "container-1", 8)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # what a reader of DLS_TRAIN_URL sees while attempt 2 runs
        while not done.is_set():
            step = stored_step(bucket)
            if step is not None:
                seen.append(step)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    home = tmp_path / "container-2"  # a new container: nothing local survives
    home.mkdir()
    try:
        r = run_train(["python", "-c", TRAIN, "6"],
                      job_env(s3, bucket, home, BOOTSTRAP_RESTORE=restore), timeout=120)
    finally:
        done.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    if restore == "off":
        assert first == "attempt 2 starts at step 0", r.stdout
        assert min(seen) < saved, seen  # the failure the feature fixes
        return
    assert first == f"attempt 2 starts at step {saved + 1}", (r.stdout, r.stderr)
    assert seen and min(seen) >= saved, seen  # never a younger checkpoint over the good one
    assert stored_step(bucket) == saved + 6
    # The restored checkpoint was not sent back: the store's copy is the one attempt 1 made
    # until the command wrote a newer one (the first round sent only the new steps).
    assert "restore" in r.stderr and "1 files" in r.stderr


def test_each_attempt_keeps_its_log_up_to_its_last_round_without_secrets(
        s3: S3Server, bucket: Bucket, tmp_path: Path) -> None:
    saved = first_attempt_killed_after_step(s3, bucket, tmp_path / "container-1", 3,
                                            whole_round=True)
    prefix = f"train/.bootstrap/0/{JOB}/attempt-1/"
    log = read(bucket, prefix + "task.log").decode()
    assert f"saved step {saved}" in log.splitlines(), log  # up to the round that sent it
    assert "attempt 1 starts at step 0" in log
    assert TOKEN not in log and "api token ***" in log
    started = json.loads(read(bucket, prefix + "started.json"))
    assert started["attempt"] == 1 and started["job_id"] == JOB
    assert "preflight.json" in {k.rsplit("/", 1)[-1] for k in
                                (o["Key"] for o in bucket.client.list_objects_v2(
                                    Bucket=bucket.name, Prefix=prefix)["Contents"])}
    home = tmp_path / "container-2"
    home.mkdir()
    r = run_train(["python", "-c", TRAIN + "\nraise SystemExit(3)", "1"],
                  job_env(s3, bucket, home))
    assert r.returncode == 3, r.stderr
    second = f"train/.bootstrap/0/{JOB}/attempt-2/"
    assert "saved step" in read(bucket, second + "task.log").decode()
    failure = json.loads(read(bucket, second + "failure.json"))
    assert failure["exit_code"] == 3
    assert TOKEN not in read(bucket, second + "task.log").decode()
    assert read(bucket, prefix + "task.log").decode() == log  # attempt 1's is kept as it was


def test_a_job_failing_in_its_download_leaves_its_failure_record_under_attempt_1(
        s3: S3Server, bucket: Bucket, home: Path) -> None:
    env = base_env(home, {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/no-code-here/",
                          "DLS_TRAIN_URL": f"s3://{bucket.name}/train/", "MA_VJ_NAME":
                          "ma-job-77aa-vc2", "MY_API_TOKEN": TOKEN,
                          "BOOTSTRAP_LOG_UPLOAD_URL": f"s3://{bucket.name}/logs/"})
    r = run_train(["python", "train.py", f"--token={TOKEN}"], env)
    assert r.returncode == 127, r.stderr
    for root in ("train", "logs"):  # the job id as the platform's log names spell it
        key = f"{root}/.bootstrap/0/modelarts-job-77aa/attempt-1/failure.json"
        failure = read(bucket, key).decode()
        assert json.loads(failure)["reason"] == "download", failure
        assert TOKEN not in failure


def test_evidence_off_uploads_no_record(s3: S3Server, bucket: Bucket, home: Path) -> None:
    env = job_env(s3, bucket, home, BOOTSTRAP_EVIDENCE="off")
    r = run_train(["python", "-c", "raise SystemExit(5)"], env)
    assert r.returncode == 5, r.stderr
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"train/.bootstrap/0/{JOB}/")
    names = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert names == {"started.json"}, names  # the attempt is counted, nothing else is sent


def test_a_new_job_under_the_same_url_is_attempt_1_and_restores_nothing(
        s3: S3Server, bucket: Bucket, tmp_path: Path) -> None:
    write = "import os; open(os.path.join(os.environ['BOOTSTRAP_OUTPUT_DIR'], 'm.txt'), 'w')" \
            ".write(os.environ['BOOTSTRAP_ATTEMPT'])"
    show = "import os; print(os.environ['BOOTSTRAP_ATTEMPT'], " \
           "sorted(os.listdir(os.environ['BOOTSTRAP_OUTPUT_DIR'])))"
    for n in (1, 2):
        home = tmp_path / f"a{n}"
        home.mkdir()
        assert run_train(["python", "-c", write], job_env(s3, bucket, home)).returncode == 0
    home = tmp_path / "other-job"
    home.mkdir()
    r = run_train(["python", "-c", show], job_env(s3, bucket, home, DLS_JOB_ID="job-new"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1 []", r.stdout  # another job's outputs stay in the store
    assert f"are job {JOB}'s, not this job's" in r.stderr
    home = tmp_path / "continued"
    home.mkdir()
    r = run_train(["python", "-c", show],
                  job_env(s3, bucket, home, DLS_JOB_ID="job-new", BOOTSTRAP_RESTORE="always"))
    assert r.stdout.strip() == "2 ['m.txt']", r.stdout  # the owner is now job-new, attempt 2
    home = tmp_path / "no-id"
    home.mkdir()
    env = job_env(s3, bucket, home)
    del env["DLS_JOB_ID"]
    r = run_train(["python", "-c", show], env)
    assert r.stdout.strip() == "1 []", r.stdout
    assert "names no job id" in r.stderr


def test_a_local_file_is_never_overwritten_by_the_restore(
        s3: S3Server, bucket: Bucket, tmp_path: Path) -> None:
    home = tmp_path / "a1"
    home.mkdir()
    make = "import os; d=os.environ['BOOTSTRAP_OUTPUT_DIR']; " \
           "[open(os.path.join(d, n), 'w').write('from attempt 1') for n in ('a', 'b')]"
    assert run_train(["python", "-c", make], job_env(s3, bucket, home)).returncode == 0
    home = tmp_path / "a2"  # an in-place restart: the output folder is still there
    (home / "out").mkdir(parents=True)
    (home / "out" / "a").write_text("newer, here")
    show = "import os; d=os.environ['BOOTSTRAP_OUTPUT_DIR']; " \
           "print(open(os.path.join(d, 'a')).read(), '|', open(os.path.join(d, 'b')).read())"
    r = run_train(["python", "-c", show], job_env(s3, bucket, home))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "newer, here | from attempt 1"
    assert read(bucket, "train/a") == b"newer, here"  # the local file, sent as it changed


LINE = "line {:09d} " + "x" * 100 + "\n"


@pytest.mark.parametrize("cap_mb", [5, 0])
def test_the_log_file_is_capped_while_the_stream_carries_everything(
        home: Path, tmp_path: Path, cap_mb: int) -> None:
    """0 is the control: no cap, the file holds all 30 MiB."""
    log = tmp_path / "task.log"
    lines = 30 * 2**20 // len(LINE.format(0))
    script = (f"import sys\nw = sys.stdout.write\nfor i in range({lines}):\n"
              f"    w({LINE!r}.format(i))\n")
    r = subprocess.run(["bash", str(RUN_TRAIN), "python", "-c", script],
                       env=base_env(home, {"BOOTSTRAP_SUPERVISE": "1",
                                           "BOOTSTRAP_LOG_FILE": str(log),
                                           "BOOTSTRAP_LOG_MAX_MB": str(cap_mb)}),
                       capture_output=True, timeout=240)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.count("\n") == lines and out.endswith(LINE.format(lines - 1))
    text = log.read_text()
    if cap_mb == 0:
        assert text == out
        return
    assert len(text.encode()) <= cap_mb * 2**20
    kept = text.splitlines(keepends=True)
    assert kept[0] == LINE.format(0) and kept[-1] == LINE.format(lines - 1)
    cut = [i for i, line in enumerate(kept) if line.startswith("[run_train: ")]
    assert len(cut) == 1, cut
    head, tail = kept[:cut[0]], kept[cut[0] + 1:]
    assert head == [LINE.format(i) for i in range(len(head))]
    first = lines - len(tail)
    assert tail == [LINE.format(i) for i in range(first, lines)]
    said = int(kept[cut[0]].split()[1])
    assert said == (first - len(head)) * len(LINE.format(0))  # the count of what is gone


def test_the_operator_can_tell_what_ran(home: Path) -> None:
    import bootstrap

    r = subprocess.run([sys.executable, "-m", "bootstrap", "--version"],
                       capture_output=True, text=True, env=base_env(home), cwd=home)
    assert r.returncode == 0 and r.stdout.startswith(f"bootstrap {bootstrap.__version__}, "
                                                     "Python 3."), r
    assert "transfer native (obstore " in r.stdout
    run = run_train(["true"], base_env(home))
    first = run.stderr.splitlines()[0]  # run_train.sh runs python3 from PATH: another path
    assert first.startswith(f"run_train: bootstrap {bootstrap.__version__}, Python 3.")
    assert first.endswith(r.stdout.strip().split(")", 1)[1]), first
    secret = "sk-config-99887766"
    shown = subprocess.run([r.args[0], "-m", "bootstrap", "check", "--config"],
                           capture_output=True, text=True, cwd=home,
                           env=base_env(home, {"AWS_SECRET_ACCESS_KEY": secret,
                                               "AWS_ACCESS_KEY_ID": "AKIDCONFIG",
                                               "BOOTSTRAP_JOB_SECRET": "job-secret-1",
                                               "BOOTSTRAP_LOG_MAX_MB": "64"}))
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["run"]["log_max"] == 64 * 2**20
    assert config["transfer"]["credentials"]["secret_key"] == "***"
    assert secret not in shown.stdout and "job-secret-1" not in shown.stdout
