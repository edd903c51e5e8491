"""Bad input, row by row: each case exits with its documented code and says what is
wrong in one line, with no traceback and nothing written outside the job's folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.s3server import S3Server
from tests.conftest import RUN_TRAIN, Bucket, assert_one_error_line, base_env, run_train
from tests.support.hostile_s3 import HostileS3

HOSTS2 = {"DLS_TASK_INDEX": "0", "DLS_TASK_NUMBER": "2", "BATCH_CUSTOM0_HOSTS": "n0:6000",
          "BATCH_CUSTOM1_HOSTS": "n1:6000"}
S3 = "USE_S3"  # placeholder: the row needs the suite's S3 server and a code bucket

# (id, argv, env, exit code, words the one error line must hold)
ROWS: list[tuple[str, list[str], dict[str, str], int, tuple[str, ...]]] = [
    ("no-command", [], {}, 2, ("no command",)),
    ("empty-command", [""], {}, 2, ("empty string",)),
    ("missing-file", ["python", "nope.py"], {}, 2, ("nope.py", "looked in")),
    ("unknown-command", ["no-such-cmd-zz"], {}, 127, ("command not found",)),
    ("not-executable", ["./plain.txt"], {}, 126, ("not an executable",)),
    ("scheme-http", ["true"], {"DLS_APP_URL": "http://host/code/"}, 2, ("unknown scheme",)),
    ("scheme-ftp", ["true"], {"DLS_APP_URL": "ftp://b/x"}, 2, ("unknown scheme",)),
    ("no-bucket", ["true"], {"DLS_APP_URL": "s3:///code/"}, 2, ("no bucket name",)),
    ("bad-bucket", ["true"], {"DLS_APP_URL": "obs://Bad_Bucket/x"}, 2, ("valid bucket",)),
    ("dotdot-url", ["true"], {"DLS_APP_URL": "s3://bucket/../x"}, 2, ("'..'",)),
    ("file-relative", ["true"], {"DLS_APP_URL": "file://code"}, 2, ("absolute path",)),
    ("hosts-gap", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "", "BATCH_CUSTOM2_HOSTS": "n2:1"},
     2, ("gaps", "missing [1]")),
    ("hosts-no-port", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "n1"}, 2, ("host:port",)),
    ("hosts-port-range", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "n1:0"}, 2,
     ("out of range",)),
    ("hosts-port-text", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "n1:ssh"}, 2,
     ("not a number",)),
    ("hosts-duplicate", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "n0:6000"}, 2,
     ("repeats",)),
    ("hosts-bad-name", ["true"], {**HOSTS2, "BATCH_CUSTOM1_HOSTS": "n 1:6000"}, 2,
     ("valid host",)),
    ("index-outside", ["true"], {**HOSTS2, "DLS_TASK_INDEX": "2"}, 2, ("outside [0, 2)",)),
    ("index-negative", ["true"], {**HOSTS2, "DLS_TASK_INDEX": "-1"}, 2, ("DLS_TASK_INDEX",)),
    ("index-text", ["true"], {**HOSTS2, "DLS_TASK_INDEX": "first"}, 2, ("DLS_TASK_INDEX",)),
    ("count-disagrees", ["true"], {**HOSTS2, "DLS_TASK_NUMBER": "3"}, 2,
     ("DLS_TASK_NUMBER=3",)),
    ("count-zero", ["true"], {**HOSTS2, "DLS_TASK_NUMBER": "0"}, 2, ("DLS_TASK_NUMBER",)),
    ("vc-index-text", ["true"], {"VC_WORKER_HOSTS": "a,b", "VC_TASK_INDEX": "x"}, 2,
     ("VC_TASK_INDEX",)),
    ("vc-count-disagrees", ["true"], {"VC_WORKER_HOSTS": "a,b", "MA_NUM_HOSTS": "4"}, 2,
     ("MA_NUM_HOSTS=4",)),
    ("contracts-disagree", ["true"], {**HOSTS2, "VC_WORKER_HOSTS": "a,b,c"}, 2, ("disagree",)),
    ("workers-zero", ["true"], {"BOOTSTRAP_DOWNLOAD_WORKERS": "0"}, 2,
     ("BOOTSTRAP_DOWNLOAD_WORKERS",)),
    ("workers-negative", ["true"], {"BOOTSTRAP_DOWNLOAD_WORKERS": "-4"}, 2,
     ("BOOTSTRAP_DOWNLOAD_WORKERS",)),
    ("attempts-float", ["true"], {"BOOTSTRAP_RETRY_ATTEMPTS": "1.5"}, 2,
     ("BOOTSTRAP_RETRY_ATTEMPTS", "whole number")),
    ("range-tiny", ["true"], {"BOOTSTRAP_RANGE_SIZE": "10"}, 2, ("BOOTSTRAP_RANGE_SIZE",)),
    ("timeout-text", ["true"], {"BOOTSTRAP_PEER_TIMEOUT": "soon"}, 2,
     ("BOOTSTRAP_PEER_TIMEOUT",)),
    ("grace-negative", ["true"], {"BOOTSTRAP_GRACE_SECONDS": "-1"}, 2,
     ("BOOTSTRAP_GRACE_SECONDS",)),
    ("sync-interval-text", ["true"], {"BOOTSTRAP_SYNC_INTERVAL": "often"}, 2,
     ("BOOTSTRAP_SYNC_INTERVAL",)),
    ("read-timeout-zero", ["true"], {"BOOTSTRAP_S3_READ_TIMEOUT": "0"}, 2,
     ("BOOTSTRAP_S3_READ_TIMEOUT",)),
    ("master-port-range", ["true"], {"BOOTSTRAP_MASTER_PORT": "70000"}, 2,
     ("BOOTSTRAP_MASTER_PORT",)),
    ("expect-gpus-negative", ["true"], {"BOOTSTRAP_EXPECT_GPUS": "-1"}, 2,
     ("BOOTSTRAP_EXPECT_GPUS",)),
    ("ma-gpus-text", ["true"], {"MA_NUM_GPUS": "eight"}, 2, ("MA_NUM_GPUS",)),
    ("min-shm-text", ["true"], {"BOOTSTRAP_MIN_SHM_MB": "lots"}, 2, ("BOOTSTRAP_MIN_SHM_MB",)),
    ("fatal-unknown", ["true"], {"BOOTSTRAP_FATAL_CHECKS": "gpu.magic"}, 2,
     ("unknown checks",)),
    ("log-format", ["true"], {"BOOTSTRAP_LOG_FORMAT": "xml"}, 2, ("BOOTSTRAP_LOG_FORMAT",)),
    ("log-cap-text", ["true"], {"BOOTSTRAP_LOG_MAX_MB": "1G"}, 2, ("BOOTSTRAP_LOG_MAX_MB",)),
    ("log-cap-negative", ["true"], {"BOOTSTRAP_LOG_MAX_MB": "-5"}, 2,
     ("BOOTSTRAP_LOG_MAX_MB",)),
    ("restore-choice", ["true"], {"BOOTSTRAP_RESTORE": "yes"}, 2,
     ("BOOTSTRAP_RESTORE", "auto")),
    ("layout-choice", ["true"], {"BOOTSTRAP_OUTPUT_LAYOUT": "per-rank"}, 2,
     ("BOOTSTRAP_OUTPUT_LAYOUT", "shared")),
    ("evidence-flag", ["true"], {"BOOTSTRAP_EVIDENCE": "sometimes"}, 2,
     ("BOOTSTRAP_EVIDENCE",)),
    ("supervise-flag", ["true"], {"BOOTSTRAP_SUPERVISE": "maybe"}, 2, ("BOOTSTRAP_SUPERVISE",)),
    ("output-no-train-url", ["true"], {"BOOTSTRAP_OUTPUT_DIR": "/tmp/x-out"}, 2,
     ("DLS_TRAIN_URL",)),
    ("train-url-local", ["true"], {"BOOTSTRAP_OUTPUT_DIR": "/tmp/x-out",
                                   "DLS_TRAIN_URL": "file:///tmp/y"}, 2, ("s3:// or obs://",)),
    ("endpoint-scheme", ["true"], {"DLS_APP_URL": "s3://bucket/x/",
                                   "AWS_ENDPOINT_URL": "ftp://host"}, 2, ("http(s) URL",)),
    ("endpoint-port", ["true"], {"DLS_APP_URL": "s3://bucket/x/", "AWS_ENDPOINT_URL": "",
                                 "S3_ENDPOINT": "host:port"}, 2, ("invalid port",)),
    ("verify-ssl-flag", ["true"], {"DLS_APP_URL": "s3://bucket/x/", "S3_VERIFY_SSL": "sure"},
     2, ("S3_VERIFY_SSL",)),
    ("ray-one-node", ["true"], {"BOOTSTRAP_LAUNCH": "ray", "BOOTSTRAP_JOB_SECRET": "s" * 20,
                                "BATCH_job.0_HOSTS": "localhost:6123"}, 2,
     ("BOOTSTRAP_LAUNCH=ray", "several nodes")),
    ("ray-port-on-master-port", ["true"], {**HOSTS2, "BOOTSTRAP_LAUNCH": "ray",
                                           "BOOTSTRAP_JOB_SECRET": "s" * 20,
                                           "BOOTSTRAP_RAY_PORT": "5998"}, 2,
     ("BOOTSTRAP_RAY_PORT=5998", "MASTER_PORT")),
    ("ray-workers-ephemeral", ["true"], {**HOSTS2, "BOOTSTRAP_LAUNCH": "ray",
                                         "BOOTSTRAP_JOB_SECRET": "s" * 20,
                                         "BOOTSTRAP_RAY_WORKER_PORTS": "40000-40100"}, 2,
     ("BOOTSTRAP_RAY_WORKER_PORTS", "ephemeral")),
    ("ray-workers-not-a-range", ["true"], {**HOSTS2, "BOOTSTRAP_LAUNCH": "ray",
                                           "BOOTSTRAP_RAY_WORKER_PORTS": "10000"}, 2,
     ("BOOTSTRAP_RAY_WORKER_PORTS", "lo-hi")),
    ("ray-not-in-the-image", ["true"], {**HOSTS2, "BOOTSTRAP_LAUNCH": "ray",
                                        "BOOTSTRAP_JOB_SECRET": "s" * 20,
                                        "PATH": "/usr/bin:/bin",
                                        "BOOTSTRAP_PYTHON": sys.executable}, 2,
     ("needs Ray in the image", "pip install ray")),
    ("detached-unknown", ["true"], {"BOOTSTRAP_DETACHED": "kill"}, 2, ("BOOTSTRAP_DETACHED",)),
    ("refused", ["true"], {"DLS_APP_URL": "s3://bucket/x/",
                           "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                           "BOOTSTRAP_RETRY_ATTEMPTS": "2"}, 127, ("cannot connect",)),
    ("no-credentials", ["true"], {"DLS_APP_URL": S3, "AWS_ACCESS_KEY_ID": "",
                                  "AWS_SECRET_ACCESS_KEY": ""}, 127,
     ("no object-store credentials",)),
    ("wrong-secret", ["true"], {"DLS_APP_URL": S3, "AWS_SECRET_ACCESS_KEY": "wrong-one"}, 127,
     ("secret key does not match",)),
    ("missing-prefix", ["true"], {"DLS_APP_URL": "s3://bad-input-code/absent/"}, 127,
     ("no objects under",)),
    ("app-url-names-a-file", ["true"], {"DLS_APP_URL": "s3://bad-input-code/code/train.py"},
     127, ("names a file, not a folder", "s3://bad-input-code/code/")),
    ("unwritable-home", ["true"], {"DLS_APP_URL": S3, "BOOTSTRAP_HOME": "/dev/null/home"}, 127,
     ("cannot create",)),
]


@pytest.fixture(scope="module")
def code_bucket(s3: S3Server) -> str:
    client = s3.client()
    client.create_bucket(Bucket="bad-input-code")
    Bucket("bad-input-code", client).put_tree({"train.py": b"print(1)\n",
                                               "big.bin": os.urandom(2 * 2**20)}, "code/")
    return "s3://bad-input-code/code/"


def test_the_table_has_at_least_thirty_rows() -> None:
    assert len(ROWS) >= 30 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("case, argv, extra, code, words", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(s3: S3Server, code_bucket: str, home: Path, tmp_path: Path, case: str,
                   argv: list[str], extra: dict[str, Any], code: int,
                   words: tuple[str, ...]) -> None:
    (tmp_path / "plain.txt").write_text("not a program\n")
    env = base_env(home, s3.env())
    for key, value in extra.items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = code_bucket if value == S3 else value
    r = run_train(argv, env, cwd=tmp_path, timeout=120)
    assert r.returncode == code, r.stderr
    assert_one_error_line(r.stderr, *words)
    assert r.stdout == ""


def test_endpoint_that_is_not_s3(home: Path) -> None:
    with HostileS3({}, html=True) as srv:
        env = base_env(home, {"AWS_ENDPOINT_URL": srv.endpoint, "AWS_ACCESS_KEY_ID": "k",
                              "AWS_SECRET_ACCESS_KEY": "s", "DLS_APP_URL": "s3://bucket/code/"})
        r = run_train(["true"], env)
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "did not answer like an S3 server")


def test_full_destination(s3: S3Server, code_bucket: str, home: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    env = base_env(tiny, {**s3.env(), "DLS_APP_URL": code_bucket})
    r = subprocess.run(["unshare", "--mount", "sh", "-c",
                        f'mount -t tmpfs -o size=512k tmpfs "{tiny}" && exec bash "$0" true',
                        str(RUN_TRAIN)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 127, r.stderr
    assert_one_error_line(r.stderr, "No space left")
