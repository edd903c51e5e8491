"""The relay's server and client on loopback, in one process: the bounds that need no
second host (strangers holding every handshake slot, a parent whose own download stands
still or moves slowly, a tree offered late) checked in seconds. A fake parent speaks
the real handshake (bootstrap.cluster.auth) and stamps its lines with a clock that runs
fast, so bounds measured on the parent's clock pass in a fraction of their seconds. The
multi-host behaviour is tests/test_relay.py's."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bootstrap.cluster import auth
from bootstrap.cluster.wire import Wire
from bootstrap.log import Log, Redactor
from bootstrap.relay import client, protocol
from bootstrap.relay import server as relay_server
from bootstrap.transfer.listing import RemoteObject
from bootstrap.transfer.manifest import Manifest
from bootstrap.transfer.verify import Doubts, Layout
from tests.support.lab import port as port_block
from tests.support.wait import wait_until

KEY = auth.derive("loopback-secret", "loopback-job", "relay-code")


def peers(rank: int, base: int) -> protocol.Peers:
    return protocol.Peers(rank, ("127.0.0.1",) * 2, (base, base + 2), KEY, "relay-code", 30.0)


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


class Answers:
    """The store's answers about one object (``verify.Asks``): no parts; encrypted or
    not, as ``says``; and which objects it was asked about."""

    def __init__(self, says: bool) -> None:
        self.says = says
        self.asked: list[str] = []

    def parts_of(self, obj: RemoteObject, every: bool = False) -> Layout | None:
        return None

    def encrypted(self, obj: RemoteObject) -> bool:
        self.asked.append(obj.rel)
        return self.says


def pull(base: int, objects: list[RemoteObject], child: Path) -> tuple[list[RemoteObject], str]:
    log, said = quiet()
    child.mkdir(exist_ok=True)
    manifest = Manifest(child.parent / f"{child.name}.manifest", "s3://b/")
    manifest.open_for_append()
    failed = client.pull(peers(1, base), objects, Doubts(None, log, "fetch"), child, manifest,
                         log)
    return failed, said.getvalue()


def serving(root: Path, objects: list[RemoteObject]) -> tuple[relay_server.RelayServer, int,
                                                              io.StringIO]:
    """Node 0's real relay server on a port block of its own, offering ``objects`` (under
    ``root``, every one already held); returns it, its base port and what it logs."""
    log, said = quiet()
    base = port_block()
    server = relay_server.open_server(peers(0, base), log)
    assert server is not None
    held = relay_server.Held()
    for obj in objects:
        held.add(obj.rel, obj.size)
    held.close()
    server.offer(root, {o.rel: o.size for o in objects}, held)
    return server, base, said


def fake_parent(base: int, serve: Callable[[Wire, list[str]], None]) -> threading.Thread:
    """Node 0, proven by the real handshake; ``serve`` answers the first request."""
    srv = socket.create_server(("127.0.0.1", base))

    def run() -> None:
        conn, _ = srv.accept()
        srv.close()
        wire = Wire(conn)
        auth.accept(wire, KEY, "relay-code", 0, {1}, time.monotonic() + 5)
        wanted = wire.json(time.monotonic() + 5)["get"]
        try:
            serve(wire, wanted)
        except OSError:
            pass  # the child left: what the test is about
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_tree_offered_after_the_child_asked_still_comes_from_the_parent(
        tmp_path: Path) -> None:
    objects = tree(tmp_path / "parent")
    log, _ = quiet()
    base = port_block()
    server = relay_server.open_server(peers(0, base), log)
    assert server is not None
    held = relay_server.Held()

    def list_then_offer() -> None:  # the parent's listing takes longer than a heartbeat
        time.sleep(protocol.HEARTBEAT + 1)
        for obj in objects:
            held.add(obj.rel, obj.size)
        held.close()
        server.offer(tmp_path / "parent", {o.rel: o.size for o in objects}, held)

    threading.Thread(target=list_then_offer).start()
    failed, said = pull(base, objects, tmp_path / "child")
    server.finish(5)
    assert failed == [], said
    assert all((tmp_path / "child" / o.rel).read_bytes() ==
               (tmp_path / "parent" / o.rel).read_bytes() for o in objects)
    assert server.served == len(objects)


def test_a_parent_whose_own_download_stands_still_is_left(tmp_path: Path) -> None:
    # Before: the patience was per file and was the job's peer wait (files x wait).
    # Now: STALL seconds of the parent's own clock without progress, for the whole wait.
    objects = tree(tmp_path / "unused", 3)
    base = port_block()

    def stuck(wire: Wire, wanted: list[str]) -> None:
        for beat in range(200):  # alive, never a step further; its clock runs 10 s a beat
            wire.send_json({"wait": wanted[0], "files": 4, "bytes": 9000, "t": beat * 10.0}, 5)
            time.sleep(0.05)

    fake_parent(base, stuck)
    failed, said = pull(base, objects, tmp_path / "child")
    assert failed == objects  # all from the store
    assert f"no progress for {protocol.STALL:g} s while it waited for f00" in said


def test_a_parent_whose_own_download_moves_keeps_its_child(tmp_path: Path) -> None:
    objects = tree(tmp_path / "parent", 3)
    base = port_block()

    def slow_but_moving(wire: Wire, wanted: list[str]) -> None:
        for beat in range(12):  # 120 s of its clock (6 x STALL), a range landing each beat
            wire.send_json({"wait": wanted[0], "files": 4, "bytes": 9000 + beat * (16 << 20),
                            "t": beat * 10.0}, 5)
            time.sleep(0.05)
        for rel in wanted:
            data = (tmp_path / "parent" / rel).read_bytes()
            wire.send_json({"rel": rel, "size": len(data), "t": 130.0}, 5)
            wire.send(data, 5)
        wire.line(time.monotonic() + 5)  # the child's done

    fake_parent(base, slow_but_moving)
    failed, said = pull(base, objects, tmp_path / "child")
    assert failed == [], said
    assert all((tmp_path / "child" / o.rel).read_bytes() ==
               (tmp_path / "parent" / o.rel).read_bytes() for o in objects)


def test_strangers_holding_every_handshake_slot_do_not_keep_a_child_out(
        tmp_path: Path) -> None:
    # Before: 16 connections trickling a byte every 2 s held all 16 slots for as long
    # as they liked (the 5 s bound was per read); children found no room.
    objects = tree(tmp_path / "parent")
    server, base, said = serving(tmp_path / "parent", objects)
    stop = threading.Event()

    def trickle() -> None:  # one byte at a time, never a whole line
        with socket.create_connection(("127.0.0.1", base), timeout=5) as s:
            while not stop.is_set():
                try:
                    s.sendall(b"{")
                except OSError:
                    return
                time.sleep(0.5)

    strangers = [threading.Thread(target=trickle, daemon=True)
                 for _ in range(protocol.MAX_PENDING)]
    for t in strangers:
        t.start()
    # Every slot taken: the server holds MAX_PENDING handshakes in progress.
    assert wait_until(lambda: len(server._pending) >= protocol.MAX_PENDING, 10)
    failed, child_said = pull(base, objects, tmp_path / "child")
    stop.set()
    server.finish(5)
    assert failed == [], child_said
    assert server.served == len(objects)
    assert said.getvalue().count(f"more than {protocol.MAX_PENDING} handshakes at once") == 1


def test_a_child_takes_what_the_store_encrypts_from_the_store_not_its_parent(
        tmp_path: Path) -> None:
    """OBS lists an object it encrypts on its side (a bucket's default encryption) with
    an ETag that is not its MD5, so no peer's copy of it can be checked. Before: the
    child took the first such file for a parent sending wrong bytes. Now the store is
    asked, the child says why in one line and fetches it and the rest from the store;
    a store that says nothing keeps the mismatch a mismatch."""
    served = tree(tmp_path / "parent", 5)
    listed = [RemoteObject(o.key, o.rel, o.size, hashlib.md5(b"cipher" + o.rel.encode())
                           .hexdigest()) for o in served]
    for says, line in ((True, "is encrypted by the store"),
                       (False, "does not match the store's listing")):
        server, base, _ = serving(tmp_path / "parent", served)
        log, said = quiet()
        child = tmp_path / f"child-{says}"
        child.mkdir()
        manifest = Manifest(tmp_path / f"child-{says}.manifest", "s3://b/")
        manifest.open_for_append()
        store = Answers(says)
        failed = client.pull(peers(1, base), listed, Doubts(store, log, "fetch"), child,
                             manifest, log)
        asked = store.asked
        server.finish(5)
        assert failed == listed, said.getvalue()  # all of them from the store
        assert asked == [listed[0].rel]  # one answer is enough: the rest from the store
        assert line in said.getvalue(), said.getvalue()
        assert not [p for p in child.rglob("*") if p.is_file()]  # nothing kept unchecked
