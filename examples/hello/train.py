"""A tiny training script for the local demo: it proves the code was downloaded, the
environment contract is in place and arguments arrive intact."""

import argparse
import os
import socket

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

print(f"host {socket.gethostname()}: training in {os.getcwd()}")
print(f"DLS_USER_JOB_DIR={os.environ.get('DLS_USER_JOB_DIR')}")
print(f"node {os.environ.get('NODE_RANK', '0')} of {os.environ.get('NNODES', '1')}, "
      f"master {os.environ.get('MASTER_ADDR', '-')}:{os.environ.get('MASTER_PORT', '-')}")
w = 0.0
for epoch in range(args.epochs):
    w += args.lr * (1.0 - w)
    print(f"epoch {epoch}: w={w:.4f}")
print("done")
