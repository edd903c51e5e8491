"""Peer-assisted fetch on real hosts: the same job with the relay off and on, side by side.

Four network-namespace hosts (root and iproute2 needed), a real S3 server behind a
proxy that adds latency to every request (a distant store: loopback hides it), a code
directory of many small files and one multipart weights file. Each mode runs the job
through run_train.sh on every node at once and reports, per mode: the slowest node's
fetch stage, the store's object GETs and bytes (at the proxy), the files and bytes each
node took from a peer, and the bootstrap's CPU per node; "solo" is node 0 alone with
the store to itself, the time the tree should approach. The last lines are ratios.

    python bench/relay_lab.py [--nodes 4] [--files 2000] [--latency 0.03] [--reps 2]

The simulation (``bench/peer_sim.py``) extrapolates to 512 nodes; this measures the
real code on real sockets at the size one machine allows.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.s3server import S3Server  # noqa: E402
from tests.conftest import log_records, stage  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.lab import Lab, old_contract, port, run_job  # noqa: E402
from tests.support.netns import Hosts, namespaces_available  # noqa: E402


def build_tree(s3: S3Server, files: int) -> tuple[str, int]:
    client = s3.client()
    client.create_bucket(Bucket="relay-bench")
    rng = random.Random(7)
    total = 0
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> int:
        body = random.Random(i).randbytes(rng.randint(2000, 20000) if i % 50 else 200_000)
        client.put_object(Bucket="relay-bench", Key=f"code/src/m{i:05d}.py", Body=body)
        return len(body)

    with ThreadPoolExecutor(16) as pool:
        total = sum(pool.map(put, range(files)))
    # A multipart object (two 8 MiB parts and a tail): checked against its ETag.
    parts = [random.Random(100 + n).randbytes(8 << 20) for n in range(2)] + [b"t" * 4096]
    up = client.create_multipart_upload(Bucket="relay-bench", Key="code/weights.bin")
    done = [{"PartNumber": n, "ETag": client.upload_part(
        Bucket="relay-bench", Key="code/weights.bin", PartNumber=n, UploadId=up["UploadId"],
        Body=body)["ETag"]} for n, body in enumerate(parts, 1)]
    client.complete_multipart_upload(Bucket="relay-bench", Key="code/weights.bin",
                                     UploadId=up["UploadId"], MultipartUpload={"Parts": done})
    return "s3://relay-bench/code/", total + sum(map(len, parts))


def run_mode(lab: Lab, url: str, nodes: int, mode: str, latency: float,
             tmp: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with FaultProxy(lab.s3.endpoint, ip=lab.hosts.bridge_ip, rate=1.0, kinds=["latency"],
                    latency=latency) as proxy:
        results = run_job(lab, tmp, nodes, ["true"], old_contract(lab, nodes, port()),
                          extra={"DLS_APP_URL": url, "AWS_ENDPOINT_URL": proxy.endpoint,
                                 "BOOTSTRAP_PEER_FETCH": mode, "BOOTSTRAP_LOG_FORMAT": "json",
                                 "BOOTSTRAP_BARRIER": "off", "BOOTSTRAP_NETWORK": "off"},
                          timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for r in results:
        if r.code != 0:
            raise SystemExit(f"node {r.rank} failed ({mode}):\n{r.err[-3000:]}")
    fetches = [stage(r.err, "fetch") for r in results]
    relays = [next((x for x in log_records(r.err) if "peer_bytes" in x), {}) for r in results]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"mode": mode, "slowest_s": max(f["seconds"] for f in fetches),
            "node_s": [round(f["seconds"], 2) for f in fetches],
            "store_gets": sum(proxy.object_gets.values()),
            "peer_files": [x.get("peer_files", 0) for x in relays],
            "peer_mb": [round(x.get("peer_bytes", 0) / 1e6, 1) for x in relays],
            "cpu_s_per_node": cpu / nodes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.03, help="seconds added per request")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    reason = namespaces_available()
    if reason is not None:
        raise SystemExit(f"relay_lab: needs network namespaces: {reason}")
    with Hosts(args.nodes) as hosts, S3Server(ip=hosts.bridge_ip) as s3, \
            tempfile.TemporaryDirectory(prefix="relay-lab-") as tmp:
        lab = Lab(hosts, s3, "")
        url, total = build_tree(s3, args.files)
        print(f"{args.nodes} nodes, {args.files + 1} objects ({total / 1e6:.1f} MB), "
              f"+{args.latency * 1000:.0f} ms per store request")
        runs: dict[str, list[dict[str, Any]]] = {"solo": [], "off": [], "on": []}
        for rep in range(args.reps):
            for mode in ("solo", "off", "on"):
                # solo: node 0 alone, the store all its own (what the tree should approach)
                got = run_mode(lab, url, 1 if mode == "solo" else args.nodes,
                               "off" if mode == "solo" else mode, args.latency,
                               Path(tmp, f"{mode}{rep}"))
                got["mode"] = mode
                runs[mode].append(got)
                print(f"  {mode:4}  slowest node {got['slowest_s']:6.2f} s  nodes {got['node_s']}"
                      f"  store GETs {got['store_gets']:5d}  from peers {got['peer_files']} "
                      f"files / {got['peer_mb']} MB  CPU {got['cpu_s_per_node']:.2f} s/node")
    med = {m: {k: statistics.median(r[k] for r in rs)
               for k in ("slowest_s", "store_gets", "cpu_s_per_node")} for m, rs in runs.items()}
    objects = args.files + 1
    print(f"store GETs per node-copy: off {med['off']['store_gets'] / objects:.2f}, "
          f"on {med['on']['store_gets'] / objects:.2f} (one copy = 1.00, "
          f"{args.nodes} nodes = {args.nodes:.2f})")
    on, off, solo = med["on"], med["off"], med["solo"]
    print(f"slowest node, on / off: {on['slowest_s'] / off['slowest_s']:.2f}x; "
          f"on / one node alone: {on['slowest_s'] / solo['slowest_s']:.2f}x; "
          f"CPU per node, on / off: {on['cpu_s_per_node'] / off['cpu_s_per_node']:.2f}x; "
          f"CPU per object: off {off['cpu_s_per_node'] / objects * 1e3:.2f} ms, "
          f"on {on['cpu_s_per_node'] / objects * 1e3:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
