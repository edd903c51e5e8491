"""The images users bring: the bootstrap on its self-contained runtime in Debian bases of
three ages (bullseye's Python 3.9, bookworm's 3.11, trixie's 3.13) and one with no
Python at all, built with docker/Dockerfile and docker/Dockerfile.add, each running a
real job (code from the suite's S3 server) as the image's non-root user.

The bases are debootstrap images built here (docker/build-base.sh; no registry is
reachable), the runtime is compiled once in a builder stage (docker/runtime/build.sh)
and cached by the engine after that."""

from __future__ import annotations

import json
import uuid

import pytest

from devtools.s3server import S3Server
from tests.conftest import REPO, Bucket
from tests.support.dockerlab import docker, stop_when_ready

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

# name: (Debian release, debootstrap --include, the image's python3 version or None)
BASES = {
    "bullseye": ("bullseye", "python3,ca-certificates,procps", "3.9"),
    "bookworm": ("bookworm", "python3,python3-venv,ca-certificates,procps", "3.11"),
    "trixie": ("trixie", "python3,ca-certificates,procps", "3.13"),
    "no-python": ("bookworm", "ca-certificates,procps", None),
}
BUILDER = "bookworm"  # where the runtime is compiled (docker/build-base.sh's default base)

SHOW = b'''
import os, sys
print("python", sys.executable, "%d.%d" % sys.version_info[:2], flush=True)
print("env", {k: os.environ.get(k) for k in ("PATH", "PYTHONHOME", "PYTHONPATH",
      "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "LD_PRELOAD")}, flush=True)
if sys.argv[1:] == ["wait"]:
    import signal, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    print("ready", flush=True)
    time.sleep(120)
sys.exit(7)
'''
SHOW_SH = b'''
echo "python3: $(command -v python3 || echo none)"
echo "PATH=$PATH LD_LIBRARY_PATH=${LD_LIBRARY_PATH-unset} PYTHONHOME=${PYTHONHOME-unset}"
if [ "${1:-}" = wait ]; then
    trap 'exit 143' TERM
    echo ready
    sleep 120 & wait $!
fi
exit 7
'''


def base_image(docker_env: dict[str, str], name: str) -> str:
    import subprocess

    release, include, _ = BASES[name]
    tag = f"bootstrap-base:{name}"
    r = subprocess.run(["bash", str(REPO / "docker/build-base.sh"), tag], capture_output=True,
                       text=True, timeout=1200,
                       env={**docker_env, "RELEASE": release, "INCLUDE": include})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


_BUILT: dict[str, str] = {}


def image_for(docker_env: dict[str, str], name: str, recipe: str = "Dockerfile") -> str:
    """docker/<recipe> on base ``name``, built once per session (the runtime layers
    are shared by all of them: the engine's cache)."""
    key = f"{recipe}-{name}"
    if key not in _BUILT:
        base = base_image(docker_env, name)
        builder = base_image(docker_env, BUILDER)
        tag = f"bootstrap-img-{key.lower().replace('.', '-')}:ci"
        docker(docker_env, "build", "--network", "host", "-q", "-f", str(REPO / "docker" / recipe),
               "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"BUILDER_IMAGE={builder}",
               "-t", tag, str(REPO), timeout=2400)
        _BUILT[key] = tag
    return _BUILT[key]


def image_env(docker_env: dict[str, str], tag: str) -> dict[str, str]:
    """The image's own environment (what its Config sets): the command must get it."""
    config = json.loads(docker(docker_env, "inspect", tag).stdout)[0]["Config"]
    return dict(item.split("=", 1) for item in config.get("Env") or [])


@pytest.mark.parametrize("name", list(BASES))
def test_a_job_runs_on_every_base_with_the_images_own_python(
        docker_env: dict[str, str], s3: S3Server, bucket: Bucket, containers: list[str],
        name: str) -> None:
    tag = image_for(docker_env, name)
    python = BASES[name][2]
    bucket.put_tree({"show.py": SHOW, "show.sh": SHOW_SH}, "code/")
    env_args = [a for k, v in {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/"}.items()
                for a in ("-e", f"{k}={v}")]
    command = ["python3", "show.py"] if python else ["bash", "show.sh"]
    cid = f"bt-img-{uuid.uuid4().hex[:8]}"
    containers.append(cid)
    r = docker(docker_env, "run", "--name", cid, "--network", "host", *env_args, tag,
               "bash", "/home/work/run_train.sh", *command, check=False, timeout=300)
    assert r.returncode == 7, r.stdout + r.stderr  # the command's own code
    assert "stage fetch" in r.stderr and "run_train: error" not in r.stderr
    assert "uid=1101" in r.stderr  # the image's non-root user
    own = image_env(docker_env, tag)
    if python:
        line = next(x for x in r.stdout.splitlines() if x.startswith("python "))
        assert line.split()[1:] == ["/usr/bin/python3", python], line  # the image's
        seen = eval(next(x for x in r.stdout.splitlines() if x.startswith("env "))[4:])
        for key in ("PATH", "PYTHONHOME", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
                    "LD_PRELOAD"):
            assert seen[key] == own.get(key), (key, seen[key], own.get(key))
        # PYTHONPATH: the code and job folders in front (the documented contract), then
        # the image's own; nothing of the bootstrap's.
        mine = ["/home/work/user-job-dir/code", "/home/work/user-job-dir"]
        theirs = [p for p in (own.get("PYTHONPATH") or "").split(":") if p]
        assert seen["PYTHONPATH"].split(":") == mine + theirs, seen["PYTHONPATH"]
    else:
        assert "python3: none" in r.stdout
        assert f"PATH={own['PATH']} LD_LIBRARY_PATH=unset PYTHONHOME=unset" in r.stdout


@pytest.mark.parametrize("name", list(BASES))
def test_docker_stop_ends_the_job_with_143(docker_env: dict[str, str], s3: S3Server,
                                           bucket: Bucket, containers: list[str],
                                           name: str) -> None:
    tag = image_for(docker_env, name)
    bucket.put_tree({"show.py": SHOW, "show.sh": SHOW_SH}, "code/")
    env_args = [a for k, v in {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/"}.items()
                for a in ("-e", f"{k}={v}")]
    command = ["python3", "show.py", "wait"] if BASES[name][2] else ["bash", "show.sh", "wait"]
    cid = docker(docker_env, "run", "-d", "--network", "host", *env_args, tag,
                 "bash", "/home/work/run_train.sh", *command).stdout.strip()
    containers.append(cid)
    assert stop_when_ready(docker_env, cid) == 143, docker(docker_env, "logs", cid).stderr


def test_the_glibc_floor_is_read_from_the_runtimes_elf_files(
        docker_env: dict[str, str]) -> None:
    """The floor is what the binaries ask for, not a claim: every ELF file under
    /opt/bootstrap (interpreter, extension modules, the wheels' libraries) read for its
    GLIBC_x.y needs; the build's record agrees, and it is at most 2.27 (Ubuntu 18.04)."""
    tag = image_for(docker_env, "no-python")
    read = docker(docker_env, "run", "--rm", "--entrypoint", "/opt/bootstrap/bin/python3", tag,
                  "-m", "bootstrap.node.libc", "/opt/bootstrap").stdout.strip()
    recorded = docker(docker_env, "run", "--rm", "--entrypoint", "cat", tag,
                      "/opt/bootstrap/glibc-floor").stdout.strip()
    assert read == recorded
    assert tuple(map(int, read.split("."))) <= (2, 27), read
    print(f"runtime glibc floor: {read}")


def test_check_image_says_what_the_bootstrap_runs_on(docker_env: dict[str, str]) -> None:
    tag = image_for(docker_env, "no-python")
    r = docker(docker_env, "run", "--rm", "--entrypoint", "/opt/bootstrap/bin/bootstrap-check",
               tag, "--image", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("image: ok image.runtime: the self-contained runtime: Python 3.13",
                 "image: ok image.engine: native (obstore", "image: ok image.glibc: glibc 2.36;"
                 " the runtime needs"):
        assert line in r.stdout, r.stdout


def test_dockerfile_add_brings_the_runtime_to_an_image_without_python(
        docker_env: dict[str, str], s3: S3Server, bucket: Bucket, containers: list[str]) -> None:
    tag = image_for(docker_env, "no-python", "Dockerfile.add")
    bucket.put("code/show.sh", SHOW_SH)
    env_args = [a for k, v in {**s3.env(), "DLS_APP_URL": f"s3://{bucket.name}/code/"}.items()
                for a in ("-e", f"{k}={v}")]
    cid = f"bt-add-{uuid.uuid4().hex[:8]}"
    containers.append(cid)
    r = docker(docker_env, "run", "--name", cid, "--network", "host", *env_args, tag,
               "bash", "/home/work/run_train.sh", "bash", "show.sh", check=False, timeout=300)
    assert r.returncode == 7, r.stdout + r.stderr
    assert "python3: none" in r.stdout and "uid=1101" in r.stderr


def test_an_image_below_the_floor_is_refused_in_one_line(docker_env: dict[str, str]) -> None:
    """An image older than the runtime's floor cannot be built here (the oldest suite
    this mirror serves is above it): the runtime's recorded floor is raised instead."""
    tag = image_for(docker_env, "no-python")
    r = docker(docker_env, "run", "--rm", "--user", "0", "--entrypoint", "bash", tag, "-c",
               "echo 99.0 > /opt/bootstrap/glibc-floor && bash /home/work/run_train.sh true",
               check=False)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("run_train: error: ")]
    assert len(errors) == 1 and "needs glibc 99.0 or newer" in errors[0], r.stderr
    assert "GLIBC_" not in r.stderr and "Traceback" not in r.stderr


def test_the_images_own_python_stays_an_option(docker_env: dict[str, str]) -> None:
    """RUNTIME=image: a venv of the image's python3 (3.11 or newer), as before the
    runtime existed; check --image says which one the bootstrap runs on."""
    base = base_image(docker_env, "bookworm")
    tag = "bootstrap-img-own-python:ci"
    docker(docker_env, "build", "--network", "host", "-q", "-f", str(REPO / "docker/Dockerfile"),
           "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"BUILDER_IMAGE={base}",
           "--build-arg", "RUNTIME=image", "-t", tag, str(REPO), timeout=2400)
    r = docker(docker_env, "run", "--rm", "--entrypoint", "/opt/bootstrap/bin/bootstrap-check",
               tag, "--image", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "image: ok image.runtime: the image's own Python: Python 3.11" in r.stdout, r.stdout
    r = docker(docker_env, "run", "--rm", "--entrypoint", "cat", tag, "/opt/bootstrap/pyvenv.cfg")
    assert "/usr/bin" in r.stdout  # a venv of the image's interpreter
