"""Node 0's side of Ray mode: the head, the other nodes' workers, the wait for all of
them, and their end (see :mod:`.plan` for the why).

The head is ``ray start --head --block`` in a session of its own; each other node's
worker is ``ray start --address=... --block``, started on that node through the job's
ssh client (the MPI mode's launch agent runs it in a session there, streams its output
here and stops it when the client goes away). Before the driver runs, a small Ray
client in the image's Python waits until every node is alive. At the end the workers,
then the head, get SIGTERM (Ray drains and stops its processes), then SIGKILL after
``BOOTSTRAP_GRACE_SECONDS``. ``ray stop`` is never used: it kills every Ray process of
the machine, not only this job's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import backoff, landing
from ..errors import BarrierFailed, ConfigError
from ..log import Log
from .plan import Plan

# Connects as a driver and waits until `want` nodes are alive: the image's Ray, the job's
# token; exit 1 on the deadline.
_READY = r'''
import sys, time, ray
want, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
ray.init(logging_level="ERROR", log_to_driver=False)
while sum(1 for n in ray.nodes() if n.get("Alive")) < want:
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.3)
ray.shutdown()
'''


def ray_python(env: Mapping[str, str]) -> str:
    """The Python that runs the image's ``ray`` command (from its ``#!`` line), or
    ConfigError (exit 2) when the image has no Ray."""
    found = shutil.which("ray", path=env.get("PATH", os.defpath))
    if found is None:
        raise ConfigError("BOOTSTRAP_LAUNCH=ray needs Ray in the image, and `ray` is not on "
                          "PATH: pip install ray (or unset BOOTSTRAP_LAUNCH)")
    with contextlib.suppress(OSError):
        first = Path(found).read_bytes()[:256].split(b"\n", 1)[0].decode(errors="replace")
        if first.startswith("#!") and "python" in first:
            return first[2:].strip().split()[0]
    return "python3"


def write_token(plan: Plan, job_dir: Path) -> Path:
    """The job's Ray token in a 0600 file of a 0700 folder (``RAY_AUTH_TOKEN_PATH``)."""
    folder = job_dir / ".bootstrap-ray"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    token = folder / "token"
    landing.write_text(token, plan.token + "\n", mode=0o600)
    return token


def check_free(address: str, ports: Sequence[int]) -> None:
    """Each of this node's Ray ports is free on its address, or BarrierFailed (exit 5)."""
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError as exc:
                raise BarrierFailed(f"Ray's port {port} on {address} is taken ({exc.strerror}); "
                                    "stop what holds it or choose another BOOTSTRAP_RAY_PORT") \
                    from None


class RayCluster:
    def __init__(self, plan: Plan, head_ip: str, peers: Mapping[int, tuple[str, str]],
                 ssh: Path, env: Mapping[str, str], grace: float, timeout: float,
                 log: Log) -> None:
        """``peers``: rank -> (host, address) for nodes 1..N-1."""
        self.plan, self.head_ip, self.peers, self.ssh = plan, head_ip, dict(peers), ssh
        self.env, self.grace, self.timeout, self.log = dict(env), grace, timeout, log
        self.head: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()

    def sessions(self) -> frozenset[int]:
        """The sessions of our own Ray processes: not the driver's leftovers."""
        procs = [self.head, *self.workers.values()]
        return frozenset(p.pid for p in procs if p is not None)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=sys.stderr.buffer, stderr=sys.stderr.buffer,
                                start_new_session=True)

    def start(self) -> None:
        """The head, every worker, and the wait for all of them; BarrierFailed (exit 5)
        naming what did not come up."""
        python = ray_python(self.env)
        plan, ip = self.plan, self.head_ip
        check_free(ip, [plan.port(0, "gcs")] + [plan.port(0, n) for n in
                                                ("node-manager", "object-manager")])
        deadline = time.monotonic() + self.timeout
        self.head = self._spawn(plan.start_args(0, ip, ip, plan.temp_dir(0)))
        self._wait_for_gcs(deadline)
        for rank, (host, address) in sorted(self.peers.items()):
            remote = shlex.join(plan.start_args(rank, address, ip, plan.temp_dir(rank)))
            self.workers[rank] = self._spawn([str(self.ssh), host, remote])
            threading.Thread(target=self._watch, args=(rank,), daemon=True,
                             name=f"ray-worker-{rank}").start()
        ready = subprocess.run([python, "-c", _READY, str(plan.size),
                                str(max(deadline - time.monotonic(), 1))],
                               env={**self.env, "RAY_ADDRESS": plan.gcs(ip)},
                               stdin=subprocess.DEVNULL, stdout=sys.stderr.buffer,
                               stderr=sys.stderr.buffer, check=False)
        if ready.returncode != 0:
            missing = [r for r, p in self.workers.items() if p.poll() is not None]
            raise BarrierFailed(
                f"the Ray cluster did not form within {self.timeout:g} s "
                f"(BOOTSTRAP_PEER_TIMEOUT)"
                + (f": node(s) {', '.join(map(str, missing))} ended their ray start"
                   if missing else "") + "; see the Ray output above and those nodes' logs")
        self.log.info(f"ray: {plan.size} node(s) in the cluster at {plan.gcs(ip)}; node 0 "
                      "runs the command as the driver")

    def _wait_for_gcs(self, deadline: float) -> None:
        assert self.head is not None
        port = self.plan.port(0, "gcs")
        for left in backoff.tries(deadline, 0.1, 0.5):
            if self.head.poll() is not None:
                raise BarrierFailed(f"ray start --head ended (exit {self.head.returncode}) "
                                    "before its GCS listened; see the Ray output above")
            with socket.socket(socket.AF_INET6 if ":" in self.head_ip else socket.AF_INET) as s:
                s.settimeout(min(left, 1.0))
                if s.connect_ex((self.head_ip, port)) == 0:
                    return
        raise BarrierFailed(f"Ray's head did not listen on {self.head_ip}:{port} within "
                            f"{self.timeout:g} s (BOOTSTRAP_PEER_TIMEOUT)")

    def _watch(self, rank: int) -> None:
        """A worker that ends while the driver runs is reported, as a node lost."""
        code = self.workers[rank].wait()
        # The supervisor reaps every child (waitpid(-1)) and may take this one's status
        # first; wait() then reads 0, so a 0 says nothing and is not shown.
        said = f" (exit {code})" if code else ""
        if not self._stopping.is_set():
            self.log.warn(f"ray: node {rank}'s worker ended{said} while the job ran: that "
                          "node is lost to the cluster; see its log")

    def stop(self) -> None:
        """Workers first, then the head: SIGTERM, the grace period, SIGKILL."""
        self._stopping.set()
        for procs in (list(self.workers.values()), [self.head]):
            live = [p for p in procs if p is not None and p.poll() is None]
            for p in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
            end = time.monotonic() + self.grace
            for p in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(end - time.monotonic(), 0.1))
            for p in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
