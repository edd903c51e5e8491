"""Data staging (DLS_DATA_URL -> BOOTSTRAP_DATA_DIR) with a real S3 server and real
processes: whole and sharded, once per node, reused across jobs, space checked first."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from devtools.s3server import S3Server
from tests.conftest import (
    RUN_TRAIN,
    Bucket,
    assert_one_error_line,
    base_env,
    run_train,
    stage,
)
from tests.support.faultproxy import FaultProxy

SHOW = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "['BOOTSTRAP_DATA_PATH', 'BOOTSTRAP_DATA_SHARE_FILE', 'DLS_DATA_URL']}))")


def tree(rng: random.Random) -> dict[str, bytes]:
    files = {f"train/shard-{i:03d}.bin": rng.randbytes(rng.randint(1, 40_000)) for i in range(60)}
    files.update({"val/a/b/deep.json": b'{"ok": 1}\n', "README": b"data\n",
                  "ünï/文件.txt": "héllo".encode(), "big.bin": rng.randbytes(300_000)})
    return files


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


def data_env(s3: S3Server, home: Path, url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return base_env(home, {**s3.env(), "DLS_DATA_URL": url, "BOOTSTRAP_DATA_DIR": str(data_dir),
                           "BOOTSTRAP_LOG_FORMAT": "json", "BOOTSTRAP_RANGE_SIZE": "65536",
                           "BOOTSTRAP_MULTIPART_THRESHOLD": "131072", **extra})


def shown(r: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert r.returncode == 0, r.stderr
    seen: dict[str, str] = json.loads(r.stdout.strip().splitlines()[-1])
    return seen


def test_a_nested_tree_is_staged_byte_for_byte(s3: S3Server, bucket: Bucket, home: Path,
                                               tmp_path: Path) -> None:
    files = tree(random.Random(1))
    bucket.put_tree(files, "datasets/imgs/")
    url = f"s3://{bucket.name}/datasets/imgs/"
    r = run_train(["python", "-c", SHOW], data_env(s3, home, url, tmp_path / "cache"))
    seen = shown(r)
    path = Path(seen["BOOTSTRAP_DATA_PATH"])
    assert digest(path) == md5s(files)
    assert seen["DLS_DATA_URL"] == url  # passed through unchanged
    assert (tmp_path / "cache" / "imgs").resolve() == path  # <last component>, switched
    share = Path(seen["BOOTSTRAP_DATA_SHARE_FILE"]).read_text().splitlines()
    assert share == sorted(files, key=lambda k: k.encode())
    assert stage(r.stderr, "data")["files"] == len(files)
    assert not [p for p in path.rglob("*") if "bootstrap-tmp" in p.name]


def test_sharded_over_three_nodes_each_holds_its_share(s3: S3Server, bucket: Bucket,
                                                       home: Path, tmp_path: Path) -> None:
    files = tree(random.Random(2))
    bucket.put_tree({**files, "train/folder-marker/": b""}, "ds/")
    url = f"s3://{bucket.name}/ds/"
    hosts = "127.0.0.1,127.0.0.2,127.0.0.3"
    held: dict[str, str] = {}
    ordered = sorted(files, key=lambda k: k.encode())
    for rank in range(3):
        env = data_env(s3, home / f"n{rank}", url, tmp_path / f"node{rank}",
                       BOOTSTRAP_DATA_SHARD="node", VC_TASK_INDEX=str(rank), MA_NUM_HOSTS="3",
                       VC_WORKER_HOSTS=hosts, BOOTSTRAP_NETWORK="off",
                       BOOTSTRAP_VOLCANO_DIR=str(tmp_path / "none"))
        seen = shown(run_train(["python", "-c", SHOW], env))
        got = digest(Path(seen["BOOTSTRAP_DATA_PATH"]))
        assert sorted(got) == sorted(ordered[rank::3]), rank  # key i goes to node i mod 3
        assert Path(seen["BOOTSTRAP_DATA_SHARE_FILE"]).read_text().splitlines() == \
            ordered[rank::3]
        assert not set(got) & set(held), "a key was staged on two nodes"
        held.update(got)
    assert held == md5s(files)  # together exactly one copy, folder marker left out


def test_two_processes_at_once_download_once(s3: S3Server, bucket: Bucket, home: Path,
                                             tmp_path: Path) -> None:
    # The large object's GETs wait 2 s, so the first stager holds the lock for seconds
    # and the two really overlap: the second must wait for it (the log says so), not
    # merely find a finished copy after a sequential first run.
    files = tree(random.Random(3))
    bucket.put_tree(files, "once/")
    with FaultProxy(s3.endpoint, rate=1.0, kinds=["latency"], latency=2.0, only="big.bin",
                    method="GET") as proxy:
        env = data_env(s3, home, f"s3://{bucket.name}/once/", tmp_path / "cache",
                       AWS_ENDPOINT_URL=proxy.endpoint)
        procs = [subprocess.Popen(["bash", str(RUN_TRAIN), "python", "-c", SHOW], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    paths = {json.loads(out.strip().splitlines()[-1])["BOOTSTRAP_DATA_PATH"] for out, _ in outs}
    assert len(paths) == 1 and digest(Path(paths.pop())) == md5s(files)
    big = f"/{bucket.name}/once/big.bin"
    small_gets = {k: v for k, v in proxy.object_gets.items() if k != big}
    assert len(small_gets) == len(files) - 1 and set(small_gets.values()) == {1}, small_gets
    assert proxy.object_gets[big] == 5  # its 5 ranges, once: one set of GETs in all
    reused = [stage(err, "data")["reused"] for _, err in outs]
    assert sorted(reused) == [False, True]
    waiter = outs[reused.index(True)][1]
    assert "another process on this node is staging the same data" in waiter  # overlapped
    assert "waiting for it" not in outs[reused.index(False)][1]


def test_rerun_fetches_only_what_changed_and_drops_what_went(s3: S3Server, bucket: Bucket,
                                                              home: Path, tmp_path: Path) -> None:
    files = tree(random.Random(4))
    bucket.put_tree(files, "rr/")
    url = f"s3://{bucket.name}/rr/"
    first = Path(shown(run_train(["python", "-c", SHOW],
                                 data_env(s3, home, url, tmp_path / "cache")))
                 ["BOOTSTRAP_DATA_PATH"])
    bucket.put("rr/README", b"changed\n")
    bucket.client.delete_object(Bucket=bucket.name, Key="rr/val/a/b/deep.json")
    with FaultProxy(s3.endpoint) as proxy:
        env = data_env(s3, home, url, tmp_path / "cache", AWS_ENDPOINT_URL=proxy.endpoint)
        r = run_train(["python", "-c", SHOW], env)
    second = Path(shown(r)["BOOTSTRAP_DATA_PATH"])
    assert dict(proxy.object_gets) == {f"/{bucket.name}/rr/README": 1}  # exactly one GET
    want = {**files, "README": b"changed\n"}
    del want["val/a/b/deep.json"]
    assert digest(second) == md5s(want)
    assert second != first and not first.exists()  # the old version had no holder left
    assert (tmp_path / "cache" / "rr").resolve() == second
    fetched = stage(r.stderr, "data")
    assert (fetched["files"], fetched["skipped"]) == (1, len(want) - 1)


def test_a_running_job_keeps_its_version(s3: S3Server, bucket: Bucket, home: Path,
                                         tmp_path: Path) -> None:
    bucket.put_tree({"a.txt": b"v1\n"}, "keep/")
    url = f"s3://{bucket.name}/keep/"
    env = data_env(s3, home, url, tmp_path / "cache")
    reader = subprocess.Popen(
        ["bash", str(RUN_TRAIN), "python", "-c",
         "import os, sys, time; print(os.environ['BOOTSTRAP_DATA_PATH'], flush=True); "
         "sys.stdin.readline(); print(open(os.path.join(os.environ['BOOTSTRAP_DATA_PATH'], "
         "'a.txt')).read(), end='')"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdin is not None
    held = Path(reader.stdout.readline().strip())
    bucket.put("keep/a.txt", b"v2\n")
    newer = Path(shown(run_train(["python", "-c", SHOW], env))["BOOTSTRAP_DATA_PATH"])
    assert newer != held and (newer / "a.txt").read_bytes() == b"v2\n"
    assert (held / "a.txt").read_bytes() == b"v1\n"  # not touched under the running job
    reader.stdin.write("\n")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and out == "v1\n", err
    shown(run_train(["python", "-c", SHOW], env))  # the next job finds no holder left
    assert not held.exists()


def test_another_source_in_the_same_folder_is_refused(s3: S3Server, bucket: Bucket,
                                                      home: Path, tmp_path: Path) -> None:
    bucket.put_tree({"x": b"1"}, "one/data/")
    bucket.put_tree({"y": b"2"}, "two/data/")
    cache = tmp_path / "cache"
    shown(run_train(["python", "-c", SHOW],
                    data_env(s3, home, f"s3://{bucket.name}/one/data/", cache)))
    r = run_train(["true"], data_env(s3, home, f"s3://{bucket.name}/two/data/", cache,
                                     BOOTSTRAP_LOG_FORMAT="text"))
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "another BOOTSTRAP_DATA_DIR", "one/data/")
    assert digest(cache / "data") == {"x": hashlib.md5(b"1").hexdigest()}


def test_not_enough_space_is_exit_7_before_any_download(s3: S3Server, bucket: Bucket,
                                                         home: Path, tmp_path: Path) -> None:
    bucket.put_tree({"a.bin": os.urandom(900_000), "b.bin": os.urandom(900_000)}, "big/")
    target = tmp_path / "small"
    target.mkdir()
    env = data_env(s3, home, f"s3://{bucket.name}/big/", target / "data",
                   BOOTSTRAP_LOG_FORMAT="text")
    # A 1 MiB tmpfs in a private mount namespace (gone with the process).
    cmd = (f"mount -t tmpfs -o size=1m tmpfs {target} && "
           f"exec bash {RUN_TRAIN} python -c 'print(1)'")
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=env, capture_output=True,
                       text=True, timeout=120)
    if "mount:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    assert r.returncode == 7, r.stderr
    assert_one_error_line(r.stderr, "staging needs 1.8 MB", "MB free")
    assert r.stdout == ""
    # The cap says the same without a small disk.
    r = run_train(["true"], {**env, "BOOTSTRAP_DATA_DIR": str(tmp_path / "capped"),
                             "BOOTSTRAP_DATA_MAX_GB": "0.001"})
    assert r.returncode == 7
    assert_one_error_line(r.stderr, "is 1.8 MB, over BOOTSTRAP_DATA_MAX_GB=0.001")
    staged = [p for p in (tmp_path / "capped").rglob("*") if p.is_file() and p.suffix == ".bin"]
    assert staged == []


def test_a_mounted_path_and_a_single_object(s3: S3Server, bucket: Bucket, home: Path,
                                            tmp_path: Path) -> None:
    mounted = tmp_path / "sfs" / "corpus"
    files = {"a/1.txt": b"one", "b.txt": b"two"}
    for rel, data in files.items():
        (mounted / rel).parent.mkdir(parents=True, exist_ok=True)
        (mounted / rel).write_bytes(data)
    seen = shown(run_train(["python", "-c", SHOW],
                           data_env(s3, home, str(mounted), tmp_path / "c1")))
    assert digest(Path(seen["BOOTSTRAP_DATA_PATH"])) == md5s(files)
    archive = os.urandom(200_000)
    bucket.put("sets/train.tar", archive)
    seen = shown(run_train(["python", "-c", SHOW],
                           data_env(s3, home, f"s3://{bucket.name}/sets/train.tar",
                                    tmp_path / "c2")))
    path = Path(seen["BOOTSTRAP_DATA_PATH"])
    assert path.name == "train.tar" and path.read_bytes() == archive
    assert (tmp_path / "c2" / "train.tar").resolve() == path
    # One object cannot be split: with sharding on, node 1 of 2 stages it too.
    seen = shown(run_train(["python", "-c", SHOW], data_env(
        s3, home, f"s3://{bucket.name}/sets/train.tar", tmp_path / "c3",
        BOOTSTRAP_DATA_SHARD="node", VC_TASK_INDEX="1", MA_NUM_HOSTS="2",
        VC_WORKER_HOSTS="127.0.0.1,127.0.0.2", BOOTSTRAP_NETWORK="off",
        BOOTSTRAP_VOLCANO_DIR=str(tmp_path / "none"))))
    assert Path(seen["BOOTSTRAP_DATA_PATH"]).read_bytes() == archive


def test_faults_during_staging_still_give_a_verified_tree(s3: S3Server, bucket: Bucket,
                                                          home: Path, tmp_path: Path) -> None:
    files = tree(random.Random(5))
    bucket.put_tree(files, "f/")
    with FaultProxy(s3.endpoint, rate=0.1, seed=11,
                    kinds=("slowdown", "error500", "reset", "midreset", "truncate")) as proxy:
        env = data_env(s3, home, f"s3://{bucket.name}/f/", tmp_path / "cache",
                       AWS_ENDPOINT_URL=proxy.endpoint, BOOTSTRAP_S3_READ_TIMEOUT="2")
        seen = shown(run_train(["python", "-c", SHOW], env, timeout=180))
    assert sum(proxy.injected.values()) > 3
    assert digest(Path(seen["BOOTSTRAP_DATA_PATH"])) == md5s(files)


def test_without_a_data_dir_nothing_is_staged(s3: S3Server, bucket: Bucket, home: Path,
                                              tmp_path: Path) -> None:
    env = data_env(s3, home, f"s3://{bucket.name}/x/", tmp_path / "cache")
    del env["BOOTSTRAP_DATA_DIR"]
    seen = shown(run_train(["python", "-c", SHOW], env))
    assert seen["BOOTSTRAP_DATA_PATH"] is None and not (tmp_path / "cache").exists()
