"""Many nodes fetching one code directory at once, through a throttling front.

    .venv/bin/python bench/fleet.py --nodes 16 64
    .venv/bin/python bench/fleet.py --nodes 16 64 128 --peers   # root: namespace hosts

N bootstraps (real processes through run_train.sh) download the same code directory
concurrently; the object store answers 503 SlowDown beyond ``--rate`` requests per
second, as OBS does when a large job starts. Reports the success rate (must be 100%),
the makespan, per-node times, the retries the fleet needed and the store's object GETs.

With ``--peers`` every node is a network-namespace host of its own (its own address,
name and relay port) and each size runs twice in the same run, peer-assisted fetch off
and on (``BOOTSTRAP_PEER_FETCH``), so the rows compare directly.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.s3server import S3Server  # noqa: E402
from devtools.throttle import Throttle  # noqa: E402

if TYPE_CHECKING:
    from tests.support.netns import Hosts

BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--rate", type=float, default=250.0, help="requests per second allowed")
    ap.add_argument("--peers", action="store_true",
                    help="namespace hosts, each size with peer fetch off and on")
    args = ap.parse_args()
    rng = random.Random(7)
    code = {f"src/m{i:03d}.py": rng.randbytes(rng.randint(1024, 8192)) for i in range(args.files)}
    rows = []
    with contextlib.ExitStack() as stack:
        hosts = None
        if args.peers:
            from tests.support.netns import Hosts, namespaces_available

            reason = namespaces_available()
            if reason is not None:
                raise SystemExit(f"fleet: --peers needs network namespaces: {reason}")
            hosts = stack.enter_context(Hosts(max(args.nodes)))
        s3 = stack.enter_context(S3Server(ip=hosts.bridge_ip if hosts else "127.0.0.1"))
        client = s3.client()
        client.create_bucket(Bucket="fleet")
        for key, body in code.items():
            client.put_object(Bucket="fleet", Key=f"job/{key}", Body=body)
        for n in args.nodes:
            for mode in (("off", "on") if hosts else (None,)):
                row = run_fleet(n, mode, hosts, s3, args.rate, args.files)
                rows.append(row)
                print(row, flush=True)
    print("\nnodes  peers  success  makespan  p50   p95   ideal  retries  slowdowns  object GETs"
          "  per copy")
    for r in rows:
        print(f"{r['nodes']:5d}  {r['peers']:>5s}  {r['success']:>7s}  {r['makespan_s']:7.1f}s "
              f"{r['p50_s']:5.1f} {r['p95_s']:5.1f} {r['ideal_s']:5.1f}s {r['retries']:8d} "
              f"{r['slowdowns']:9d}  {r['object_gets']:11d}  {r['object_gets'] / args.files:8.2f}")
    return 0 if all(r["success"].split("/")[0] == r["success"].split("/")[1] for r in rows) else 1


def run_fleet(n: int, mode: str | None, hosts: Hosts | None, s3: S3Server, rate: float,
              files: int) -> dict[str, Any]:
    """One job of ``n`` nodes started at once; ``mode`` is BOOTSTRAP_PEER_FETCH on
    namespace ``hosts`` (None: plain processes on this host, no relay)."""
    with Throttle(s3.endpoint, rate=rate, burst=rate / 5,
                  ip=hosts.bridge_ip if hosts else "127.0.0.1") as gate:
        homes = [Path(tempfile.mkdtemp(prefix=f"fleet{n}-")) for _ in range(n)]
        env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": gate.endpoint,
               "DLS_APP_URL": "s3://fleet/job/", "PATH": f"{BIN}:{os.environ['PATH']}",
               "BOOTSTRAP_DOWNLOAD_WORKERS": "8"}
        if hosts is not None and mode is not None:
            names = {f"BATCH_CUSTOM{j}_HOSTS": f"{hosts.name(j)}:29500" for j in range(n)}
            env.update(names, DLS_TASK_NUMBER=str(n), BOOTSTRAP_PEER_FETCH=mode,
                       BOOTSTRAP_BARRIER="off", BOOTSTRAP_NETWORK="off")
        started = time.monotonic()
        procs = []
        for i, home in enumerate(homes):
            argv = ["bash", str(REPO / "scripts/run_train.sh"), "true"]
            node_env = {**env, "BOOTSTRAP_HOME": str(home)}
            if hosts is not None:
                procs.append(hosts.spawn(i, argv, {**node_env, "DLS_TASK_INDEX": str(i)}))
            else:
                procs.append(subprocess.Popen(argv, env=node_env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True))
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
        failures = [err.strip().splitlines()[-1] for c, _, err in results if c != 0]
        if failures:
            print("  failures:", failures[:3])
        return {"nodes": n, "peers": mode or "-", "success": f"{ok}/{n}",
                "makespan_s": round(makespan, 1), "p50_s": round(statistics.median(times), 1),
                "p95_s": round(times[int(0.95 * (n - 1))], 1), "retries": retries,
                "slowdowns": gate.throttled, "forwarded": gate.forwarded,
                "object_gets": gate.object_gets, "ideal_s": round(n * files / rate, 1)}


if __name__ == "__main__":
    sys.exit(main())
