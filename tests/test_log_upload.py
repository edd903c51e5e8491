"""Log upload: the log file to BOOTSTRAP_LOG_UPLOAD_URL (or the original's
DLS_UPLOAD_LOG_OBS_DIR) when the job ends, and a bad URL found before the command runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import Bucket, assert_one_error_line, base_env, keys, run_train

pytestmark = pytest.mark.timeout(300)


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
