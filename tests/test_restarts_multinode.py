"""Restarts across real nodes (network-namespace hosts): no node's output lost to
another's, every node's restore, and node 0's tree read from the store once through
the relay."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import stage
from tests.support.faultproxy import FaultProxy
from tests.support.lab import Lab, NodeResult, old_contract, port, run_job

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

# Every node writes metrics.json (its own content); node 0 also a checkpoint folder.
# Each node then prints what its output folder held when it started, as JSON.
WRITE_AND_SHOW = r'''
import hashlib, json, os
out = os.environ["BOOTSTRAP_OUTPUT_DIR"]
found = {}
for folder, _, names in os.walk(out):
    for name in names:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, out)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
print(json.dumps({"attempt": os.environ["BOOTSTRAP_ATTEMPT"], "rank": os.environ["NODE_RANK"],
                  "found": found}), flush=True)
if os.environ["BOOTSTRAP_ATTEMPT"] == "1":
    rank = os.environ["NODE_RANK"]
    open(os.path.join(out, "metrics.json"), "w").write(json.dumps({"node": rank}))
    if rank == "0":
        os.makedirs(os.path.join(out, "ckpt"), exist_ok=True)
        open(os.path.join(out, "ckpt", "model.bin"), "wb").write(b"weights of node 0" * 999)
'''


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shown(r: NodeResult) -> dict[str, Any]:
    line = [x for x in r.out.splitlines() if x.startswith("{")][-1]
    found: dict[str, Any] = json.loads(line)
    return found


def two_nodes(lab: Lab, tmp: Path, url: str, **extra: str) -> list[NodeResult]:
    contract = old_contract(lab, 2, port())
    results = run_job(lab, tmp, 2, ["python", "-c", WRITE_AND_SHOW],
                      lambda i: {**contract(i), "BOOTSTRAP_OUTPUT_DIR": str(tmp / f"out{i}")},
                      extra={"DLS_TRAIN_URL": url, "DLS_JOB_ID": "job-two", **extra})
    for r in results:
        assert r.code == 0, f"node {r.rank}: {r.err}"
    return results


def test_two_nodes_keep_both_outputs_and_a_restart_brings_each_its_own(
        lab: Lab, tmp_path: Path) -> None:
    client = lab.s3.client()
    bucket = "rs-" + uuid.uuid4().hex[:10]
    client.create_bucket(Bucket=bucket)

    def read(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    two_nodes(lab, tmp_path / "attempt-1", f"s3://{bucket}/train/")
    assert json.loads(read("train/metrics.json")) == {"node": "0"}
    assert json.loads(read("train/node-1/metrics.json")) == {"node": "1"}
    for rank, wrote in ((0, {"train/metrics.json", "train/ckpt/model.bin"}),
                        (1, {"train/node-1/metrics.json"})):
        listed = json.loads(read(f"train/.bootstrap/{rank}/complete.json"))["objects"]
        assert set(listed) == wrote
        for key, obj in listed.items():  # each manifest lists exactly what the store holds
            assert client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"') == obj["etag"]

    results = two_nodes(lab, tmp_path / "attempt-2", f"s3://{bucket}/train/")
    zero, one = shown(results[0]), shown(results[1])
    assert zero["attempt"] == one["attempt"] == "2"
    model = sha(b"weights of node 0" * 999)
    assert zero["found"] == {"metrics.json": sha(read("train/metrics.json")),
                             "ckpt/model.bin": model}
    assert one["found"] == {"metrics.json": sha(read("train/node-1/metrics.json")),
                            "ckpt/model.bin": model}  # its own metrics, node 0's checkpoint

    # The control, BOOTSTRAP_OUTPUT_LAYOUT=shared (the layout before this feature): one
    # node's metrics.json is gone from the store, and its manifest names an ETag that
    # the store no longer has.
    two_nodes(lab, tmp_path / "shared", f"s3://{bucket}/shared/", DLS_JOB_ID="job-shared",
              BOOTSTRAP_OUTPUT_LAYOUT="shared")
    kept = client.head_object(Bucket=bucket, Key="shared/metrics.json")["ETag"].strip('"')
    etags = [json.loads(read(f"shared/.bootstrap/{r}/complete.json"))["objects"]
             ["shared/metrics.json"]["etag"] for r in (0, 1)]
    assert sorted(e == kept for e in etags) == [False, True]


CHECKPOINT = {f"ckpt/shard-{i:02d}.pt":
              random.Random(i).randbytes(random.Random(i).randint(1, 300_000)) for i in range(24)}
BIG = [random.Random(99).randbytes(5 << 20), random.Random(98).randbytes(1 << 20)]  # 2 parts


@pytest.mark.parametrize("peer_fetch", ["on", "off"])
def test_four_nodes_restore_node_0s_tree_with_one_copy_from_the_store(
        lab: Lab, tmp_path: Path, peer_fetch: str) -> None:
    """``off`` is the control: each node reads its own copy from the store."""
    if not lab.hosts.real:
        pytest.skip("needs network namespaces")
    client = lab.s3.client()
    bucket = "rs4-" + uuid.uuid4().hex[:10]
    client.create_bucket(Bucket=bucket)
    # Attempt 1 of the four-node job: node 0 writes the checkpoint (one large file, in
    # two parts, and small shards), synced as any job's outputs are.
    source = tmp_path / "made"
    for rel, data in CHECKPOINT.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    (source / "ckpt" / "big.pt").write_bytes(b"".join(BIG))
    save = ("import os, shutil\nif os.environ['NODE_RANK'] == '0':\n"
            f"    shutil.copytree({str(source)!r}, os.environ['BOOTSTRAP_OUTPUT_DIR'], "
            "dirs_exist_ok=True)\n")
    contract = old_contract(lab, 4, port())
    first = run_job(lab, tmp_path / "attempt-1", 4, ["python", "-c", save],
                    lambda i: {**contract(i), "BOOTSTRAP_OUTPUT_DIR": str(tmp_path / f"a{i}")},
                    extra={"DLS_TRAIN_URL": f"s3://{bucket}/t4/", "DLS_JOB_ID": "job-four",
                           "BOOTSTRAP_MULTIPART_THRESHOLD": str(5 << 20)}, timeout=240)
    for r in first:
        assert r.code == 0, f"node {r.rank}: {r.err}"
    assert client.head_object(Bucket=bucket, Key="t4/ckpt/big.pt")["ETag"].endswith('-2"')
    want = {rel: sha(data) for rel, data in CHECKPOINT.items()}
    want["ckpt/big.pt"] = sha(b"".join(BIG))

    contract = old_contract(lab, 4, port())
    with FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip) as proxy:
        results = run_job(
            lab, tmp_path / "attempt-2", 4, ["python", "-c", WRITE_AND_SHOW],
            lambda i: {**contract(i), "BOOTSTRAP_OUTPUT_DIR": str(tmp_path / f"out{i}")},
            extra={"DLS_TRAIN_URL": f"s3://{bucket}/t4/", "DLS_JOB_ID": "job-four",
                   "AWS_ENDPOINT_URL": proxy.endpoint, "BOOTSTRAP_PEER_FETCH": peer_fetch,
                   "BOOTSTRAP_RELAY_PORT": str(port()), "BOOTSTRAP_LOG_FORMAT": "json"},
            timeout=240)
    for r in results:
        assert r.code == 0, f"node {r.rank}: {r.err}"
        found = shown(r)
        assert (found["attempt"], found["found"]) == ("2", want), r.rank  # every copy verified
    gets = {k: v for k, v in proxy.object_gets.items() if k.startswith(f"/{bucket}/t4/ckpt/")}
    assert len(gets) == len(want), gets
    if peer_fetch == "off":
        assert min(gets.values()) >= 4, gets
        return
    for r in results[1:]:  # each child's copy from its parent
        assert stage(r.err, "restore")["peer_files"] == len(want), r.err
    retried = sum(stage(r.err, "restore").get("retries", 0) for r in results)
    assert sum(v - 1 for v in gets.values()) <= retried, gets  # one copy from the store
