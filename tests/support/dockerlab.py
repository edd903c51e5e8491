"""A Docker engine for the tests: the machine's own when one answers, else a dockerd
started here with its own data and exec roots (overlay2, no iptables), stopped by its
pid at the end of the session. Its data root persists, so the locally built base image
and the build cache survive between runs on the same machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.wait import wait_until

DATA_ROOT = "/var/lib/bootstrap-docker"
EXEC_ROOT = "/run/bootstrap-docker"
SOCKET = f"unix://{EXEC_ROOT}/docker.sock"


def _answers(host: str | None) -> bool:
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def engine() -> Iterator[tuple[str | None, str]]:
    """Yields (DOCKER_HOST, reason): DOCKER_HOST None with the reason when no engine."""
    if shutil.which("docker") is None:
        yield None, "the docker client is not installed"
        return
    for host in (os.environ.get("DOCKER_HOST"), SOCKET):
        if host and _answers(host):
            yield host, ""
            return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        yield None, "no Docker engine answers and dockerd cannot be started here (needs root)"
        return
    os.makedirs(DATA_ROOT, exist_ok=True)
    os.makedirs(EXEC_ROOT, exist_ok=True)
    log = open(os.path.join(EXEC_ROOT, "dockerd.log"), "ab")  # noqa: SIM115 - lives with it
    proc = subprocess.Popen(["dockerd", "--data-root", DATA_ROOT, "--exec-root", EXEC_ROOT,
                             "--pidfile", os.path.join(EXEC_ROOT, "dockerd.pid"), "-H", SOCKET,
                             "--storage-driver", "overlay2", "--iptables=false"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(SOCKET), 60, interval=0.5)
        if not _answers(SOCKET):
            yield None, f"dockerd did not start (see {EXEC_ROOT}/dockerd.log)"
            return
        yield SOCKET, ""
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def docker(env: dict[str, str], *args: str, timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({r.returncode}): "
                             f"{r.stderr[-3000:]}")
    return r


def stop_when_ready(env: dict[str, str], cid: str, grace: int = 20) -> int:
    """Waits until container ``cid`` has logged "ready", stops it as the platform would
    (SIGTERM, then SIGKILL after ``grace`` seconds) and returns its exit code."""
    import json

    assert wait_until(lambda: "ready" in docker(env, "logs", cid).stdout, 120, interval=0.5), \
        docker(env, "logs", cid).stderr
    docker(env, "stop", "-t", str(grace), cid)
    code: int = json.loads(docker(env, "inspect", cid).stdout)[0]["State"]["ExitCode"]
    return code
