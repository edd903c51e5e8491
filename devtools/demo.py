"""The README's main job: a local single-node ModelArts job against a local S3 server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.s3server import S3Server, upload_tree

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="bootstrap-demo-home-"))
    try:
        with S3Server() as s3:
            client = s3.client()
            client.create_bucket(Bucket="demo-code")
            n = upload_tree(client, "demo-code", REPO / "examples" / "hello", "hello/")
            print(f"demo: local S3 server at {s3.endpoint}, uploaded {n} files to "
                  "s3://demo-code/hello/", flush=True)
            env = {**os.environ, **s3.env(), "DLS_APP_URL": "s3://demo-code/hello/",
                   "BOOTSTRAP_HOME": str(home), "DLS_TASK_INDEX": "0"}
            argv = ["bash", str(REPO / "scripts" / "run_train.sh"), "python", "train.py",
                    "--lr", "0.05", *sys.argv[1:]]
            print(f"demo: {' '.join(argv[1:])}", flush=True)
            return subprocess.call(argv, env=env)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
