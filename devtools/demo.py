"""The README's main job: a local ModelArts-like job against a local S3 server.

``BOOTSTRAP_DEMO_NODES=N`` (default 1) runs it as N nodes on this machine
(127.0.0.2, 127.0.0.3, ...), described by the platform's BATCH_CUSTOM{i}_HOSTS.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from devtools.s3server import S3Server, upload_tree

REPO = Path(__file__).resolve().parent.parent


def _relay(prefix: str, stream: object, out: object) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.write(prefix + line)  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]


def main() -> int:
    nodes = int(os.environ.get("BOOTSTRAP_DEMO_NODES", "1"))
    home = Path(tempfile.mkdtemp(prefix="bootstrap-demo-home-"))
    try:
        with S3Server() as s3:
            client = s3.client()
            client.create_bucket(Bucket="demo-code")
            n = upload_tree(client, "demo-code", REPO / "examples" / "hello", "hello/")
            print(f"demo: local S3 server at {s3.endpoint}, uploaded {n} files to "
                  "s3://demo-code/hello/", flush=True)
            argv = ["bash", str(REPO / "scripts" / "run_train.sh"), "python", "train.py",
                    "--lr", "0.05", *sys.argv[1:]]
            print(f"demo: {nodes} node(s): {' '.join(argv[1:])}", flush=True)
            base = {**os.environ, **s3.env(), "DLS_APP_URL": "s3://demo-code/hello/"}
            if nodes == 1:
                return subprocess.call(argv, env={**base, "BOOTSTRAP_HOME": str(home),
                                                  "DLS_TASK_INDEX": "0"})
            port = random.randrange(20000, 40000)
            hosts = {f"BATCH_CUSTOM{i}_HOSTS": f"127.0.0.{i + 2}:{port}" for i in range(nodes)}
            procs, relays = [], []
            for i in range(nodes):
                env = {**base, **hosts, "DLS_TASK_INDEX": str(i), "DLS_TASK_NUMBER": str(nodes),
                       "BOOTSTRAP_HOME": str(home / f"node{i}"), "GLOO_SOCKET_IFNAME": "lo"}
                p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
                procs.append(p)
                t = threading.Thread(target=_relay, args=(f"[node {i}] ", p.stdout, sys.stdout))
                t.start()
                relays.append(t)
            codes = [p.wait() for p in procs]
            for t in relays:
                t.join()
            print(f"demo: exit codes {codes}")
            return max(codes)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
