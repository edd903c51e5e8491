"""Secrets never leak: marker credentials through every scenario, then a scan of all
that the bootstrap printed or wrote. Files it creates are not world-writable."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import base_env, run_train

KEY_ID = "AKIDMARKERKEYID00042"
SECRET = "MARKER-SECRET-d41d8cd98f00b204"
TOKEN = "MARKER-TOKEN-e9800998ecf8427e"
USER_TOKEN = "MARKER-USER-API-TOKEN-7"


@pytest.fixture(scope="module")
def marked_s3() -> Iterator[S3Server]:
    with S3Server(access_key=KEY_ID, secret_key=SECRET) as server:
        client = server.client()
        client.create_bucket(Bucket="secret-code")
        client.put_object(Bucket="secret-code", Key="code/train.py", Body=(
            b"import os, sys\n"
            b"for pid in (os.getpid(), os.getppid()):\n"
            b"    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace')\n"
            b"    assert os.environ['AWS_SECRET_ACCESS_KEY'] not in cmd, pid\n"
            b"    assert os.environ['AWS_ACCESS_KEY_ID'] not in cmd, pid\n"
            b"os.makedirs(os.environ['BOOTSTRAP_OUTPUT_DIR'], exist_ok=True)\n"
            b"open(os.path.join(os.environ['BOOTSTRAP_OUTPUT_DIR'], 'ckpt.pt'), 'w').write('w')\n"
            b"print('secret in argv?', sys.argv[1:], file=sys.stderr)\n"
            b"sys.exit(int(sys.argv[1]))\n"))
        client.create_bucket(Bucket="secret-out")
        yield server


def scenario_env(s3: S3Server, home: Path, out: Path) -> dict[str, str]:
    return base_env(home, {
        "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET, "OBS_SECURITY_TOKEN": TOKEN,
        "MY_API_TOKEN": USER_TOKEN, "DLS_APP_URL": "s3://secret-code/code/",
        "BOOTSTRAP_OUTPUT_DIR": str(out), "DLS_TRAIN_URL": "s3://secret-out/train/",
        "DLS_USE_UPLOADER": "1", "DLS_UPLOAD_LOG_OBS_DIR": "s3://secret-out/logs/",
        "BOOTSTRAP_LOG_FILE": str(home / "task.log"), "BATCH_job.0_HOSTS": "localhost:6000",
    })


def test_secrets_never_reach_the_log(home: Path) -> None:
    env = base_env(home, {"AWS_SECRET_ACCESS_KEY": "MARKER-SECRET-0001",
                          "OBS_SECURITY_TOKEN": "MARKER-TOKEN-0002",
                          "AWS_ACCESS_KEY_ID": "AKIDMARKER0003"})
    r = run_train(["echo", "MARKER-SECRET-0001", "--token=abc"], env)
    assert "MARKER-SECRET-0001" in r.stdout  # the command itself gets its arguments
    assert "MARKER-SECRET-0001" not in r.stderr and "abc" not in r.stderr
    assert "MARKER-TOKEN-0002" not in r.stderr and "AKIDMARKER0003" not in r.stderr


@pytest.mark.parametrize("fmt, code", [("text", 0), ("json", 3)])
def test_no_secret_anywhere(marked_s3: S3Server, home: Path, tmp_path: Path, fmt: str,
                            code: int) -> None:
    env = scenario_env(marked_s3, home, tmp_path / "out")
    env["BOOTSTRAP_LOG_FORMAT"] = fmt
    r = run_train(["python", "train.py", str(code), f"--api-token={USER_TOKEN}"], env)
    assert r.returncode == code, r.stderr
    # Everything the bootstrap printed or wrote, the command's own output included.
    texts = {"stdout": r.stdout, "stderr": r.stderr}
    for path in home.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    assert (home / "user-job-dir" / "preflight.json").exists()
    assert (home / "user-job-dir" / "cluster.json").exists()
    if code:
        assert json.loads((home / "user-job-dir" / "failure.json").read_text())["exit_code"] == 3
    for name, text in texts.items():
        if name == "stderr" or name.endswith("task.log"):
            # the command printed its own argv to stderr: only the bootstrap's lines count
            text = "\n".join(ln for ln in text.splitlines() if "secret in argv?" not in ln)
        for marker in (SECRET, TOKEN, KEY_ID):
            assert marker not in text, (name, marker)
        if "failure.json" in name or "run_train" in text:
            assert USER_TOKEN not in text.replace(f"--api-token={USER_TOKEN}", ""), name


def test_created_files_are_not_world_writable(marked_s3: S3Server, home: Path,
                                              tmp_path: Path) -> None:
    old = os.umask(0)  # the worst case: a container started with umask 0
    try:
        r = run_train(["python", "train.py", "1"], scenario_env(marked_s3, home, tmp_path / "o"))
    finally:
        os.umask(old)
    assert r.returncode == 1, r.stderr
    writable = [str(p) for p in home.rglob("*")
                if not p.is_symlink() and p.stat().st_mode & stat.S_IWOTH]
    assert writable == []
