"""Shared fixtures: one real SeaweedFS S3 server per test run, fresh buckets per test,
and a helper that runs the real entrypoint (scripts/run_train.sh) as a user would."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devtools.s3server import S3Server
from tests.support.dockerlab import docker, engine
from tests.support.netns import Hosts, LoopbackHosts, namespaces_available

if TYPE_CHECKING:
    from tests.support.lab import Lab

REPO = Path(__file__).resolve().parent.parent
RUN_TRAIN = REPO / "scripts" / "run_train.sh"
VENV_BIN = str(Path(sys.executable).parent)


# The NVML fake (tests/support/fake_nvml.py, loaded by the bootstrap as its NVML module): a
# healthy 8-GPU node, and the environment that makes a run use a scenario.
HEALTHY = {"mode": "ok", "driver": "550.54.15", "cuda": 12040, "gpus": [{}] * 8}

# The families of environment variable names the README's table must cover.
NAME = re.compile(r"(?:BOOTSTRAP|DLS|BATCH|VC|MA|S3|OBS|AWS|PET|CUDA|NVIDIA|PIP|TF|NCCL|GLOO|"
                  r"OMPI|SSL|PRTE|HYDRA|PDSH|PADDLE|JAX|RAY|TORCH)_[A-Z0-9_]+|MASTER_ADDR|"
                  r"MASTER_PORT|NNODES|NODE_RANK|WORLD_SIZE|RANK|POD_IP|TMPDIR|PYTHONPATH|"
                  r"PYTHONUNBUFFERED")


def variables_in_code(skip: frozenset[str] = frozenset()) -> set[str]:
    """Every string in the bootstrap's code (any quoting, the keys of dicts and the
    arguments of env.get/parse helpers alike) that is a whole variable name of the
    families above; an f-string's pieces are fragments (``BATCH_CUSTOM{i}_HOSTS``), not
    names. ``skip``: module-level names whose assigned values are not scanned (a list of
    the names themselves, such as ``settings.VARIABLES``)."""
    found: set[str] = set()
    for path in (REPO / "bootstrap").rglob("*.py"):  # subpackages too (storage/)
        tree = ast.parse(path.read_text())
        pieces = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                  for part in node.values}
        pieces |= {id(inner) for node in tree.body if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id in skip for t in node.targets)
                   for inner in ast.walk(node.value)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in pieces and NAME.fullmatch(node.value):
                found.add(node.value)
    return found


def fake_env(scenario: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"BOOTSTRAP_NVML_MODULE": "tests.support.fake_nvml", "FAKE_NVML": json.dumps(scenario),
            "PYTHONPATH": str(REPO), **extra}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@dataclass
class Bucket:
    name: str
    client: Any

    def put(self, key: str, body: bytes = b"") -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def put_tree(self, files: Mapping[str, bytes], prefix: str = "") -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: self.put(prefix + kv[0], kv[1]), files.items()))

    def put_multipart(self, key: str, parts: list[bytes]) -> str:
        """``key`` as a multipart upload of ``parts`` (each but the last >= 5 MiB); its
        ETag, without quotes (``...-N``)."""
        up = self.client.create_multipart_upload(Bucket=self.name, Key=key)
        done = [{"PartNumber": n, "ETag": self.client.upload_part(
                    Bucket=self.name, Key=key, PartNumber=n, UploadId=up["UploadId"],
                    Body=body)["ETag"]} for n, body in enumerate(parts, 1)]
        self.client.complete_multipart_upload(Bucket=self.name, Key=key,
                                              UploadId=up["UploadId"],
                                              MultipartUpload={"Parts": done})
        etag: str = self.client.head_object(Bucket=self.name, Key=key)["ETag"].strip('"')
        return etag


def keys(bucket: Bucket, prefix: str) -> dict[str, bytes]:
    """The user's objects under ``prefix`` (the bootstrap's own ``.bootstrap/`` left out)."""
    resp = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)
    return {o["Key"]: bucket.client.get_object(Bucket=bucket.name, Key=o["Key"])["Body"].read()
            for o in resp.get("Contents", []) if "/.bootstrap/" not in o["Key"]}


@pytest.fixture
def bucket(s3: S3Server) -> Bucket:
    name = "t-" + uuid.uuid4().hex[:12]
    client = s3.client()
    client.create_bucket(Bucket=name)
    return Bucket(name, client)


def base_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no platform variables leak in from the developer's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DLS_", "BATCH_", "VC_", "MA_", "BOOTSTRAP_", "AWS_", "S3_",
                                "OBS_", "PET_", "MASTER_", "PADDLE_", "RAY_"))
           and k not in ("WORLD_SIZE", "RANK", "NODE_RANK", "NNODES", "TMPDIR", "PYTHONPATH",
                         "POD_IP")}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", os.defpath)
    env["BOOTSTRAP_HOME"] = str(home)
    env["BOOTSTRAP_CACHE_DIR"] = str(home / "no-cache")  # tests never touch a real /cache
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # botocore's chain must not probe 169.254.x
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "no-aws")
    env.update(extra or {})
    return env


def log_records(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines (BOOTSTRAP_LOG_FORMAT=json) of a run's stderr, in order; the
    command's own output lines are left out."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def stage(stderr: str, name: str) -> dict[str, Any]:
    """The one record of stage ``name`` (its fields: seconds, files, ...)."""
    found = [r for r in log_records(stderr) if r.get("stage") == name]
    assert len(found) == 1, f"stage {name!r}: {len(found)} records in\n{stderr}"
    return found[0]


def run_train(argv: list[str], env: Mapping[str, str], cwd: Path | None = None,
              timeout: float = 120, script: Path = RUN_TRAIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *argv], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The real entrypoint started, its output streams piped (run_train, without waiting)."""
    return subprocess.Popen(["bash", str(RUN_TRAIN), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def assert_one_error_line(stderr: str, *needles: str) -> str:
    """The user-error contract: exactly one ``run_train: error:`` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("run_train: error: ")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def record(home: Path) -> dict[str, Any]:
    """The failure record (failure.json) of the job whose home is ``home``."""
    data: dict[str, Any] = json.loads((home / "user-job-dir" / "failure.json").read_text())
    return data


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = namespaces_available()
    hosts: Hosts = Hosts(4) if reason is None else LoopbackHosts(4)
    if reason is not None:
        print(f"multi-node tests run on loopback addresses: {reason}")
    from tests.support.lab import ALLREDUCE, Lab

    with hosts, S3Server(ip=hosts.bridge_ip) as s3:
        client = s3.client()
        client.create_bucket(Bucket="mn-code")
        client.put_object(Bucket="mn-code", Key="job/allreduce.py", Body=ALLREDUCE.encode())
        yield Lab(hosts, s3, "s3://mn-code/job/")


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    with engine() as (host, reason):
        if host is None:
            pytest.skip(f"no Docker engine: {reason}")
        yield {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "0"}


@pytest.fixture
def containers(docker_env: dict[str, str]) -> Iterator[list[str]]:
    """Every container a test starts is removed by its id afterwards."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        docker(docker_env, "rm", "-f", cid, check=False)
