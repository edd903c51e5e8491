"""A tiny training script for the local demo: it proves the code was downloaded, the
environment contract is in place and arguments arrive intact. With several nodes it
averages a value across them with torch.distributed (gloo), as a real job would."""

import argparse
import os
import socket

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
print(f"host {socket.gethostname()}: training in {os.getcwd()}")
print(f"node {os.environ.get('NODE_RANK', '0')} of {os.environ.get('NNODES', '1')}, "
      f"master {os.environ.get('MASTER_ADDR', '-')}:{os.environ.get('MASTER_PORT', '-')}")

reduce = None
if world > 1:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")

    def reduce(value: float) -> float:
        t = torch.tensor([value])
        dist.all_reduce(t)
        return t.item() / world

w = 0.0
for epoch in range(args.epochs):
    w += args.lr * (1.0 - w) * (1 + rank)
    if reduce is not None:
        w = reduce(w)
    print(f"epoch {epoch}: w={w:.4f}")
if world > 1:
    dist.barrier()  # leave together: rank 0 hosts the rendezvous store
    dist.destroy_process_group()
print("done")
