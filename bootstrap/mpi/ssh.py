"""The launchers' remote shell: an ``ssh`` that reaches the job's launch agents.

Usage, the subset Open MPI's ``plm_rsh_agent``, PRRTE, MPICH's Hydra, pdsh's ssh
module, DeepSpeed and Horovod use::

    ssh [options] [user@]host command [args...]

``-p PORT``, ``-o OPTION``, ``-l USER``, ``-i FILE``, ``-F FILE``, ``-E FILE``,
``-c CIPHER``, ``-m MAC``, ``-J HOST``, ``-S PATH`` take a value and are ignored (the
agent's port and key come from the job), as are the flags ``-x -X -Y -T -t -n -q -v -A
-a -C -N -1 -2 -4 -6 -k -K``; ``-n`` also closes the command's stdin at once. The command
(its words joined by spaces, as ssh does) runs under ``/bin/sh -c`` on the host's
agent, as the bootstrap's user; on the client's own host, when no agent serves it (node
0's: pdsh and DeepSpeed list it too), the client becomes that shell itself. stdin,
stdout and stderr are streamed; SIGINT, SIGTERM and SIGHUP are forwarded to the remote
command's process group; the exit code is the remote command's (128 + N when a signal N
ended it). Failures of the client itself
exit 255, like ssh, with one line on stderr.

It is installed per job as ``<job dir>/.bootstrap-mpi/bin/ssh`` (first on the
command's PATH in this mode) and named by ``OMPI_MCA_plm_rsh_agent`` and its kin; its
configuration (the agents' addresses and the job's derived key) is a 0600 file beside
it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from .channel import JSON, STDERR, STDIN, STDOUT, Broken, Channel, Unreachable, dial

WITH_VALUE = set("pbcDeEFIiJLlmOoQRSWw")
FLAGS = set("1246AaCfGgKkMNnqsTtVvXxYy")  # -1/-2: protocol versions (pdsh passes -2)
DIAL = 10.0  # seconds to keep dialling an agent that is not accepting yet
EXIT_CLIENT = 255


class Usage(Exception):
    pass


def parse(argv: Sequence[str]) -> tuple[str, str, bool]:
    """(host, command, no_stdin) from ssh's arguments."""
    args = list(argv)
    no_stdin = False
    i = 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        word = args[i]
        if word == "--":
            i += 1
            break
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in WITH_VALUE:
                if j == len(word) - 1:
                    i += 1  # the value is the next word
                    if i >= len(args):
                        raise Usage(f"option -{letter} needs a value")
                break
            if letter not in FLAGS:
                raise Usage(f"unknown option -{letter}")
            no_stdin = no_stdin or letter == "n"
            j += 1
        i += 1
    if i >= len(args):
        raise Usage("no host given")
    host = args[i].rpartition("@")[2]
    command = " ".join(args[i + 1:])
    if not command.strip():
        raise Usage("no command given (interactive sessions are not served)")
    return host, command, no_stdin


def agent_of(config: dict[str, object], host: str) -> tuple[int, str, int] | None:
    """(rank, address, port) of the agent for ``host``: by name, else by address."""
    agents = config.get("agents")
    if not isinstance(agents, dict):
        return None
    found = agents.get(host)
    if found is None:
        try:
            wanted = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except (OSError, UnicodeError):
            wanted = {host}
        found = next((a for a in agents.values() if a[1] in wanted), None)
    if found is None:
        return None
    rank, address, port = found
    return int(rank), str(address), int(port)


def is_local(config: dict[str, object], host: str) -> bool:
    """Whether ``host`` (a name or an address) is the client's own host with no agent."""
    local = config.get("local")
    if not isinstance(local, dict):
        return False
    return host in local or host in local.values()


def run(config_path: str, argv: Sequence[str]) -> int:
    try:
        host, command, no_stdin = parse(argv)
    except Usage as exc:
        return _fail(f"{exc}; usage: ssh [options] host command")
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        key = bytes.fromhex(config["key"])
        rank = int(config["rank"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _fail(f"cannot read the job's launch configuration {config_path}: {exc}")
    target = agent_of(config, host)
    if target is None and is_local(config, host):
        if no_stdin:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        os.execv("/bin/sh", ["/bin/sh", "-c", command])
    if target is None:
        return _fail(f"{host} is not a host of this job (no launch agent serves it)")
    agent, address, port = target
    try:
        channel = dial((address, port), key, rank, agent, DIAL)
    except Unreachable as exc:
        return _fail(f"cannot reach {host}'s launch agent at {address}:{port}: {exc}")
    channel.send_json({"op": "exec", "command": command})
    return _session(channel, no_stdin)


def _session(channel: Channel, no_stdin: bool) -> int:
    def forward(signum: int, frame: object) -> None:
        try:
            channel.send_json({"signal": signum})
        except OSError:
            os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    if no_stdin:
        channel.send(STDIN, b"")
    else:
        threading.Thread(target=_stdin, args=(channel,), daemon=True).start()
    try:
        while True:
            kind, payload = channel.recv()
            if kind == STDOUT:
                _write(1, payload)
            elif kind == STDERR:
                _write(2, payload)
            elif kind == JSON:
                answer = json.loads(payload)
                if "error" in answer and "exit" not in answer:
                    return _fail(f"the agent refused: {answer['error']}")
                if "exit" in answer:
                    return int(answer["exit"])
    except (Broken, ValueError, OSError) as exc:
        return _fail(f"the connection to the agent broke: {exc}")


def _stdin(channel: Channel) -> None:
    try:
        while True:
            data = os.read(0, 1 << 16)
            channel.send(STDIN, data)
            if not data:
                return
    except OSError:
        return


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fail(message: str) -> int:
    sys.stderr.write(f"bootstrap-ssh: {message}\n")
    return EXIT_CLIENT


def main() -> None:
    """``python -c '...' CONFIG ssh-args...`` (see the installed script)."""
    sys.exit(run(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
