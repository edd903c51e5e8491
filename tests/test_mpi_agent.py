"""The launch agent and its ssh client over loopback, one agent in this process: what
the client streams, and every hostile connection refused with nothing run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.cluster import auth
from bootstrap.cluster.wire import Wire
from bootstrap.errors import LauncherLost
from bootstrap.log import Log, Redactor
from bootstrap.mpi import plan as mpi
from bootstrap.mpi.agent import Agent
from bootstrap.mpi.channel import Channel
from bootstrap.mpi.launcher import Launcher
from tests.support.lab import port
from tests.support.wait import wait_until

pytest.importorskip("cryptography")
KEY = auth.derive("a-shared-job-secret-for-tests", "job-1", mpi.PROTOCOL)


class Running:
    def __init__(self, agent: Agent, log: io.StringIO, config: Path) -> None:
        self.agent, self.log, self.config = agent, log, config

    def ssh(self, *args: str, input: bytes | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), input=input, capture_output=True,
                              timeout=timeout)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bootstrap.mpi.ssh", str(self.config), *args]

    def refusals(self) -> list[str]:
        return [line for line in self.log.getvalue().splitlines() if "agent: refused" in line]


def start(tmp_path: Path, allowed: set[str], key: bytes = KEY,
          timeout: float = 60) -> Running:
    base = port()
    p = mpi.Plan(1, ("node0", "node1"), (base, base + 1), key, True, timeout)
    stream = io.StringIO()
    log = Log(Redactor({}), "text", stream)
    agent = Agent(p, "127.0.0.1", allowed, dict(os.environ), tmp_path, 2.0, log)
    agent.start()
    config = tmp_path / "client.json"
    client = mpi.Plan(0, p.hosts, p.ports, KEY, False, timeout)
    config.write_text(json.dumps(mpi.client_config(client, {"node1": "127.0.0.1"})))
    return Running(agent, stream, config)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start(tmp_path, {"127.0.0.1"})
    yield r
    r.agent.close()


def test_stdio_and_the_exit_code_are_the_remote_commands(running: Running) -> None:
    r = running.ssh("-x", "-p", "22", "-o", "StrictHostKeyChecking=no", "-oBatchMode=yes",
                    "root@node1", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    r = running.ssh("node1", "cat", "|", "tr", "a-z", "A-Z", input=b"through stdin\n")
    assert (r.returncode, r.stdout) == (0, b"THROUGH STDIN\n")
    r = running.ssh("-n", "node1", "cat")  # -n: stdin closed at once, cat ends
    assert (r.returncode, r.stdout) == (0, b"")


def test_a_signal_reaches_the_remote_command(running: Running, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(running.argv(
        "node1", f"trap 'echo got TERM; exit 9' TERM; touch {ready}; sleep 30 & wait"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(ready.exists, 20)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert (proc.returncode, out) == (9, b"got TERM\n")


def test_client_failures_exit_255_with_one_line(running: Running) -> None:
    r = running.ssh("node7", "true")
    assert r.returncode == 255 and r.stderr.count(b"\n") == 1
    assert b"node7 is not a host of this job" in r.stderr
    r = running.ssh("node1")
    assert r.returncode == 255 and b"no command given" in r.stderr


def raw(running: Running) -> socket.socket:
    return socket.create_connection(("127.0.0.1", running.agent.plan.ports[1]), timeout=5)


def wait_for(running: Running, count: int) -> list[str]:
    wait_until(lambda: len(running.refusals()) >= count, 10)
    return running.refusals()


def test_a_wrong_key_runs_nothing(running: Running, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    sock = raw(running)
    wire = Wire(sock)
    with pytest.raises(auth.Refused):
        auth.connect_session(wire, auth.derive("another-secret-entirely", "job-1",
                                               mpi.PROTOCOL), mpi.PROTOCOL, 0, 1,
                             time.monotonic() + 5)
    sock.close()
    assert len(wait_for(running, 1)) == 1 and not marker.exists()


def closed_within(sock: socket.socket, seconds: float, trickle: bool = False) -> float:
    """Seconds until the agent closed ``sock`` (sending a byte a second meanwhile when
    ``trickle``), failing past ``seconds``."""
    started = time.monotonic()
    sock.settimeout(1)
    while time.monotonic() - started < seconds:
        try:
            if not sock.recv(4096):
                return time.monotonic() - started
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(b"{")
                except OSError:
                    return time.monotonic() - started
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"still open after {seconds} s")


def test_garbage_and_a_trickler_are_refused(running: Running) -> None:
    sock = raw(running)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    closed_within(sock, 5)
    sock.close()
    trickler = raw(running)  # one byte a second, never a whole line
    assert 4 <= closed_within(trickler, 9, trickle=True) < 8  # the handshake's 5 s
    trickler.close()
    assert len(wait_for(running, 2)) == 2


def test_a_connection_from_outside_the_job_is_closed_unread(tmp_path: Path) -> None:
    r = start(tmp_path, {"10.254.254.254"})  # the job's nodes: not this address
    try:
        result = r.ssh("node1", f"touch {tmp_path / 'ran'}")
        assert result.returncode == 255 and not (tmp_path / "ran").exists()
        assert any("not a node of this job" in line for line in wait_for(r, 1))
    finally:
        r.agent.close()


def test_a_recorded_session_replayed_runs_nothing(running: Running, tmp_path: Path) -> None:
    # A proxy records what a real client sends; the same bytes, sent again in a new
    # connection, fail the handshake (the agent's nonce is fresh): nothing runs again.
    marker = tmp_path / "ran"
    recorded = bytearray()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def proxy() -> None:
        conn, _ = listener.accept()
        upstream = raw(running)

        def pipe(a: socket.socket, b: socket.socket, keep: bool) -> None:
            try:
                while data := a.recv(65536):
                    if keep:
                        recorded.extend(data)
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, conn, False), daemon=True).start()
        pipe(conn, upstream, True)

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    config = json.loads(running.config.read_text())
    config["agents"]["node1"] = [1, "127.0.0.1", listener.getsockname()[1]]
    proxied = tmp_path / "proxied.json"
    proxied.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "bootstrap.mpi.ssh", str(proxied), "node1",
                           f"touch {marker}"], capture_output=True, timeout=30)
    assert done.returncode == 0 and marker.exists(), done.stderr
    thread.join(10)
    marker.unlink()
    before = len(running.refusals())
    sock = raw(running)
    sock.recv(256)  # a new greeting, a new nonce
    sock.sendall(bytes(recorded))
    wait_for(running, before + 1)  # the agent has judged the replay before it hangs up
    sock.close()
    assert len(wait_for(running, before + 1)) == before + 1
    assert not marker.exists()


def test_only_node_0_may_hold_the_control_connection(running: Running) -> None:
    sock = raw(running)
    wire = Wire(sock)
    session = auth.connect_session(wire, KEY, mpi.PROTOCOL, 1, 1, time.monotonic() + 5)
    channel = Channel(wire, session, "client")
    channel.send_json({"op": "control"})
    assert "error" in channel.recv_json(time.monotonic() + 5)
    channel.close()
    assert not running.agent._controlled.is_set()


def test_the_launchers_code_ends_the_agent_and_its_absence_is_bounded(tmp_path: Path) -> None:
    r = start(tmp_path, {"127.0.0.1"})
    launcher = Launcher(mpi.Plan(0, r.agent.plan.hosts, r.agent.plan.ports, KEY, False, 60),
                        {"node1": "127.0.0.1"}, Log(Redactor({}), "text", io.StringIO()))
    launcher.connect_all()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(r.agent.wait()))
    waiter.start()
    launcher.finish(7)
    waiter.join(10)
    assert got == [7]

    lonely = start(tmp_path, {"127.0.0.1"}, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(LauncherLost, match="never connected"):
        lonely.agent.wait()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("extra, named", [
    ({"AWS_SESSION_TOKEN": "short-lived-token"}, "BOOTSTRAP_JOB_SECRET"),
    ({"BOOTSTRAP_JOB_SECRET_FILE": "/nonexistent/secret"}, "BOOTSTRAP_JOB_SECRET_FILE"),
    ({"BOOTSTRAP_JOB_SECRET": "a-job-secret-of-enough-length", "BOOTSTRAP_AGENT_PORT": "5999"},
     "BOOTSTRAP_AGENT_PORT=5999"),
])
def test_a_launch_that_cannot_be_secured_stops_before_anything_runs(
        home: Path, tmp_path: Path, extra: dict[str, str], named: str) -> None:
    from tests.conftest import assert_one_error_line, base_env, run_train

    ran = tmp_path / "ran"
    env = base_env(home, {"BOOTSTRAP_LAUNCH": "mpi", "DLS_TASK_INDEX": "0",
                          "DLS_TASK_NUMBER": "2", "BATCH_CUSTOM0_HOSTS": "node-a:6000",
                          "BATCH_CUSTOM1_HOSTS": "node-b:6000", "AWS_ACCESS_KEY_ID": "AKIDX",
                          "AWS_SECRET_ACCESS_KEY": "secret-of-the-store-123", **extra})
    r = run_train(["touch", str(ran)], env)
    assert r.returncode == 2 and not ran.exists(), r.stderr
    line = assert_one_error_line(r.stderr, named)
    assert "secret-of-the-store-123" not in r.stderr and "short-lived-token" not in line
