"""Output sync (BOOTSTRAP_OUTPUT_DIR to DLS_TRAIN_URL) with real processes and the real
S3 server: periodic rounds while the command runs, the final round whatever its end."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import (
    Bucket,
    assert_one_error_line,
    base_env,
    keys,
    log_records,
    run_train,
    start,
)

pytestmark = pytest.mark.timeout(300)


def test_periodic_sync_uploads_complete_changed_files(s3: S3Server, bucket: Bucket, home: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    sent = tmp_path / "ckpt-1-sent"  # the test's word that a round has sent ckpt-1
    script = r'''
import os, sys, time
out = os.environ["BOOTSTRAP_OUTPUT_DIR"]
open(os.path.join(out, "ckpt-1.pt"), "w").write("epoch 1")
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)                 # until a sync round has sent ckpt-1 complete
with open(os.path.join(out, "growing.log"), "w") as fh:
    for i in range(30):              # modified every 0.1 s: never settles while we run
        fh.write(f"line {i}\n"); fh.flush(); time.sleep(0.1)
print("done", flush=True)
'''
    env = base_env(home, {**s3.env(), "BOOTSTRAP_OUTPUT_DIR": str(out),
                          "DLS_TRAIN_URL": f"s3://{bucket.name}/run1/",
                          "BOOTSTRAP_SYNC_INTERVAL": "1", "BOOTSTRAP_SYNC_SETTLE_SECONDS": "1",
                          "BOOTSTRAP_LOG_FORMAT": "json"})
    proc = start(["python", "-c", script, str(sent)], env)
    seen_mid_run: dict[str, bytes] = {}
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        seen_mid_run.update(keys(bucket, "run1/"))
        if "run1/ckpt-1.pt" in seen_mid_run:
            sent.touch()
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
