"""The ``sync`` command (``python -m bootstrap sync SRC DST``, ``bootstrap-sync``): a tree
copied either way between a local folder and the real S3 server, once per node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import Bucket, assert_one_error_line, base_env, keys

pytestmark = pytest.mark.timeout(300)


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
