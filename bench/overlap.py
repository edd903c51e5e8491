"""Start-to-exec of a 2-node job whose peer's DNS name resolves late, before and after
the stages overlapped (download, preflight and DNS wait concurrently).

    .venv/bin/python bench/overlap.py [REV]    # REV: the code to compare (default HEAD~1)

Two real hosts (network namespaces, root only); node 0 cannot resolve node 1 for the
first ``--dns-lag`` seconds; both download a 2,000-file code directory from a real S3
server and run ``true``. Prints each node's wall time for the given revision and for
the working tree.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.s3server import S3Server  # noqa: E402
from tests.support.netns import Hosts  # noqa: E402


def run_once(hosts: Hosts, s3: S3Server, tree: Path, lag: float) -> list[float]:
    port = random.randrange(20000, 40000)
    env_base = {**os.environ, **s3.env(), "DLS_APP_URL": "s3://overlap/code/",
                "BATCH_CUSTOM0_HOSTS": f"node-0:{port}", "BATCH_CUSTOM1_HOSTS": f"node-1:{port}",
                "DLS_TASK_NUMBER": "2", "PYTHONPATH": str(tree),
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    hosts.write_hosts(0, [0])  # node-0 does not know node-1 yet
    hosts.write_hosts(1, [0, 1])
    homes = [Path(tempfile.mkdtemp()) for _ in range(2)]
    started = time.monotonic()
    threading.Timer(lag, hosts.add_host, (0, 1)).start()
    procs = [hosts.spawn(i, ["bash", str(tree / "scripts/run_train.sh"), "true"],
                         {**env_base, "DLS_TASK_INDEX": str(i), "BOOTSTRAP_HOME": str(homes[i])})
             for i in range(2)]
    times = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        times.append(time.monotonic() - started)
    for h in homes:
        shutil.rmtree(h, ignore_errors=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", nargs="?", default="HEAD~1")
    ap.add_argument("--dns-lag", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    old = Path(tempfile.mkdtemp(prefix="overlap-old-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.rev],
                   check=True, capture_output=True)
    try:
        rng = random.Random(3)
        with Hosts(2) as hosts, S3Server(ip=hosts.bridge_ip) as s3:
            client = s3.client()
            client.create_bucket(Bucket="overlap")
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: client.put_object(
                    Bucket="overlap", Key=f"code/d{i % 20}/f{i}.py",
                    Body=rng.randbytes(4096)), range(2000)))
            for label, tree in ((f"before ({args.rev})", old), ("after (working tree)", REPO)):
                runs = [run_once(hosts, s3, tree, args.dns_lag) for _ in range(args.reps)]
                node0 = statistics.median(r[0] for r in runs)
                node1 = statistics.median(r[1] for r in runs)
                print(f"{label:28s} node 0 {node0:5.2f} s, node 1 {node1:5.2f} s "
                      f"(DNS of node-1 resolves on node 0 after {args.dns_lag:g} s)", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                       capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
