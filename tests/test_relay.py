"""Peer-assisted fetch on network-namespace hosts: the tree passes down the relay, the
store sees one copy, and nothing a peer does can make a node keep a wrong byte."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.transfer import relay
from tests.conftest import log_records, stage
from tests.faultproxy import FaultProxy
from tests.test_multinode import (  # noqa: F401
    Lab,
    NodeResult,
    lab,
    old_contract,
    port,
    run_job,
)

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

FILES = {f"src/mod{i:03d}.py": random.Random(i).randbytes(random.Random(i).randint(10, 9000))
         for i in range(120)}


# Multipart objects: equal 5 MiB parts and a tail (checkable against the ETag with part
# 1's length), and uneven parts (not checkable: each node takes it from the store).
MULTIPART = {"weights.bin": [random.Random(1).randbytes(5 << 20), b"w" * 1000],
             "uneven.bin": [random.Random(2).randbytes(5 << 20),
                            random.Random(3).randbytes(6 << 20)]}


@pytest.fixture(scope="module")
def tree(lab: Lab) -> Iterator[str]:  # noqa: F811
    client = lab.s3.client()
    for rel, data in FILES.items():
        client.put_object(Bucket="mn-code", Key=f"peer/{rel}", Body=data)
    for rel, parts in MULTIPART.items():
        key = f"peer/{rel}"
        up = client.create_multipart_upload(Bucket="mn-code", Key=key)
        done = [{"PartNumber": n, "ETag": client.upload_part(
                    Bucket="mn-code", Key=key, PartNumber=n, UploadId=up["UploadId"],
                    Body=body)["ETag"]} for n, body in enumerate(parts, 1)]
        client.complete_multipart_upload(Bucket="mn-code", Key=key, UploadId=up["UploadId"],
                                         MultipartUpload={"Parts": done})
    yield "s3://mn-code/peer/"


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


ALL = {**FILES, **{rel: b"".join(parts) for rel, parts in MULTIPART.items()}}
WANT = {k: hashlib.md5(v).hexdigest() for k, v in ALL.items()}


# The command binds the relay's ports (code's and data's): it fails while one is open.
PORTS_CLOSED = ("import socket\n"
                "for p in (29611, 29612):\n"
                "    socket.create_server(('', p)).close()\n"
                "print('relay ports closed')")


def test_four_nodes_fetch_one_copy_from_the_store(lab: Lab, tree: str,  # noqa: F811
                                                  tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs network namespaces: every node would share one address")
    with FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip) as proxy:
        results = run_job(lab, tmp_path, 4, ["python3", "-c", PORTS_CLOSED],
                          old_contract(lab, 4, port()),
                          extra={"DLS_APP_URL": tree, "AWS_ENDPOINT_URL": proxy.endpoint,
                                 "BOOTSTRAP_PEER_FETCH": "on", "BOOTSTRAP_LOG_FORMAT": "json"})
    for r in results:
        assert r.code == 0, r.err
        assert "relay ports closed" in r.out  # the command could listen there itself
        assert digest(r.home / "user-job-dir" / "peer") == WANT, r.rank
    gets = proxy.object_gets
    # One copy of everything the listing can check, the multipart weights included.
    once = {k: v for k, v in gets.items() if not k.endswith("uneven.bin")}
    assert len(once) == len(FILES) + 1 and set(once.values()) == {1}, gets
    assert gets["/mn-code/peer/uneven.bin"] == 4  # not checkable: every node's own copy
    for r in results[1:]:
        fetched = stage(r.err, "fetch")
        assert fetched["peer_files"] == len(FILES) + 1 and fetched["files"] == 1, fetched
    served = [next(x["served"] for x in log_records(r.err) if "served" in x) for r in results]
    assert served == [2 * (len(FILES) + 1), len(FILES) + 1, 0, 0]  # 0 fed 1 and 2; 1 fed 3


FAKE_PARENT = r'''
import hashlib, hmac, json, os, secrets, socket, sys, time
port, key, mode = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
tree = sys.argv[4]  # where the real files are
srv = socket.create_server(("", port))
print("listening", flush=True)
conn, _ = srv.accept()
r = conn.makefile("rb")
nonce = secrets.token_hex(16)
conn.sendall(b"BRLY1 " + nonce.encode() + b"\n")
hello = json.loads(r.readline())
want = hmac.new(key, f"{nonce}|{hello['rank']}".encode(), hashlib.sha256).hexdigest()
assert hello["proof"] == want
conn.sendall(b"OK\n")
while True:
    line = r.readline()
    if not line or b"done" in line:
        break
    if mode == "silent":  # alive, connected, and never a word again
        time.sleep(120)
    for n, rel in enumerate(json.loads(line)["get"]):
        if mode == "die" and n == 10:
            os._exit(9)  # killed while serving
        data = b"evil" * 3 if mode == "evil" else open(os.path.join(tree, rel), "rb").read()
        conn.sendall(json.dumps({"rel": rel, "size": len(data)}).encode() + b"\n")
        for i in range(0, len(data), 512):
            if mode == "slow":
                time.sleep(0.05)  # ~10 KB/s: a parent on a sick link
            conn.sendall(data[i:i + 512])
'''


def fake_parent(lab: Lab, tmp_path: Path, job: str,  # noqa: F811
                mode: str) -> tuple[subprocess.Popen[str], int]:
    """Node 0's place in the tree, played by a script that proves itself like a real
    parent and then misbehaves as ``mode`` says; returns it and its port."""
    copy = tmp_path / "parent-copy"
    for rel, data in ALL.items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(data)
    relay_port = port()
    key = relay.job_key(lab.s3.secret_key, job)
    script = tmp_path / "fake_parent.py"
    script.write_text(FAKE_PARENT)
    fake = lab.hosts.spawn(0, ["python3", str(script), str(relay_port), key.hex(), mode,
                               str(copy)], {"PATH": os.environ["PATH"]})
    assert fake.stdout is not None and fake.stdout.readline().strip() == "listening"
    return fake, relay_port


def node_one_under(lab: Lab, tmp_path: Path, tree: str, job: str,  # noqa: F811
                   relay_port: int) -> NodeResult:
    """Node 1 of a 2-node job whose node 0 is the test's; the peer timeout is long
    (120 s), so a fallback within seconds is the relay's own doing."""
    return run_job(lab, tmp_path, 2, ["true"], old_contract(lab, 2, port()),
                   extra={"DLS_APP_URL": tree, "BOOTSTRAP_PEER_FETCH": "on",
                          "BOOTSTRAP_RELAY_PORT": str(relay_port), "MA_JOB_ID": job,
                          "BOOTSTRAP_NETWORK": "off", "BOOTSTRAP_BARRIER": "off",
                          "BOOTSTRAP_PEER_TIMEOUT": "120", "BOOTSTRAP_LOG_FORMAT": "json"},
                   only=[1])[0]


def test_a_parent_serving_wrong_bytes_is_caught_and_the_store_serves(
        lab: Lab, tree: str, tmp_path: Path) -> None:  # noqa: F811
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    fake, relay_port = fake_parent(lab, tmp_path, "relay-hostile", "evil")
    r = node_one_under(lab, tmp_path, tree, "relay-hostile", relay_port)
    fake.wait(timeout=30)
    assert r.code == 0, r.err
    assert digest(r.home / "user-job-dir" / "peer") == WANT  # every byte as listed
    assert "does not match the store's listing" in r.err


def test_a_parent_killed_while_serving_leaves_the_rest_to_the_store(
        lab: Lab, tree: str, tmp_path: Path) -> None:  # noqa: F811
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    fake, relay_port = fake_parent(lab, tmp_path, "relay-killed", "die")
    r = node_one_under(lab, tmp_path, tree, "relay-killed", relay_port)
    fake.wait(timeout=30)
    assert r.code == 0, r.err
    assert digest(r.home / "user-job-dir" / "peer") == WANT
    fetched = stage(r.err, "fetch")
    assert fetched["peer_files"] == 10 and fetched["files"] == len(WANT) - 10, fetched


@pytest.mark.parametrize("mode, reason", [("silent", "timed out"), ("slow", "slower than")])
def test_a_stuck_or_slow_parent_is_left_within_seconds(lab: Lab, tree: str,  # noqa: F811
                                                       tmp_path: Path, mode: str,
                                                       reason: str) -> None:
    # Before the heartbeat and the pace check, both waited out the peer timeout (120 s).
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    fake, relay_port = fake_parent(lab, tmp_path, f"relay-{mode}", mode)
    try:
        r = node_one_under(lab, tmp_path, tree, f"relay-{mode}", relay_port)
    finally:
        fake.kill()
        fake.wait()
    assert r.code == 0, r.err
    assert digest(r.home / "user-job-dir" / "peer") == WANT
    fetched = stage(r.err, "fetch")
    assert fetched["seconds"] < 25, fetched
    assert fetched["peer_files"] < len(FILES) // 2, fetched  # the store did the rest
    said = [x["msg"] for x in log_records(r.err) if x["msg"].startswith("relay: parent")]
    assert said and reason in said[0], said


SQUATTER = '''
import socket, sys
srv = socket.create_server(("", int(sys.argv[1])))
print("listening", flush=True)
held = []
while True:
    held.append(srv.accept()[0])  # accepts, and never says a word
'''


def test_a_port_held_by_another_program_costs_seconds(lab: Lab, tree: str,  # noqa: F811
                                                      tmp_path: Path) -> None:
    # Node 0 cannot listen (something else holds the port and says nothing): node 0
    # fetches alone, node 1 gives up on the silent stranger after the handshake time.
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    relay_port = port()
    squatter = lab.hosts.spawn(0, ["python3", "-c", SQUATTER, str(relay_port)],
                               {"PATH": os.environ["PATH"]})
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "listening"
        results = run_job(lab, tmp_path, 2, ["true"], old_contract(lab, 2, port()),
                          extra={"DLS_APP_URL": tree, "BOOTSTRAP_PEER_FETCH": "on",
                                 "BOOTSTRAP_RELAY_PORT": str(relay_port),
                                 "BOOTSTRAP_PEER_TIMEOUT": "120",
                                 "BOOTSTRAP_LOG_FORMAT": "json"})
    finally:
        squatter.kill()
        squatter.wait()
    for r in results:
        assert r.code == 0, r.err
        assert digest(r.home / "user-job-dir" / "peer") == WANT
    assert "relay: cannot serve on port" in results[0].err
    fetched = stage(results[1].err, "fetch")
    assert fetched["peer_files"] == 0 and fetched["seconds"] < 20, fetched


def test_a_parent_still_listing_keeps_its_children(lab: Lab, tree: str,  # noqa: F811
                                                   tmp_path: Path) -> None:
    # Node 0's listing takes 12 s (longer than a child's SILENCE): it listens already,
    # says it is waiting, and node 1 still takes every file from it.
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    contract = old_contract(lab, 2, port())
    with FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip, rate=1.0, kinds=["latency"],
                    only="list-type", latency=12.0) as slow, \
            FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip) as direct:
        results = run_job(lab, tmp_path, 2, ["true"],
                          lambda i: {**contract(i), "AWS_ENDPOINT_URL":
                                     (slow if i == 0 else direct).endpoint},
                          extra={"DLS_APP_URL": tree, "BOOTSTRAP_PEER_FETCH": "on",
                                 "BOOTSTRAP_LOG_FORMAT": "json"})
    for r in results:
        assert r.code == 0, r.err
        assert digest(r.home / "user-job-dir" / "peer") == WANT
    assert stage(results[0].err, "fetch")["seconds"] > 12  # the wait was real
    assert set(direct.object_gets) == {"/mn-code/peer/uneven.bin"}, direct.object_gets
    assert stage(results[1].err, "fetch")["peer_files"] == len(FILES) + 1


def test_strangers_and_paths_outside_the_tree_are_refused(lab: Lab, tree: str,  # noqa: F811
                                                          tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    relay_port = port()
    contract = old_contract(lab, 2, port())
    env_extra = {"DLS_APP_URL": tree, "BOOTSTRAP_PEER_FETCH": "on", "MA_JOB_ID": "relay-auth",
                 "BOOTSTRAP_RELAY_PORT": str(relay_port), "BOOTSTRAP_NETWORK": "off",
                 "BOOTSTRAP_BARRIER": "off", "BOOTSTRAP_PEER_TIMEOUT": "60"}
    key = relay.job_key(lab.s3.secret_key, "relay-auth")
    answers: list[bytes] = []

    def probe() -> None:  # node 1's place in the tree, taken by a test client
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection((lab.hosts.addr(0), relay_port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        nonce = conn.makefile("rb").readline().split()[1].decode()
        conn.sendall(json.dumps({"rank": 1, "proof": "0" * 64}).encode() + b"\n")
        answers.append(conn.recv(100))  # wrong key: closed without a word
        conn.close()
        conn = socket.create_connection((lab.hosts.addr(0), relay_port), timeout=5)
        reader = conn.makefile("rb")
        nonce = reader.readline().split()[1].decode()
        conn.sendall(json.dumps({"rank": 1, "proof": relay.proof(key, nonce, 1)}).encode()
                     + b"\n")
        assert reader.readline() == b"OK\n"
        conn.sendall(json.dumps({"get": ["../../../../etc/passwd"]}).encode() + b"\n")
        answers.append(reader.read())  # refused: nothing but the closed connection
        conn.close()

    results = run_job(lab, tmp_path, 2, ["true"], contract, extra=env_extra, only=[0],
                      during=probe)
    r = results[0]
    assert r.code == 0, r.err
    assert answers == [b"", b""]
    assert "relay: refused" in r.err and "no proof of the job's key" in r.err
    assert "a path outside the job's tree" in r.err


def test_staged_data_goes_down_the_tree_too(lab: Lab, tree: str,  # noqa: F811
                                            tmp_path: Path) -> None:
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    contract = old_contract(lab, 3, port())
    with FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip) as proxy:
        results = run_job(lab, tmp_path, 3, ["true"],
                          lambda i: {**contract(i), "BOOTSTRAP_DATA_DIR": str(tmp_path / f"d{i}")},
                          extra={"DLS_DATA_URL": tree, "AWS_ENDPOINT_URL": proxy.endpoint,
                                 "BOOTSTRAP_PEER_FETCH": "on", "BOOTSTRAP_LOG_FORMAT": "json"})
    for r in results:
        assert r.code == 0, r.err
        assert digest((tmp_path / f"d{r.rank}" / "peer").resolve()) == WANT, r.rank
    data = {k: v for k, v in proxy.object_gets.items()
            if k.startswith("/mn-code/peer/") and not k.endswith("uneven.bin")}
    assert len(data) == len(FILES) + 1 and set(data.values()) == {1}, data  # one copy
    for r in results[1:]:
        assert stage(r.err, "data")["peer_files"] == len(FILES) + 1
