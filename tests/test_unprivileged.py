"""The whole single-node path as an unprivileged user, as on the platform: uid 1101 in
a home like /home/work, with a Python not under /root (Debian's /usr/bin/python3 in
a venv holding the installed bootstrap), with /cache absent or read-only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import REPO, RUN_TRAIN, Bucket, base_env

UID = 1101
SYSTEM_PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("switching to uid 1101 needs root")
    if not os.path.exists(SYSTEM_PYTHON) or shutil.which("setpriv") is None:
        pytest.skip(f"{SYSTEM_PYTHON} or setpriv missing")
    # Outside /root and the pytest tree, readable by everyone; the installed copy of the
    # bootstrap (not the editable one) is what an image would hold.
    root = Path("/opt") / f"bootstrap-unprivileged-{os.getpid()}"
    try:
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(root)], check=True)
        subprocess.run([str(root / "bin/python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", str(REPO)], check=True,
                       stdout=subprocess.DEVNULL)
        os.chmod(root, 0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_user(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def top() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp tree is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="bootstrap-unpriv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("cache", ["absent", "read-only"])
def test_single_node_job_as_uid_1101(s3: S3Server, bucket: Bucket, venv: Path, top: Path,
                                     cache: str) -> None:
    files = {"train.py": b"import os; print('uid', os.getuid(), 'tmp', os.environ.get('TMPDIR'))\n",
             "data/blob.bin": os.urandom(3 * 2**20)}
    bucket.put_tree(files, "code/")
    work = top / "home" / "work"
    work.mkdir(parents=True)
    (top / "home").chmod(0o755)
    shutil.copy(RUN_TRAIN, work / "run_train.sh")  # as in an image
    os.chown(work, UID, UID)
    cache_dir = top / "cache"
    if cache == "read-only":
        cache_dir.mkdir(mode=0o755)  # root's, so not writable for uid 1101
    env = base_env(work, {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/",
                          "BOOTSTRAP_PYTHON": str(venv / "bin/python"), "HOME": str(work),
                          "BOOTSTRAP_CACHE_DIR": str(cache_dir), "BOOTSTRAP_SUPERVISE": "1",
                          "BOOTSTRAP_LOG_FILE": str(work / "task.log")})
    del env["BOOTSTRAP_HOME"]  # the default: the folder holding run_train.sh
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    r = as_user(["bash", str(work / "run_train.sh"), "python", "train.py"], env, work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["uid", str(UID), "tmp", "None"]
    code = work / "user-job-dir" / "code"
    assert hashlib.md5((code / "data/blob.bin").read_bytes()).digest() == \
        hashlib.md5(files["data/blob.bin"]).digest()
    assert {p.stat().st_uid for p in code.rglob("*")} == {UID}
    assert "task.log" in os.listdir(work)


def test_hang_watchdog_as_uid_1101(venv: Path, top: Path) -> None:
    work = top / "home" / "work"
    work.mkdir(parents=True)
    (top / "home").chmod(0o755)
    shutil.copy(RUN_TRAIN, work / "run_train.sh")
    os.chown(work, UID, UID)
    env = base_env(work, {"BOOTSTRAP_PYTHON": str(venv / "bin/python"), "HOME": str(work),
                          "BOOTSTRAP_HANG_SECONDS": "2", "BOOTSTRAP_GRACE_SECONDS": "2",
                          "BOOTSTRAP_LOG_FILE": str(work / "task.log")})
    del env["BOOTSTRAP_HOME"]
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    stuck = "import time\ndef hung_as_1101_m2():\n    time.sleep(600)\nhung_as_1101_m2()\n"
    r = as_user(["bash", str(work / "run_train.sh"), "python", "-c", stuck], env, work)
    assert r.returncode == 124, r.stderr
    stacks = (work / "user-job-dir" / "hang-stacks.txt").read_text()
    assert "hung_as_1101_m2" in stacks
    assert (work / "user-job-dir" / "hang-stacks.txt").stat().st_uid == UID
