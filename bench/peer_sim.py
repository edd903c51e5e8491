"""Peer-assisted fetch, simulated before it is built (issue #16): which fan-out?

    python bench/peer_sim.py            # the table for 4..512 nodes
    python bench/peer_sim.py --nodes 64 --files 2000 --size-kib 20

Every node of a job needs the same tree. Three ways to get it there:

* ``store``: today's design, every node GETs every file from the store, which admits
  ``--store-rps`` requests per second in all (OBS's per-bucket rate; throttled beyond).
* ``tree-k``: node 0 fetches from the store; node i pulls from its parent ``(i-1)//k``
  as files land there, one stream per connection (``--batch`` files per round trip);
  a parent's uplink is shared by its k children.
* ``any``: node 0 fetches from the store; every other node pulls each file from a
  random node that already holds it (a swarm: sources double as files spread), which
  needs every node to know who holds what (a tracker or gossip: more protocol).

The model is file-grained and event-driven: a transfer takes a round trip per batch
plus size over bandwidth, uplinks serve one transfer at a time, the store serves
requests at its rate with ``--store-rtt`` latency. It is a model, not a measurement:
its use is to compare the fan-outs under the same assumptions (printed with the
table), and to say how the time grows with the node count.
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    files: int
    size: int  # bytes per file
    store_rps: float  # requests per second the store admits, all nodes together
    store_rtt: float  # seconds per request at the store
    store_bw: float  # bytes/s one node reads from the store
    store_total_bw: float  # bytes/s the store serves to all nodes together
    peer_rtt: float  # seconds per round trip between nodes
    peer_bw: float  # bytes/s of one node's uplink
    batch: int  # files per round trip on a peer stream
    streams: int  # requests one node keeps in flight to the store
    peer_file: float = 0.0  # seconds of a parent's uplink per file beyond its bytes
    recv_file: float = 0.0  # seconds a child spends per file received beyond its bytes
    recv_bw: float = float("inf")  # bytes/s one child checks and writes (MD5, disk)


def store_only(m: Model, nodes: int) -> tuple[float, int]:
    """Every node fetches everything from the store; the store's rate is shared."""
    requests = nodes * m.files
    by_rate = requests / m.store_rps
    by_bytes = requests * m.size / m.store_total_bw
    per_node = m.files * (m.store_rtt / m.streams + m.size / m.store_bw)
    return max(by_rate, by_bytes, per_node) + m.store_rtt, requests


def _node0_arrivals(m: Model) -> list[float]:
    """When each file lands on node 0, fetched from the store alone."""
    gap = max(1 / m.store_rps, m.store_rtt / m.streams + m.size / m.store_bw)
    return [m.store_rtt + (j + 1) * gap for j in range(m.files)]


def tree(m: Model, nodes: int, k: int) -> tuple[float, int]:
    """A k-ary tree by rank; each parent forwards files in order as they arrive."""
    arrival: dict[int, list[float]] = {0: _node0_arrivals(m)}
    per_file = m.size / m.peer_bw + m.peer_file
    for parent in range(nodes):
        children = [c for c in range(parent * k + 1, parent * k + k + 1) if c < nodes]
        if not children:
            continue
        uplink = 0.0
        got: dict[int, list[float]] = {c: [] for c in children}
        receive = m.recv_file + m.size / m.recv_bw  # each child takes its files in turn
        for j, ready in enumerate(arrival[parent]):
            for c in children:  # the uplink sends file j to each child in turn
                start = max(ready, uplink)
                uplink = start + per_file
                rtt = m.peer_rtt if j % m.batch == 0 else 0.0  # one round trip per batch
                free = got[c][-1] if got[c] else 0.0
                got[c].append(max(uplink + rtt, free + receive))
        arrival.update(got)
    return max(max(a) for a in arrival.values()), m.files


def swarm(m: Model, nodes: int, seed: int = 0) -> tuple[float, int]:
    """Each node pulls each file from a random holder, as soon as there is one."""
    rng = random.Random(seed)
    have: list[list[int]] = [[] for _ in range(m.files)]  # holders of file j
    landed = _node0_arrivals(m)
    for j in range(m.files):
        have[j].append(0)
    uplink = [0.0] * nodes
    done = [0.0] * nodes
    # Node i wants files in its own random order; serve requests by earliest possibility.
    events: list[tuple[float, int, int]] = []
    orders = [rng.sample(range(m.files), m.files) for _ in range(nodes)]
    cursor = [0] * nodes
    for i in range(1, nodes):
        heapq.heappush(events, (0.0, i, orders[i][0]))
    held_since: dict[tuple[int, int], float] = {(0, j): landed[j] for j in range(m.files)}
    per_file = m.size / m.peer_bw + m.peer_file
    while events:
        now, i, j = heapq.heappop(events)
        known = have[j] if len(have[j]) <= 8 else rng.sample(have[j], 8)  # a few holders
        sources = [(max(held_since[(s, j)], uplink[s]), s) for s in known]
        ready, src = min(sources)
        start = max(now, ready)
        uplink[src] = start + per_file
        rtt = m.peer_rtt / m.batch
        finish = start + per_file + rtt
        have[j].append(i)
        held_since[(i, j)] = finish
        done[i] = max(done[i], finish)
        cursor[i] += 1
        if cursor[i] < m.files:
            heapq.heappush(events, (finish, i, orders[i][cursor[i]]))
    return max(max(done), landed[-1]), m.files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="4,16,64,512")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size-kib", type=float, default=20)
    ap.add_argument("--store-rps", type=float, default=5000)
    ap.add_argument("--store-rtt", type=float, default=0.02)
    ap.add_argument("--store-mbps", type=float, default=400, help="MB/s one node reads")
    ap.add_argument("--store-total-gbps", type=float, default=100,
                    help="what the store serves to all nodes together, Gbit/s")
    ap.add_argument("--peer-rtt", type=float, default=0.0002)
    ap.add_argument("--peer-gbps", type=float, default=25, help="uplink, Gbit/s")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--peer-file-us", type=float, default=0.0,
                    help="a parent's fixed cost per file served (bench/relay_hop.py measures it)")
    ap.add_argument("--recv-file-us", type=float, default=0.0,
                    help="a child's fixed cost per file received (bench/relay_hop.py)")
    ap.add_argument("--recv-mbps", type=float, default=float("inf"),
                    help="MB/s one child checks and writes (bench/relay_hop.py)")
    ap.add_argument("--no-swarm", action="store_true", help="the tree and the store only")
    args = ap.parse_args()
    m = Model(args.files, int(args.size_kib * 1024), args.store_rps, args.store_rtt,
              args.store_mbps * 1e6, args.store_total_gbps * 1e9 / 8, args.peer_rtt,
              args.peer_gbps * 1e9 / 8, args.batch, args.streams, args.peer_file_us / 1e6,
              args.recv_file_us / 1e6, args.recv_mbps * 1e6)
    print(f"{m.files} files of {args.size_kib:g} KiB; store {m.store_rps:g} req/s, "
          f"{m.store_rtt * 1000:g} ms, {args.store_mbps:g} MB/s per node, "
          f"{args.store_total_gbps:g} Gbit/s in all; peers "
          f"{m.peer_rtt * 1e6:g} us, {args.peer_gbps:g} Gbit/s uplink, {m.batch} files "
          f"per round trip, {args.peer_file_us:g} us per file served, "
          f"{args.recv_file_us:g} us + {args.recv_mbps:g} MB/s per child")
    print(f"{'nodes':>6} {'store s':>9} {'GETs':>8} {'tree-2 s':>9} {'tree-4 s':>9} "
          f"{'tree-8 s':>9} {'any s':>8} {'peer GETs':>10}")
    for n in (int(x) for x in args.nodes.split(",")):
        s, gets = store_only(m, n)
        t2, peer_gets = tree(m, n, 2)
        t4, _ = tree(m, n, 4)
        t8, _ = tree(m, n, 8)
        a, _ = swarm(m, n) if n * m.files <= 300_000 and not args.no_swarm \
            else (float("nan"), 0)
        print(f"{n:>6} {s:>9.2f} {gets:>8} {t2:>9.2f} {t4:>9.2f} {t8:>9.2f} {a:>8.2f} "
              f"{peer_gets:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
