"""The log cap's cost: a command printing many lines through the supervisor, its log
file capped (``BOOTSTRAP_LOG_MAX_MB``) and not, against the same command alone.

    .venv/bin/python bench/logcap.py [--mb 30] [--cap 5] [--reps 5]

Prints, per arm, the median wall time of the whole job (bootstrap start-up included),
the throughput of the stream the command wrote, the cost per line over the uncapped
log, and the ratios. The stream is read by this process and counted: every arm must
carry every line, or the run fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = "step {:09d} loss 0.1234 lr 0.0001 " + "x" * 80 + "\n"


def arm(argv: list[str], env: dict[str, str], lines: int) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stream = proc.stdout
    assert stream is not None
    count = 0
    while chunk := stream.read(1 << 20):
        count += chunk.count(b"\n")
    assert proc.stderr is not None
    said = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or count != lines:
        raise SystemExit(f"{argv[:3]}: exit {proc.returncode}, {count} of {lines} lines\n{said}")
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=30.0, help="MiB the command prints")
    ap.add_argument("--cap", type=float, default=5.0,
                    help="BOOTSTRAP_LOG_MAX_MB of the capped arm")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    lines = int(args.mb * 2**20 / len(LINE.format(0)))
    script = (f"import sys\nw = sys.stdout.write\nfor i in range({lines}):\n"
              f"    w({LINE!r}.format(i))\n")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "task.log"
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        base = {**os.environ, "PATH": path, "BOOTSTRAP_HOME": tmp, "BOOTSTRAP_SUPERVISE": "1",
                "BOOTSTRAP_LOG_FILE": str(log), "BOOTSTRAP_CACHE_DIR": f"{tmp}/no-cache"}
        run_train = ["bash", str(REPO / "scripts" / "run_train.sh"), "python", "-c", script]
        arms = {"command alone": ([sys.executable, "-c", script], base),
                "supervised, log uncapped": (run_train, {**base, "BOOTSTRAP_LOG_MAX_MB": "0"}),
                f"supervised, log capped at {args.cap:g} MiB":
                    (run_train, {**base, "BOOTSTRAP_LOG_MAX_MB": str(args.cap)})}
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.reps):  # interleaved, so a slow moment hits every arm
            for name, (argv, env) in arms.items():
                log.unlink(missing_ok=True)
                times[name].append(arm(argv, env, lines))
        kept = log.stat().st_size
    print(f"{lines} lines, {args.mb:g} MiB, {args.reps} reps (median, spread); "
          f"capped file: {kept / 2**20:.2f} MiB")
    median = {name: statistics.median(t) for name, t in times.items()}
    uncapped = median["supervised, log uncapped"]
    for name, t in times.items():
        extra = (median[name] - uncapped) / lines * 1e6
        print(f"  {name:36s} {median[name]:6.2f} s (±{(max(t) - min(t)) / 2:.2f})  "
              f"{args.mb / median[name]:6.1f} MiB/s  x{median[name] / uncapped:.2f} of "
              f"uncapped  {extra:+.2f} µs/line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
