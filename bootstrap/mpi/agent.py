"""The launch agent on nodes 1..N-1: the remote shell the launcher's ssh client talks
to, and the wait for the launcher's end.

Threat model (README "MPI-style launch"): the agent runs commands, so everything it
accepts is proven first and nothing it refuses runs.

* It listens only in ``BOOTSTRAP_LAUNCH=mpi``, only on this node's own address in the
  job (not every interface), and only while the job runs.
* A connection from an address that is not one of the job's nodes is closed before a
  byte is read. Every other one must pass the mutual handshake of
  :mod:`bootstrap.cluster.auth` with the agents' own derived key (a reflected, replayed
  or forged greeting fails there) within 5 s; then every frame is sealed
  (:mod:`.channel`). A refusal runs nothing and is logged once, with the address.
* Only node 0 may hold the control connection that ends the job; remote commands run
  only on the host's chosen agent (:func:`.plan.agent_for`), as the bootstrap's own
  user (never root unless the bootstrap already is), with the command's environment.

Lifetimes: each remote command runs in its own session (``setsid``); when its client
goes away every process of that session gets SIGTERM, then SIGKILL after
``BOOTSTRAP_GRACE_SECONDS`` (what sshd's hang-up does, made certain). The session, not
the process group: Open MPI's orted puts each rank in a group of its own, and a rank
must not outlive its node's part of the job. When the agent ends, whatever is left of
its sessions is stopped the same way. The agent ends with the launcher's exit code; if the
launcher never connects within ``BOOTSTRAP_PEER_TIMEOUT``, or its control connection
drops without a code (node 0 died), the agent stops its commands and exits 5 with one
line. A stop signal (``docker stop``) stops the commands the same way.

Hangs: node 0's hang watchdog sees every rank's output (the launchers forward it), so it
is the one that decides. With the watchdog on, the commands run here get its stack-dump
hook (``BOOTSTRAP_STACKS_DIR`` on this node); on a hang node 0 asks each agent over the
control connection for its sessions' Python stacks, and each answers within a few
seconds, writing them into its own node's ``hang-stacks.txt`` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import IO

from ..cluster import auth
from ..cluster.wire import Wire, hang_up
from ..errors import LauncherLost
from ..log import Log
from ..run import watchdog
from ..run.logfile import CappedLog
from .channel import HANDSHAKE, JSON, STDERR, STDIN, STDOUT, Broken, Channel
from .plan import PROTOCOL, Plan

MAX_PENDING = 16  # connections in their handshake at once
MAX_STACKS = 512 * 1024  # of one node's stacks in one answer (a frame holds 1 MiB)


class Agent:
    def __init__(self, plan: Plan, bind: str, allowed: Collection[str], env: Mapping[str, str],
                 cwd: Path | None, grace: float, log: Log) -> None:
        self.plan, self.env, self.cwd, self.grace, self.log = plan, dict(env), cwd, grace, log
        self.allowed = frozenset(allowed)
        self.tee: CappedLog | None = None  # the node's log file: remote output lands there too
        self.stacks: tuple[Path, Path] | None = None  # the hook's folder, the stacks file
        self._dumps = 0
        self.code: int | None = None
        self._controlled = threading.Event()
        self._ended = threading.Event()  # the control connection is over (code or not)
        self._sessions: set[subprocess.Popen[bytes]] = set()
        self._sids: set[int] = set()  # every session started: swept at the end
        self._lock = threading.Lock()
        self._pending = threading.Semaphore(MAX_PENDING)
        self._closing = False
        self.sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = plan.ports[plan.rank]
        try:
            self.sock.bind((bind, port))
        except OSError as exc:
            self.sock.close()
            raise LauncherLost(f"the launch agent cannot listen on {bind}:{port} "
                               f"({exc.strerror}); choose another BOOTSTRAP_AGENT_PORT "
                               "(node r listens on base + r)") from None
        self.sock.listen(64)
        self.where = f"{bind}:{port}"

    def start(self) -> None:
        threading.Thread(target=self._accept, name="agent-accept", daemon=True).start()

    # ------------------------------------------------------------------ connections
    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            if addr[0] not in self.allowed:
                self.log.warn(f"agent: refused a connection from {addr[0]}: not a node of "
                              "this job")
                hang_up(conn)
                continue
            if not self._pending.acquire(blocking=False):
                self.log.warn(f"agent: refused a connection from {addr[0]}: too many "
                              "handshakes at once")
                hang_up(conn)
                continue
            threading.Thread(target=self._serve, args=(conn, addr[0]), daemon=True,
                             name=f"agent-{addr[0]}").start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        released = False  # the handshake's slot; also: the peer proved itself
        try:
            deadline = time.monotonic() + HANDSHAKE  # the handshake and the request
            wire = Wire(conn)
            rank, session = auth.accept_session(wire, self.plan.key, PROTOCOL,
                                                self.plan.rank, range(len(self.plan.hosts)),
                                                deadline)
            channel = Channel(wire, session, "server")
            request = channel.recv_json(deadline)
            self._pending.release()
            released = True
            op = request.get("op")
            if op == "control" and rank == 0:
                self._control(channel)
            elif op == "exec" and isinstance(request.get("command"), str):
                self._exec(channel, rank, request["command"])
            else:
                self.log.warn(f"agent: refused a request from node {rank} ({peer}): "
                              f"{str(op)[:20]!r} is not one this node serves")
                channel.send_json({"error": "not served here"})
        except (auth.Refused, Broken, ValueError, TimeoutError) as exc:
            self.log.warn(f"agent: refused a connection from {peer}: {exc}")
        except OSError:
            if not released:  # it left in the handshake: it could not prove the key
                self.log.warn(f"agent: refused a connection from {peer}: it left during "
                              "the handshake")
        finally:
            if not released:
                self._pending.release()
            hang_up(conn)

    def _control(self, channel: Channel) -> None:
        if self._controlled.is_set():
            channel.send_json({"error": "a launcher is already connected"})
            return
        self._controlled.set()
        self.log.info("agent: the launcher (node 0) connected")
        channel.send_json({"ok": True})
        try:
            while True:
                message = channel.recv_json()
                code = message.get("exit")
                if isinstance(code, int) and not isinstance(code, bool):
                    self.code = code
                    return
                if message.get("op") == "dump":
                    channel.send_json({"stacks": self.dump()})
        except (Broken, ValueError, OSError):
            return
        finally:
            self._ended.set()

    def dump(self) -> str:
        """The stacks of every Python process of this agent's sessions (node 0's
        watchdog saw a hang), also appended to this node's stacks file."""
        if self.stacks is None:
            return ""
        folder, stacks_file = self.stacks
        with self._lock:
            sids = set(self._sids)
        found = watchdog.collect(folder, lambda pid: os.getsid(pid) in sids)
        self._dumps += 1
        stacks = watchdog.render(found, where=f"node {self.plan.rank} ")
        watchdog.append(stacks_file, self._dumps, stacks)
        self.log.error(f"hang: node 0's watchdog saw no progress; the stacks of "
                       f"{len(found)} Python process(es) here: {stacks_file}")
        return stacks[:MAX_STACKS]

    # ------------------------------------------------------------------ remote commands
    def _exec(self, channel: Channel, rank: int, command: str) -> None:
        if not self.plan.serves_exec:
            channel.send_json({"error": "this node is not its host's agent"})
            return
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=self.env, cwd=self.cwd, start_new_session=True)
        except OSError as exc:
            channel.send_json({"exit": 127, "error": exc.strerror or str(exc)})
            return
        with self._lock:
            self._sessions.add(proc)
            self._sids.add(proc.pid)
        self.log.info(f"agent: node {rank} started pid {proc.pid} ({len(command)}-byte "
                      "command)")
        pumps = [threading.Thread(target=self._pump, args=(stream, channel, kind), daemon=True)
                 for stream, kind in ((proc.stdout, STDOUT), (proc.stderr, STDERR))]
        for pump in pumps:
            pump.start()
        reader = threading.Thread(target=self._feed, args=(channel, proc), daemon=True)
        reader.start()
        code = proc.wait()
        for pump in pumps:
            pump.join()
        with self._lock:
            self._sessions.discard(proc)
        status = code if code >= 0 else 128 - code
        self.log.info(f"agent: pid {proc.pid} ended with {status}")
        with contextlib.suppress(OSError):
            channel.send_json({"exit": status})

    def _pump(self, stream: IO[bytes] | None, channel: Channel, kind: bytes) -> None:
        """One output stream of a command: to its client, and to this node's log file
        (the supervised command's log tee, for what the agent runs)."""
        assert stream is not None
        fd = stream.fileno()
        sending = True
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    return
                if self.tee is not None:
                    with contextlib.suppress(OSError):
                        self.tee.write(data)
                if sending:
                    try:
                        channel.send(kind, data)
                    except OSError:
                        sending = False  # the client went away: the feed hangs it up
        finally:
            stream.close()

    def _feed(self, channel: Channel, proc: subprocess.Popen[bytes]) -> None:
        """The client's frames to the command: stdin, its end, signals; a client that
        goes away hangs the command up (SIGTERM, then SIGKILL after the grace)."""
        stdin = proc.stdin
        assert stdin is not None
        try:
            while True:
                kind, payload = channel.recv()
                if kind == STDIN and payload:
                    stdin.write(payload)
                    stdin.flush()
                elif kind == STDIN:
                    stdin.close()
                elif kind == JSON:
                    number = _signal_of(payload)
                    if number is not None:
                        _kill_group(proc, number)
        except (Broken, ValueError, OSError):
            if proc.poll() is None:
                self._end(proc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _end(self, proc: subprocess.Popen[bytes]) -> None:
        _kill_group(proc, signal.SIGTERM)
        timer = threading.Timer(self.grace, _kill_group, args=(proc, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def stop_sessions(self) -> None:
        """Every process of every session this agent started: SIGTERM, then SIGKILL
        after the grace; returns when they have all ended."""
        with self._lock:
            sids = set(self._sids)
        if not _members(sids):
            return
        for pid in _members(sids):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while _members(sids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in _members(sids):
            _kill(pid, signal.SIGKILL)
        while _members(sids) and time.monotonic() < deadline + 5:
            time.sleep(0.05)

    # ------------------------------------------------------------------ the node's end
    def wait(self) -> int:
        """The launcher's exit code, once it says it; raises :class:`LauncherLost` when
        it never connects or goes away first. Waits in short steps, so a stop signal
        reaches the main thread."""
        connect_by = time.monotonic() + self.plan.timeout
        try:
            while not self._controlled.is_set():
                if time.monotonic() >= connect_by:
                    raise LauncherLost(
                        f"the launcher (node 0) never connected to this node's agent within "
                        f"{self.plan.timeout:g} s (BOOTSTRAP_PEER_TIMEOUT); see node 0's log")
                self._controlled.wait(0.2)
            while not self._ended.wait(0.2):
                pass
            if self.code is None:
                raise LauncherLost("the launcher (node 0) went away without an exit code "
                                   "(its node stopped or died); this node's commands were "
                                   "stopped")
            return self.code
        finally:
            self.close()

    def close(self) -> None:
        self._closing = True
        hang_up(self.sock)
        self.stop_sessions()


def _signal_of(payload: bytes) -> int | None:
    try:
        value = json.loads(payload).get("signal")
    except (ValueError, AttributeError):
        return None
    allowed = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL, signal.SIGUSR1,
               signal.SIGUSR2, signal.SIGQUIT, signal.SIGCONT, signal.SIGSTOP}
    return value if isinstance(value, int) and value in allowed else None


def _kill_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to every process of the command's session (see the module's note)."""
    for pid in _members({proc.pid}):
        _kill(pid, signum)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _members(sids: set[int]) -> list[int]:
    """The live processes (zombies left out) whose session is one of ``sids``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) in sids:
            found.append(int(entry.name))
    return found
