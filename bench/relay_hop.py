"""One hop of the relay, measured: a parent holding a whole tree serves k children.

    python bench/relay_hop.py [--files 2000] [--size-kib 20] [--big-mib 256] [--kids 1 2 4]

The real server (``RelayServer``, in this process) and k real clients (``pull``:
verification, temporary file, rename, manifest; a process each) over loopback, the
parent with every file already held: what one hop costs when the network is not the
limit (loopback is faster than any NIC, so these are the code's own ceilings: a cost
per file on small files, bytes per second on a large one), and how the parent's cost
grows with its fan-out k, which decides k. Creating a file costs ~0.6 ms on this
machine's disk (ext4 on a VM disk): ``--dir /dev/shm`` measures the code alone. The
last line is the ``bench/peer_sim.py`` invocation these costs calibrate, for the
fan-out at 512 and 2,048 nodes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootstrap.cluster import auth  # noqa: E402
from bootstrap.log import Log, Redactor  # noqa: E402
from bootstrap.relay import server as relay_server  # noqa: E402
from bootstrap.transfer.listing import RemoteObject  # noqa: E402


def cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


CHILD = """
import hashlib, io, json, sys, time
from pathlib import Path
from bootstrap.log import Log, Redactor
from bootstrap.cluster import auth
from bootstrap.relay import client, protocol
from bootstrap.relay import server as relay_server
from bootstrap.transfer.listing import RemoteObject
from bootstrap.transfer.manifest import Manifest
from bootstrap.transfer.verify import Doubts
port, rank, root, listing = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
objects = [RemoteObject(*o) for o in json.loads(Path(listing).read_text())]
root.mkdir(parents=True)
log = Log(Redactor({}), stream=io.StringIO())
manifest = Manifest(root.parent / f"manifest-{rank}.jsonl", "s3://bench/")
manifest.open_for_append()
key = auth.derive("bench-secret", "bench-job", "relay-code")
peers = protocol.Peers(rank, ("127.0.0.1",) * (rank + 1), (port,) * (rank + 1), key, "relay-code",
                    60.0)
failed = client.pull(peers, objects, Doubts(None, log, "fetch"), root, manifest, log,
                     server=0)
print(json.dumps({"failed": len(failed)}))
"""


def one_hop(objects: dict[str, bytes], tmp: Path, port: int,
            kids: int) -> tuple[float, float]:
    """Seconds until ``kids`` children (processes of their own) hold ``objects``, pulled
    at once from a parent (this process) that holds them all; and the parent's CPU
    seconds."""
    import json
    import subprocess

    parent = tmp / "parent"
    listed = []
    for rel, data in objects.items():
        (parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (parent / rel).write_bytes(data)
        listed.append(RemoteObject(rel, rel, len(data), hashlib.md5(data).hexdigest()))
    listing = tmp / "listing.json"
    listing.write_text(json.dumps([[o.key, o.rel, o.size, o.etag] for o in listed]))
    log = Log(Redactor({}), stream=io.StringIO())
    key = auth.derive("bench-secret", "bench-job", "relay-code")
    # One parent serving ``kids`` children, whatever the tree's fan-out.
    server = relay_server.RelayServer(port, key, "relay-code", 0, range(1, kids + 1), 60.0, log)
    server.start()
    held = relay_server.Held()
    for obj in listed:
        held.add(obj.rel)
    held.close()
    server.offer(parent, {o.rel: o.size for o in listed}, held)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    started, used = time.monotonic(), cpu()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(rank),
                               str(tmp / f"child{rank}"), str(listing)], env=env,
                              stdout=subprocess.PIPE, text=True)
             for rank in range(1, kids + 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    seconds, cpu_s = time.monotonic() - started, cpu() - used
    server.finish(5)
    if any(json.loads(out or '{"failed": -1}')["failed"] for out in outs):
        raise SystemExit(f"relay_hop: a child did not get every file: {outs}")
    return seconds, cpu_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size-kib", type=float, default=20)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--kids", type=int, nargs="+", default=[1, 2, 4],
                    help="children pulling from the parent at once")
    ap.add_argument("--port", type=int, default=29711)
    ap.add_argument("--dir", help="where the files land (default: the temporary folder; "
                    "/dev/shm leaves the disk's file-creation cost out)")
    args = ap.parse_args()
    rng = random.Random(5)
    size = int(args.size_kib * 1024)
    small = {f"src/m{i:05d}.py": rng.randbytes(size) for i in range(args.files)}
    big = {"weights.bin": os.urandom(args.big_mib << 20)}
    print(f"one parent holding the tree, k children pulling at once (processes; the "
          f"parent's CPU is its own); files land in {args.dir or tempfile.gettempdir()}")
    costs, serve_us = {}, {}
    for kids in args.kids:
        with tempfile.TemporaryDirectory(prefix="relay-hop-", dir=args.dir) as tmp:
            s_small, c_small = one_hop(small, Path(tmp, "small"), args.port, kids)
            s_big, c_big = one_hop(big, Path(tmp, "big"), args.port + 1, kids)
        files_per_s = kids * args.files / s_small
        mbps = kids * len(big["weights.bin"]) / s_big / 1e6
        costs[kids] = (s_small, s_big)
        serve_us[kids] = c_small / (kids * args.files) * 1e6
        print(f"k={kids}: small {kids} x {args.files} x {args.size_kib:g} KiB in {s_small:.2f} s "
              f"({files_per_s:.0f} files/s served, parent CPU "
              f"{c_small / (kids * args.files) * 1e6:.0f} us per file served); large "
              f"{kids} x {args.big_mib} MiB in {s_big:.2f} s ({mbps:.0f} MB/s served, parent "
              f"{c_big / s_big:.2f} cores)")
    one = min(args.kids)
    for kids in args.kids:
        if kids != one:
            print(f"k={kids} vs k={one}: small {costs[kids][0] / costs[one][0]:.2f}x the time "
                  f"for {kids / one:g}x the children, large {costs[kids][1] / costs[one][1]:.2f}x")
    # The model, from one child alone (no sharing of this machine's cores): the parent's
    # CPU per file served, and the child's cost per file and bytes per second.
    recv_mbps = len(big["weights.bin"]) / costs[one][1] / 1e6
    recv_us = max(costs[one][0] / args.files * 1e6 - size / recv_mbps, 0)
    print(f"model: python bench/peer_sim.py --peer-file-us {serve_us[one]:.0f} "
          f"--recv-file-us {recv_us:.0f} --recv-mbps {recv_mbps:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
