"""The handshake between two nodes (bootstrap.cluster.auth) over real socket pairs: who
proves what to whom, in which order, and within one deadline."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bootstrap.cluster import auth
from bootstrap.cluster.wire import Wire

KEY = auth.derive("secret", "job-1", "relay-code")


def test_keys_differ_by_secret_job_and_protocol() -> None:
    assert auth.derive("secret", "job-1", "relay-code") == KEY
    others = {auth.derive("other", "job-1", "relay-code"), auth.derive("secret", "job-2",
              "relay-code"), auth.derive("secret", "job-1", "relay-data")}
    assert KEY not in others and len(others) == 3


def pair() -> tuple[Wire, Wire]:
    a, b = socket.socketpair()
    return Wire(a), Wire(b)


def both(server: Callable[[Wire], Any], client: Callable[[Wire], Any]) -> tuple[Any, Any]:
    """Runs the two ends at once; each result is its return value or its exception."""
    s, c = pair()
    out: dict[str, Any] = {}

    def run(name: str, fn: Callable[[Wire], Any], wire: Wire) -> None:
        try:
            out[name] = fn(wire)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[name] = exc
        finally:
            wire.sock.close()  # as the relay does: a refusal hangs up

    threads = [threading.Thread(target=run, args=("s", server, s)),
               threading.Thread(target=run, args=("c", client, c))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out["s"], out["c"]


def deadline() -> float:
    return time.monotonic() + 5


def test_a_child_and_its_parent_prove_each_other() -> None:
    s, c = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1, 2}, deadline()),
                lambda w: auth.connect(w, KEY, "relay-code", 2, 0, deadline()))
    assert s == 2 and c is None


def test_a_listener_that_is_not_the_parent_gets_no_proof() -> None:
    heard: list[bytes] = []

    def other_node(w: Wire) -> None:  # node 5 of the same job (say, on the same host)
        w.send(f"{auth.MAGIC} relay-code 5 {'a' * 32}\n".encode(), 5)
        w.sock.settimeout(2)
        heard.append(w.sock.recv(1000))

    _, c = both(other_node, lambda w: auth.connect(w, KEY, "relay-code", 2, 0, deadline()))
    assert isinstance(c, auth.Refused) and "node 5 answered, not node 0" in str(c)
    assert heard == [b""]  # not even a hello

    def impostor(w: Wire) -> None:  # claims to be node 0 without the key
        w.send(f"{auth.MAGIC} relay-code 0 {'a' * 32}\n".encode(), 5)
        heard.append(w.line(deadline()))
        w.send_json({"proof": "0" * 64}, 5)
        w.sock.settimeout(2)
        heard.append(w.sock.recv(1000))

    heard.clear()
    _, c = both(impostor, lambda w: auth.connect(w, KEY, "relay-code", 2, 0, deadline()))
    assert isinstance(c, auth.Refused) and "no proof of the job's key" in str(c)
    hello = json.loads(heard[0])
    assert set(hello) == {"rank", "nonce"}  # a rank and a nonce, never a proof
    assert heard[1] == b""


def test_a_server_serves_only_its_children_and_proves_nothing_to_others() -> None:
    heard: list[bytes] = []

    def node_three(w: Wire) -> None:  # a real member, but node 0's child it is not
        w.line(deadline())
        w.send_json({"rank": 3, "nonce": "b" * 32}, 5)
        w.sock.settimeout(2)
        heard.append(w.sock.recv(1000))

    s, _ = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1, 2}, deadline()), node_three)
    assert isinstance(s, auth.Refused) and "rank 3 is not a node this one serves" in str(s)
    assert heard == [b""]


def test_a_wrong_key_on_either_side_is_refused() -> None:
    wrong = auth.derive("guess", "job-1", "relay-code")
    s, c = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1}, deadline()),
                lambda w: auth.connect(w, wrong, "relay-code", 1, 0, deadline()))
    assert isinstance(c, auth.Refused) and isinstance(s, (ConnectionError, OSError))
    s, c = both(lambda w: auth.accept(w, wrong, "relay-code", 0, {1}, deadline()),
                lambda w: auth.connect(w, KEY, "relay-code", 1, 0, deadline()))
    assert isinstance(c, auth.Refused) and not isinstance(s, int)
    # Another protocol's key (the data relay's) opens nothing here either.
    data = auth.derive("secret", "job-1", "relay-data")
    s, c = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1}, deadline()),
                lambda w: auth.connect(w, data, "relay-code", 1, 0, deadline()))
    assert isinstance(c, auth.Refused) and not isinstance(s, int)


def test_a_reflected_or_replayed_proof_is_refused() -> None:
    said = auth.transcript("relay-code", 0, 1, "a" * 32, "b" * 32)
    server_proof = auth.prove(KEY, "server", said)
    assert server_proof != auth.prove(KEY, "client", said)  # roles are bound in

    def reflector(w: Wire) -> None:  # answers the server with the server's own proof
        greeting = w.line(deadline()).decode().split()
        w.send_json({"rank": 1, "nonce": "b" * 32}, 5)
        mine = w.json(deadline())["proof"]
        assert greeting[2] == "0"
        w.send_json({"proof": mine}, 5)
        w.sock.settimeout(2)
        w.sock.recv(100)

    s, _ = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1}, deadline()), reflector)
    assert isinstance(s, auth.Refused) and "no proof" in str(s)

    def replayer(w: Wire) -> None:  # a client proof recorded from an earlier session
        w.line(deadline())
        w.send_json({"rank": 1, "nonce": "b" * 32}, 5)
        w.json(deadline())
        w.send_json({"proof": auth.prove(KEY, "client", said)}, 5)
        w.sock.settimeout(2)
        w.sock.recv(100)

    s, _ = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1}, deadline()), replayer)
    assert isinstance(s, auth.Refused)  # the server's nonce is fresh: the old proof fails


def test_one_deadline_covers_the_whole_handshake() -> None:
    def trickler(w: Wire) -> None:  # one byte at a time, each well inside a socket timeout
        w.line(deadline())
        for byte in b'{"rank": 1, "nonce": "' + b"b" * 32 + b'"}\n':
            try:
                w.send(bytes([byte]), 5)
            except OSError:
                return
            time.sleep(0.05)

    started = time.monotonic()
    s, _ = both(lambda w: auth.accept(w, KEY, "relay-code", 0, {1}, time.monotonic() + 1),
                trickler)
    assert isinstance(s, TimeoutError)
    assert time.monotonic() - started < 2.5  # the line would have taken 2.8 s


@pytest.mark.parametrize("greeting", [b"HTTP/1.1 400 Bad Request\n", b"BOOTSTRAP-AUTH1 x\n",
                                      f"{auth.MAGIC} relay-data 0 {'a' * 32}\n".encode()])
def test_anything_else_on_the_port_is_refused_before_a_proof(greeting: bytes) -> None:
    def other(w: Wire) -> None:
        w.send(greeting, 5)
        w.sock.settimeout(2)
        assert w.sock.recv(100) == b""

    s, c = both(other, lambda w: auth.connect(w, KEY, "relay-code", 1, 0, deadline()))
    assert isinstance(c, auth.Refused) and s is None
