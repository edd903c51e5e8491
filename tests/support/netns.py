"""Several real hosts on one machine for the multi-node tests.

Each node is a network namespace on a private bridge, with its own address, its own
hostname (``unshare --uts``) and its own ``/etc/hosts`` (``ip netns exec`` bind-mounts
``/etc/netns/<ns>/hosts``), so peers resolve by name exactly as on the platform, and
a name can be made to resolve late by appending to that file. Everything created is
removed by name on exit, even when a test fails.

Without root or ``ip``, :class:`LoopbackHosts` stands in: nodes are 127.0.0.x
addresses of this host (no DNS games, no IB devices); tests that need those skip.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2/util-linux missing"
    name = f"btprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed: {exc}"
    return None


class Hosts:
    """``n`` hosts node-0..node-{n-1} on a bridge; ``bridge_ip`` is the root side's."""

    real = True

    def __init__(self, n: int) -> None:
        self.n = n
        self.tag = f"{random.randrange(16**5):05x}"
        self.net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.bridge = f"btb{self.tag}"
        self.bridge_ip = f"{self.net}.254"
        self.procs: list[subprocess.Popen[str]] = []

    def ns(self, i: int) -> str:
        return f"bt{self.tag}n{i}"

    def name(self, i: int) -> str:
        return f"node-{i}"

    def addr(self, i: int) -> str:
        return f"{self.net}.{i + 1}"

    def hosts_file(self, i: int) -> Path:
        return Path("/etc/netns") / self.ns(i) / "hosts"

    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.n):
                ns, veth = self.ns(i), f"btv{self.tag}{i}"
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                self.hosts_file(i).parent.mkdir(parents=True, exist_ok=True)
                self.write_hosts(i, range(self.n))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def write_hosts(self, i: int, known: Sequence[int] | range) -> None:
        """Node i's /etc/hosts, knowing only the nodes in ``known`` (others: no DNS yet)."""
        lines = ["127.0.0.1 localhost"] + [f"{self.addr(j)} {self.name(j)}" for j in known]
        self.hosts_file(i).write_text("\n".join(lines) + "\n")

    def add_host(self, i: int, j: int) -> None:
        """Makes node j resolvable on node i, in place (the bind mount sees the change)."""
        with open(self.hosts_file(i), "a") as fh:
            fh.write(f"{self.addr(j)} {self.name(j)}\n")

    def add_ib(self, i: int, address: str) -> None:
        """An ``ib0`` holding ``address`` (a dummy device, or a veth where this kernel
        has no dummy driver: the bootstrap only reads the device's address)."""
        try:
            _ip("-n", self.ns(i), "link", "add", "ib0", "type", "dummy")
        except subprocess.CalledProcessError:
            _ip("-n", self.ns(i), "link", "add", "ib0", "type", "veth", "peer", "name", "ib0p")
        _ip("-n", self.ns(i), "addr", "add", f"{address}/24", "dev", "ib0")
        _ip("-n", self.ns(i), "link", "set", "ib0", "up")

    def spawn(self, i: int, argv: Sequence[str], env: Mapping[str, str],
              cwd: Path | None = None) -> subprocess.Popen[str]:
        wrapped = ["ip", "netns", "exec", self.ns(i), "unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', self.name(i), *argv]
        proc = subprocess.Popen(wrapped, env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill_all()
        for i in range(self.n):
            subprocess.run(["ip", "netns", "del", self.ns(i)], capture_output=True)
            shutil.rmtree(self.hosts_file(i).parent, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class LoopbackHosts(Hosts):
    """The fallback without namespaces: nodes are 127.0.0.2, .3, ... of this host."""

    real = False

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.bridge_ip = "127.0.0.1"

    def name(self, i: int) -> str:
        return self.addr(i)

    def addr(self, i: int) -> str:
        return f"127.0.0.{i + 2}"

    def __enter__(self) -> LoopbackHosts:
        return self

    def spawn(self, i: int, argv: Sequence[str], env: Mapping[str, str],
              cwd: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(list(argv), env={**env, "GLOO_SOCKET_IFNAME": "lo"}, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill_all()
