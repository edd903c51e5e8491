"""The download engine against the real SeaweedFS server, through the real entrypoint."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
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
from tests.support.hostile_s3 import HostileS3

pytestmark = pytest.mark.timeout(300)


def fetch_env(s3: S3Server, home: Path, url: str, **extra: str) -> dict[str, str]:
    return base_env(home, {**s3.env(), "DLS_APP_URL": url, **extra})


def files_besides_our_own(home: Path) -> list[Path]:
    """What a failed fetch left under the home, besides the bootstrap's own preflight
    report (it runs beside the download) and its failure record: a refused tree must
    leave nothing."""
    ours = {home / "user-job-dir" / "preflight.json", home / "user-job-dir" / "failure.json"}
    return [p for p in home.rglob("*") if p.is_file() and p not in ours]


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_tree_lands_byte_for_byte(s3: S3Server, bucket: Bucket, home: Path) -> None:
    rng = random.Random(7)
    files = {
        "train.py": b"print('ok')\n",
        "with space/ünïcødé 文件.txt": "héllo".encode(),
        "/".join(f"d{i}" for i in range(12)) + "/deep.txt": b"deep",
        "big.bin": rng.randbytes(300 * 1024 + 17),  # > range size below: fetched as ranges
        "empty.txt": b"",
    }
    files.update({f"many/{i:04d}.py": rng.randbytes(rng.randint(1, 2048)) for i in range(1100)})
    bucket.put_tree(files, "new/")
    bucket.put("new/only-a-folder/")  # a directory marker
    env = fetch_env(s3, home, f"s3://{bucket.name}/new", BOOTSTRAP_RANGE_SIZE="65536",
                    BOOTSTRAP_MULTIPART_THRESHOLD="131072", BOOTSTRAP_LOG_FORMAT="json")
    r = run_train(["python", "-c", "import os; print(os.getcwd())"], env)
    assert r.returncode == 0, r.stderr
    code = home / "user-job-dir" / "new"
    assert r.stdout.strip() == str(code)
    assert tree_digest(code) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    assert (code / "only-a-folder").is_dir()
    assert not list(code.rglob("*.bootstrap-tmp"))
    assert stage(r.stderr, "fetch")["files"] == 1105


LOOP_MODULES = ("asyncio", "concurrent.futures", "obstore")
# And what else a fetch on threads does without (measured, bench/README.md): the listing
# is read by expat itself, pip's subprocess waits for a job that installs.
NOT_ON_THREADS = (*LOOP_MODULES, "xml.etree.ElementTree", "subprocess")


def fetch_in_process(env: dict[str, str]) -> tuple[list[str], str]:
    """A job's fetch run by the entry point in a fresh interpreter, stopped at its exec:
    which of NOT_ON_THREADS it imported, and its stderr."""
    code = ("import json, os, sys\n"
            "def shown(*args):\n"
            f"    print(json.dumps([m for m in {list(NOT_ON_THREADS)!r} if m in sys.modules]),"
            " flush=True)\n"
            "    os._exit(0)\n"
            "os.execve = shown\n"
            "from bootstrap.__main__ import job_main\n"
            "sys.argv = ['run_train.sh', 'true']\n"
            "job_main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    loaded: list[str] = json.loads(r.stdout)
    return loaded, r.stderr


def test_large_objects_and_a_few_small_ones_need_no_event_loop(
        s3: S3Server, bucket: Bucket, home: Path) -> None:
    """Large objects come as ranges over the signed client on threads, and so do whole
    objects when there are few of them: such a tree never imports the event loop or opens
    the store (asyncio, concurrent.futures and obstore: ~80 ms of the job's start), nor
    the rest of NOT_ON_THREADS. Many small objects come through the store, hundreds in
    flight from one loop."""
    from bootstrap.transfer.download import THREADED_SMALLS

    rng = random.Random(11)
    large = {"a.bin": rng.randbytes(300 * 1024), "sub/b.bin": rng.randbytes(200 * 1024 + 5)}
    few = {f"src/m{i}.py": rng.randbytes(rng.randint(0, 3000)) for i in range(THREADED_SMALLS)}
    many = {**few, "src/one-more.py": b"print('one more')\n"}
    parts = [rng.randbytes(5 << 20), rng.randbytes(1 << 20)]  # its parts asked with HEADs
    large["multi.bin"] = b"".join(parts)
    trees = {"large": large, "few": {**large, **few}, "many": {**large, **many}}
    for prefix, files in trees.items():
        bucket.put_tree({k: v for k, v in files.items() if k != "multi.bin"}, f"{prefix}/")
        assert bucket.put_multipart(f"{prefix}/multi.bin", parts).endswith("-2")
        env = fetch_env(s3, home, f"s3://{bucket.name}/{prefix}", BOOTSTRAP_RANGE_SIZE="65536",
                        BOOTSTRAP_MULTIPART_THRESHOLD="131072")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        loaded, err = fetch_in_process(env)
        fetched = [line for line in err.splitlines() if "stage fetch:" in line]
        assert len(fetched) == 1, err
        if prefix == "many":
            assert "via native" in fetched[0], err
            assert set(LOOP_MODULES) <= set(loaded), loaded
        else:
            assert "via signed GETs" in fetched[0], err
            assert loaded == [], loaded
        assert tree_digest(home / "user-job-dir" / prefix) == {
            k: hashlib.md5(v).hexdigest() for k, v in files.items()}
        assert "checked by size only" not in fetched[0], err  # the multipart one too
def test_rerun_skips_unchanged_files(s3: S3Server, bucket: Bucket, home: Path) -> None:
    bucket.put_tree({f"f{i}.txt": os.urandom(100) for i in range(20)}, "code/")
    env = fetch_env(s3, home, f"s3://{bucket.name}/code/", BOOTSTRAP_LOG_FORMAT="json")
    assert run_train(["true"], env).returncode == 0
    target = home / "user-job-dir" / "code" / "f3.txt"
    before = target.stat().st_mtime_ns
    bucket.put("code/f5.txt", b"changed")  # one object changes between runs
    r = run_train(["true"], env)
    assert r.returncode == 0, r.stderr
    fetched = stage(r.stderr, "fetch")
    assert (fetched["files"], fetched["skipped"], fetched["total_files"]) == (1, 19, 20)
    assert target.stat().st_mtime_ns == before
    assert (home / "user-job-dir" / "code" / "f5.txt").read_bytes() == b"changed"
    # A local edit invalidates the record: the file is fetched again.
    target.write_bytes(b"edited locally!!")
    r = run_train(["true"], env)
    assert stage(r.stderr, "fetch")["files"] == 1, r.stderr
    assert len(target.read_bytes()) == 100


def test_bucket_root_lands_in_bucket_name(s3: S3Server, bucket: Bucket, home: Path) -> None:
    bucket.put("a.py", b"x")
    r = run_train(["true"], fetch_env(s3, home, f"obs://{bucket.name}"))
    assert r.returncode == 0, r.stderr
    assert (home / "user-job-dir" / bucket.name / "a.py").read_bytes() == b"x"


@pytest.mark.parametrize("case, needle", [
    ("empty", "no objects under"),
    ("missing-bucket", "does not exist"),
    ("wrong-secret", "secret key does not match"),
    ("wrong-key", "access key id is not known"),
    ("refused", "cannot connect"),
])
def test_download_errors_exit_127_with_one_line(s3: S3Server, bucket: Bucket, home: Path, case: str,
                                                needle: str) -> None:
    bucket.put("other/x.py", b"x")
    env = fetch_env(s3, home, f"s3://{bucket.name}/code/", BOOTSTRAP_RETRY_ATTEMPTS="2")
    if case == "missing-bucket":
        env["DLS_APP_URL"] = "s3://no-such-bucket-here/code/"
    elif case == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value-xyz"
    elif case == "wrong-key":
        env["AWS_ACCESS_KEY_ID"] = "AKIDNOSUCHKEY"
    elif case == "refused":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    r = run_train(["python", "-c", "print('must not run')"], env)
    assert r.returncode == 127
    assert "must not run" not in r.stdout
    assert_one_error_line(r.stderr, needle)
    assert s3.secret_key not in r.stderr + r.stdout


@pytest.mark.parametrize("key", ["code/../escape.txt", "code//abs.txt", "code/a\\..\\b.txt"])
def test_traversal_keys_from_a_hostile_server(home: Path, key: str) -> None:
    with HostileS3({"code/ok.txt": b"ok", key: b"evil"}) as srv:
        env = base_env(home, {"AWS_ENDPOINT_URL": srv.endpoint, "AWS_ACCESS_KEY_ID": "x",
                              "AWS_SECRET_ACCESS_KEY": "y", "DLS_APP_URL": "s3://bkt/code/"})
        r = run_train(["true"], env)
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "refusing object key")
    assert files_besides_our_own(home) == []


def test_symlink_in_destination_is_not_followed(s3: S3Server, bucket: Bucket, home: Path,
                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    code = home / "user-job-dir" / "code"
    code.mkdir(parents=True)
    (code / "sub").symlink_to(outside)
    (code / "link.py").symlink_to(outside / "victim.py")
    bucket.put_tree({"sub/x.py": b"x", "link.py": b"y"}, "code/")
    r = run_train(["true"], fetch_env(s3, home, f"s3://{bucket.name}/code/"))
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "symlink")
    assert list(outside.iterdir()) == []


def test_body_shorter_than_listing_is_an_error_not_a_file(home: Path) -> None:
    with HostileS3({"code/a.txt": b"abc"}, size_lie=5) as srv:
        env = base_env(home, {"AWS_ENDPOINT_URL": srv.endpoint, "AWS_ACCESS_KEY_ID": "x",
                              "AWS_SECRET_ACCESS_KEY": "y", "DLS_APP_URL": "s3://bkt/code/",
                              "BOOTSTRAP_RETRY_ATTEMPTS": "2"})
        r = run_train(["true"], env)
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "listing says")
    assert not (home / "user-job-dir" / "code" / "a.txt").exists()


def test_endless_listing_and_html_endpoint(home: Path) -> None:
    base = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
            "DLS_APP_URL": "s3://bkt/code/", "BOOTSTRAP_RETRY_ATTEMPTS": "2"}
    with HostileS3({"code/a.txt": b"abc"}, endless_listing=True) as srv:
        r = run_train(["true"], base_env(home, {**base, "AWS_ENDPOINT_URL": srv.endpoint}))
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "never ends")
    with HostileS3({}, html=True) as srv:
        r = run_train(["true"], base_env(home, {**base, "AWS_ENDPOINT_URL": srv.endpoint}))
    assert r.returncode == 127
    assert_one_error_line(r.stderr)


def test_local_code_dir_is_copied(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("V = 3\n")
    (src / "train.py").write_text("from pkg.m import V; print(V)\n")
    for url in (str(src), f"file://{src}"):
        r = run_train(["python", "train.py"], base_env(home, {"DLS_APP_URL": url}))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "3"
    r = run_train(["true"], base_env(home, {"DLS_APP_URL": str(tmp_path / "nope")}))
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "does not exist")


HOSTILE_ENV = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
               "DLS_APP_URL": "s3://bkt/code/", "BOOTSTRAP_RETRY_ATTEMPTS": "2"}


@pytest.mark.parametrize("objects, needle", [
    ({"code//etc/passwd": b"root"}, "refusing object key"),
    ({"code/" + "n" * 300 + ".py": b"x"}, "longer than 255 bytes"),
    ({"code/a": b"file", "code/a/b.py": b"nested"}, "both a file and a folder"),
    ({"code/x.py": b"abc", "code/nul\x01.py": b"x"}, "did not answer like an S3 server"),
])
def test_more_hostile_listings(home: Path, objects: dict[str, bytes], needle: str) -> None:
    with HostileS3(objects) as srv:
        r = run_train(["true"], base_env(home, {**HOSTILE_ENV, "AWS_ENDPOINT_URL": srv.endpoint}))
    assert r.returncode == 127
    assert_one_error_line(r.stderr, needle)
    assert files_besides_our_own(home) == []


def test_body_longer_than_listing(home: Path) -> None:
    with HostileS3({"code/a.txt": b"abcdef"}, size_lie=-3) as srv:
        r = run_train(["true"], base_env(home, {**HOSTILE_ENV, "AWS_ENDPOINT_URL": srv.endpoint}))
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "listing says 3")
    assert not (home / "user-job-dir" / "code" / "a.txt").exists()


def test_a_listing_of_millions_is_cut_off_in_bounded_time_and_memory(home: Path,
                                                                    tmp_path: Path) -> None:
    stats = tmp_path / "time.txt"
    with HostileS3({}, generated=5_000_000) as srv:
        env = base_env(home, {**HOSTILE_ENV, "AWS_ENDPOINT_URL": srv.endpoint,
                              "BOOTSTRAP_MAX_FILES": "50000"})
        started = time.monotonic()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(stats), "bash",
                            str(RUN_TRAIN), "true"], env=env, capture_output=True, text=True,
                           timeout=300)
        elapsed = time.monotonic() - started
    assert r.returncode == 127
    assert_one_error_line(r.stderr, "more than 50000 files", "BOOTSTRAP_MAX_FILES")
    peak_mib = int(stats.read_text().split()[-1]) / 1024
    assert peak_mib < 200, peak_mib
    assert elapsed < 120, elapsed


ENCRYPTED = {"code/train.py": b"print('sealed')\n" * 50,
             "code/weights/w.bin": random.Random(11).randbytes(3 << 20)}


@pytest.mark.parametrize("path", ["threads", "event loop", "ranges", "streamed"])
def test_objects_the_store_encrypts_land_checked_by_size(home: Path, path: str) -> None:
    """OBS encrypts objects on its side when a bucket has default encryption (SSE-KMS,
    SSE-OBS), and then lists ETags of an MD5's shape that are not the bodies' MD5s.
    Before: each such object failed its check on every whole fetch and the job stopped
    with "the object store serves a broken object". Now a sum that differs has the store
    asked (a HEAD, once an object, no fetch again): encrypted, so checked by size only,
    said in one line; on each path a body takes."""
    env = {"threads": {}, "event loop": {"BOOTSTRAP_S3_BACKEND": "native"},
           "ranges": {"BOOTSTRAP_MULTIPART_THRESHOLD": str(1 << 20),
                      "BOOTSTRAP_RANGE_SIZE": str(1 << 20)},
           "streamed": {"BOOTSTRAP_MULTIPART_THRESHOLD": str(1 << 20)}}[path]
    with HostileS3(ENCRYPTED, encrypted="kms", ranges=path != "streamed") as srv:
        r = run_train(["true"], base_env(home, {**HOSTILE_ENV, "AWS_ENDPOINT_URL": srv.endpoint,
                                                "BOOTSTRAP_LOG_FORMAT": "json", **env}))
        heads = srv.heads
    assert r.returncode == 0, r.stderr
    assert tree_digest(home / "user-job-dir" / "code") == {
        rel.removeprefix("code/"): hashlib.md5(body).hexdigest()
        for rel, body in ENCRYPTED.items()}
    fetched = stage(r.stderr, "fetch")
    assert fetched["unverified"] == 2 and fetched["retries"] == 0, fetched
    assert heads == 2  # asked once an object
    assert "2 object(s) are encrypted by the store" in r.stderr, r.stderr
    if path == "streamed":
        assert "streamed whole" in r.stderr


def test_a_sum_that_differs_on_a_store_that_does_not_say_why_still_fails(home: Path) -> None:
    """The control: the same ETags from a store that does not say the objects are
    encrypted are damage as far as anyone can tell: fetched again, then refused, and
    nothing lands under its name."""
    with HostileS3(ENCRYPTED, encrypted="kms", say_encrypted=False, ranges=True) as srv:
        r = run_train(["true"], base_env(home, {**HOSTILE_ENV, "AWS_ENDPOINT_URL": srv.endpoint}))
    assert r.returncode == 127, r.stderr
    assert_one_error_line(r.stderr, "does not match the ETag")
    code = home / "user-job-dir" / "code"
    assert not [p for p in code.rglob("*") if p.is_file()]  # not even a temporary
