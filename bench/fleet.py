"""Many nodes fetching one code directory at once, through a throttling front.

    .venv/bin/python bench/fleet.py --nodes 16 64

N bootstraps (real processes through run_train.sh) download the same code directory
concurrently; the object store answers 503 SlowDown beyond ``--rate`` requests per
second, as OBS does when a large job starts. Reports the success rate (must be 100%),
the makespan, per-node times and the retries the fleet needed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.s3server import S3Server  # noqa: E402
from devtools.throttle import Throttle  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--rate", type=float, default=250.0, help="requests per second allowed")
    args = ap.parse_args()
    rng = random.Random(7)
    code = {f"src/m{i:03d}.py": rng.randbytes(rng.randint(1024, 8192)) for i in range(args.files)}
    rows = []
    with S3Server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="fleet")
        for key, body in code.items():
            client.put_object(Bucket="fleet", Key=f"job/{key}", Body=body)
        for n in args.nodes:
            with Throttle(s3.endpoint, rate=args.rate, burst=args.rate / 5) as gate:
                homes = [Path(tempfile.mkdtemp(prefix=f"fleet{n}-")) for _ in range(n)]
                env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": gate.endpoint,
                       "DLS_APP_URL": "s3://fleet/job/", "PATH": f"{BIN}:{os.environ['PATH']}",
                       "BOOTSTRAP_DOWNLOAD_WORKERS": "8"}
                started = time.monotonic()
                procs = [subprocess.Popen(["bash", str(REPO / "scripts/run_train.sh"), "true"],
                                          env={**env, "BOOTSTRAP_HOME": str(h)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True) for h in homes]
                results = []
                for p in procs:
                    _, err = p.communicate(timeout=1800)
                    results.append((p.returncode, time.monotonic() - started, err))
                makespan = time.monotonic() - started
                ok = sum(1 for code_, _, _ in results if code_ == 0)
                retries = sum(int(m.group(1)) for _, _, err in results
                              for m in re.finditer(r"(\d+) retries", err))
                times = sorted(t for _, t, _ in results)
                for h in homes:
                    shutil.rmtree(h, ignore_errors=True)
                row = {"nodes": n, "success": f"{ok}/{n}", "makespan_s": round(makespan, 1),
                       "p50_s": round(statistics.median(times), 1),
                       "p95_s": round(times[int(0.95 * (n - 1))], 1), "retries": retries,
                       "slowdowns": gate.throttled, "forwarded": gate.forwarded,
                       "ideal_s": round(n * args.files / args.rate, 1)}
                rows.append(row)
                print(row, flush=True)
                failures = [err.strip().splitlines()[-1] for c, _, err in results if c != 0]
                if failures:
                    print("  failures:", failures[:3])
    print("\nnodes  success  makespan  p50   p95   ideal  retries  slowdowns")
    for r in rows:
        print(f"{r['nodes']:5d}  {r['success']:>7s}  {r['makespan_s']:7.1f}s {r['p50_s']:5.1f} "
              f"{r['p95_s']:5.1f} {r['ideal_s']:5.1f}s {r['retries']:8d} {r['slowdowns']:9d}")
    return 0 if all(r["success"].split("/")[0] == r["success"].split("/")[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
