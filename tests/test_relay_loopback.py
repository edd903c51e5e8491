"""The relay's server and client on loopback, in one process: the bounds that need no
second host (a flood of connections, a parent that waits forever, a tree offered late)
checked in seconds. The multi-host behaviour is tests/test_relay.py's."""

from __future__ import annotations

import hashlib
import io
import json
import random
import secrets
import socket
import threading
import time
from pathlib import Path

from bootstrap.log import Log, Redactor
from bootstrap.transfer import relay
from bootstrap.transfer.listing import RemoteObject
from bootstrap.transfer.manifest import Manifest

KEY = relay.job_key("loopback-secret", "loopback-job")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(root: Path, n: int = 20) -> list[RemoteObject]:
    objects = []
    for i in range(n):
        data = random.Random(i).randbytes(1000 + i)
        (root / f"f{i:02d}").parent.mkdir(parents=True, exist_ok=True)
        (root / f"f{i:02d}").write_bytes(data)
        objects.append(RemoteObject(f"f{i:02d}", f"f{i:02d}", len(data),
                                    hashlib.md5(data).hexdigest()))
    return objects


def quiet() -> tuple[Log, io.StringIO]:
    said = io.StringIO()
    return Log(Redactor({}), stream=said), said


def pull(port: int, objects: list[RemoteObject], child: Path,
         patience: float = 60.0) -> tuple[list[RemoteObject], str]:
    log, said = quiet()
    child.mkdir(exist_ok=True)
    manifest = Manifest(child.parent / f"{child.name}.manifest", "s3://b/")
    manifest.open_for_append()
    failed = relay.pull("127.0.0.1", port, KEY, 1, objects, {}, child, manifest, patience, log)
    return failed, said.getvalue()


def test_a_tree_offered_after_the_child_asked_still_comes_from_the_parent(
        tmp_path: Path) -> None:
    objects = tree(tmp_path / "parent")
    log, _ = quiet()
    port = free_port()
    server = relay.open_server(port, KEY, [1], 30.0, log)
    assert server is not None
    held = relay.Held()

    def list_then_offer() -> None:  # the parent's listing takes longer than the child's
        time.sleep(relay.HEARTBEAT + 1)
        for obj in objects:
            held.add(obj.rel)
        held.close()
        server.offer(tmp_path / "parent", {o.rel: o.size for o in objects}, held)

    threading.Thread(target=list_then_offer).start()
    failed, said = pull(port, objects, tmp_path / "child")
    server.finish(5)
    assert failed == [], said
    assert all((tmp_path / "child" / o.rel).read_bytes() ==
               (tmp_path / "parent" / o.rel).read_bytes() for o in objects)


def test_a_parent_that_waits_forever_is_left_after_the_patience(tmp_path: Path) -> None:
    objects = tree(tmp_path / "unused", 3)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def stalling_parent() -> None:  # proves itself, then says "waiting" for ever
        conn, _ = srv.accept()
        reader = conn.makefile("rb")
        nonce = secrets.token_hex(16)
        conn.sendall(relay.MAGIC + b" " + nonce.encode() + b"\n")
        reader.readline()
        conn.sendall(b"OK\n")
        reader.readline()
        while not stop.is_set():
            try:
                conn.sendall(json.dumps({"wait": "f00"}).encode() + b"\n")
            except OSError:
                break
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=stalling_parent, daemon=True).start()
    started = time.monotonic()
    failed, said = pull(port, objects, tmp_path / "child", patience=1.0)
    stop.set()
    srv.close()
    assert failed == objects  # all from the store
    assert time.monotonic() - started < 1.0 + relay.HEARTBEAT + 2
    assert "kept waiting" in said


def test_a_flood_of_connections_is_cut_at_the_cap(tmp_path: Path) -> None:
    log, said = quiet()
    port = free_port()
    server = relay.open_server(port, KEY, [1], 30.0, log)
    assert server is not None
    held_open = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(relay.MAX_CONNECTIONS)]
    greeted = [c.makefile("rb").readline() for c in held_open]  # each holds a slot
    assert all(g.startswith(relay.MAGIC) for g in greeted)
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert extra.recv(100) == b""  # closed without a greeting
    extra.close()
    for c in held_open:
        c.close()
    server.close()
    assert said.getvalue().count("connections at once") == 1
