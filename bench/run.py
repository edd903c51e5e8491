"""The download benchmark: the bootstrap's engine side by side with s5cmd, rclone, the
AWS CLI and a plain boto3 thread pool, on one local SeaweedFS server, in one run.

    bash bench/run.sh            # full run (several minutes), results in bench/results/
    bash bench/run.sh --smoke    # tiny data sets, one repetition (what CI runs)

Every downloaded tree is verified byte for byte (MD5 of every file) before its time
counts. Prints a table of min/median seconds, each contender's ratio to s5cmd, and
the peak RSS and CPU time of every run; writes the same as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.s3server import S3Server  # noqa: E402

BIN = Path(sys.executable).parent
KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class DataSet:
    name: str
    make: Callable[[random.Random], dict[str, int]]  # relative path -> size
    only: tuple[str, ...] = ()  # contenders to run (all when empty)
    reps: int = 0  # repetitions (the run's default when 0)


def small(n: int) -> Callable[[random.Random], dict[str, int]]:
    return lambda rng: {f"d{i % 40:02d}/s{i % 7}/f{i:05d}.py": rng.randint(1 * KiB, 20 * KiB)
                        for i in range(n)}


def large(n: int, size: int) -> Callable[[random.Random], dict[str, int]]:
    return lambda rng: {f"shard-{i}.bin": size for i in range(n)}


def mixed(n: int) -> Callable[[random.Random], dict[str, int]]:
    def make(rng: random.Random) -> dict[str, int]:
        files = {}
        for i in range(n):
            r = rng.random()
            size = rng.randint(1 * KiB, 20 * KiB) if r < 0.9 else \
                rng.randint(20 * KiB, 1 * MiB) if r < 0.99 else rng.randint(1 * MiB, 32 * MiB)
            files[f"pkg{i % 25}/mod{i % 11}/file{i:05d}.dat"] = size
        return files
    return make


FULL = [DataSet("small2k", small(2000)), DataSet("large4x64", large(4, 64 * MiB)),
        DataSet("mixed3k", mixed(3000)), DataSet("small20k", small(20000)),
        # Peak memory while fetching one 1 GiB object (target: under 200 MiB RSS).
        DataSet("one1g", large(1, 1024 * MiB), only=("bootstrap", "s5cmd"), reps=1),
        # A job's start-to-exec with a tiny code directory: start-up plus one listing.
        DataSet("code10", small(10), only=("bootstrap", "s5cmd"), reps=9)]
SMOKE = [DataSet("small2k", small(60)), DataSet("large4x64", large(2, 2 * MiB))]


def materialize(ds: DataSet, root: Path) -> dict[str, str]:
    """Writes the data set once (cached by name and shape); returns path -> MD5."""
    spec = ds.make(random.Random(ds.name))
    folder = root / f"{ds.name}-{len(spec)}-{sum(spec.values())}"
    manifest = folder.with_suffix(".md5.json")
    if manifest.exists():
        return json.loads(manifest.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(ds.name + "-bytes")
    sums = {}
    for rel, size in spec.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        with open(path, "wb") as fh:
            for start in range(0, size, 16 * MiB):  # randbytes takes at most 256 MiB
                data = rng.randbytes(min(16 * MiB, size - start))
                fh.write(data)
                digest.update(data)
        sums[rel] = digest.hexdigest()
    manifest.write_text(json.dumps(sums))
    return sums


def tree_md5(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            h = hashlib.md5()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(MiB), b""):
                    h.update(chunk)
            out[path.relative_to(root).as_posix()] = h.hexdigest()
    return out


@dataclass
class Run:
    seconds: float
    cpu: float
    rss_mib: float


GNU_TIME = "/usr/bin/time"


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Run:
    """Wall time, CPU time and peak RSS of one run. The RSS comes from GNU time when it
    exists: a child forked from this (large) process would otherwise report this
    process's pages as its own peak until it execs."""
    stats = Path(tempfile.mkstemp(prefix="bench-time-")[1])
    wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(stats), *argv] \
        if os.path.exists(GNU_TIME) else argv
    started = time.perf_counter()
    proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: "
                               f"{proc.stderr.decode()[-2000:]}")
        if wrapped is argv:
            return Run(seconds, float("nan"), float("nan"))
        rss_kib, user, system = stats.read_text().split()[-3:]
        return Run(seconds, float(user) + float(system), int(rss_kib) / 1024)
    finally:
        stats.unlink()


Invocation = tuple[list[str], dict[str, str], Path]  # argv, environment, output folder


def contenders(s3: S3Server, bench_env: Path) -> dict[str, Callable[[str, Path], Invocation]]:
    base = {**os.environ, **s3.env()}

    def bootstrap(prefix: str, work: Path) -> Invocation:
        env = {**base, "DLS_APP_URL": f"s3://bench/{prefix}/", "BOOTSTRAP_HOME": str(work),
               "PATH": f"{BIN}:{os.environ['PATH']}"}
        return ["bash", str(REPO / "scripts/run_train.sh"), "true"], env, \
            work / "user-job-dir" / prefix

    def s5cmd(prefix: str, work: Path) -> Invocation:
        return [str(BIN / "s5cmd"), "--endpoint-url", s3.endpoint, "cp",
                f"s3://bench/{prefix}/*", f"{work}/out/"], base, work / "out"

    def rclone(prefix: str, work: Path) -> Invocation:
        env = {**base, "RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": s3.endpoint,
               "RCLONE_S3_ACCESS_KEY_ID": s3.access_key,
               "RCLONE_S3_SECRET_ACCESS_KEY": s3.secret_key, "RCLONE_S3_FORCE_PATH_STYLE": "true",
               "RCLONE_CONFIG": "/dev/null"}
        return [str(BIN / "rclone"), "copy", "--transfers", "32", "--checkers", "32",
                "--fast-list", f":s3:bench/{prefix}", str(work / "out")], env, work / "out"

    def aws(prefix: str, work: Path) -> Invocation:
        return [str(bench_env / "bin/aws"), "s3", "cp", "--recursive", "--only-show-errors",
                "--endpoint-url", s3.endpoint, f"s3://bench/{prefix}/", str(work / "out")], \
            base, work / "out"

    def boto3_pool(prefix: str, work: Path) -> Invocation:
        return [sys.executable, str(REPO / "bench/boto3_pool.py"), "bench", f"{prefix}/",
                str(work / "out")], base, work / "out"

    found = {"bootstrap": bootstrap, "s5cmd": s5cmd, "rclone": rclone, "aws-cli": aws,
             "boto3-pool": boto3_pool}
    if not (BIN / "rclone").exists():
        del found["rclone"]
    if not (bench_env / "bin/aws").exists():
        del found["aws-cli"]
    return found


def startup(reps: int) -> dict[str, float]:
    """Start-up as an image has it: a regular (not editable) install in a fresh venv,
    whose ``python -c pass`` is the baseline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLS_", "BATCH_", "VC_"))}
    with tempfile.TemporaryDirectory() as home:
        venv = Path(home) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # --no-deps: the no-download path imports none of the dependencies.
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                        str(REPO)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
        env["BOOTSTRAP_HOME"] = home
        bare, boot = [], []
        for _ in range(reps):
            bare.append(timed([str(venv / "bin/python"), "-c", "pass"], env).seconds)
            boot.append(timed(["bash", str(REPO / "scripts/run_train.sh"), "python", "-c",
                               "pass"], env).seconds)
    return {"python_ms": statistics.median(bare) * 1000,
            "run_train_ms": statistics.median(boot) * 1000,
            "overhead_ms": (statistics.median(boot) - statistics.median(bare)) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny data sets, one repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of data sets")
    ap.add_argument("--data", default=os.environ.get("BENCH_DATA", "/tmp/bootstrap-bench-data"))
    args = ap.parse_args()
    reps = 1 if args.smoke else args.reps
    sets = SMOKE if args.smoke else FULL
    if args.only:
        sets = [d for d in sets if d.name in args.only.split(",")]
    data_root = Path(args.data) / ("smoke" if args.smoke else "full")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with S3Server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="bench")
        names = contenders(s3, REPO / ".venv-bench")
        for ds in sets:
            sums = materialize(ds, data_root)
            src = next(p for p in data_root.iterdir() if p.is_dir() and
                       p.name.startswith(ds.name + "-"))
            subprocess.run([str(BIN / "s5cmd"), "--endpoint-url", s3.endpoint, "cp",
                            f"{src}/", f"s3://bench/{ds.name}/"], env={**os.environ, **s3.env()},
                           check=True, stdout=subprocess.DEVNULL)
            total = sum(os.path.getsize(src / r) for r in sums)
            print(f"\n{ds.name}: {len(sums)} files, {total / MiB:.1f} MiB", flush=True)
            results[ds.name] = {}
            for name, build in names.items():
                if ds.only and name not in ds.only:
                    continue
                runs = []
                for _ in range(ds.reps or reps):
                    work = Path(tempfile.mkdtemp(prefix="bench-"))
                    try:
                        argv, env, out = build(ds.name, work)
                        run = timed(argv, env)
                        got = tree_md5(out)
                        if got != sums:
                            bad = sorted(set(got.items()) ^ set(sums.items()))[:3]
                            raise RuntimeError(f"{name} on {ds.name}: tree differs: {bad}")
                        runs.append(run)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                secs = [r.seconds for r in runs]
                results[ds.name][name] = {
                    "min_s": min(secs), "median_s": statistics.median(secs),
                    "peak_rss_mib": max(r.rss_mib for r in runs),
                    "cpu_s": statistics.median([r.cpu for r in runs])}
                row = results[ds.name][name]
                print(f"  {name:11s} min {row['min_s']:7.3f} s  median {row['median_s']:7.3f} s"
                      f"  rss {row['peak_rss_mib']:6.0f} MiB  cpu {row['cpu_s']:6.2f} s",
                      flush=True)
        start = startup(5 if args.smoke else 30)
    print("\nratio to s5cmd (median time; < 1 is faster than s5cmd)")
    header = f"{'data set':12s}" + "".join(f"{n:>12s}" for n in names)
    print(header)
    for ds_name, row in results.items():
        ref = row["s5cmd"]["median_s"]
        print(f"{ds_name:12s}" + "".join(
            f"{row[n]['median_s'] / ref:12.2f}" if n in row else f"{'-':>12s}" for n in names))
    print(f"\nstart-up: python -c pass {start['python_ms']:.1f} ms, run_train.sh python -c pass "
          f"{start['run_train_ms']:.1f} ms, overhead {start['overhead_ms']:.1f} ms")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} "
           f"{os.cpu_count()} cores {platform.machine()}", "smoke": args.smoke, "reps": reps,
           "results": results, "startup": start}
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"{'smoke' if args.smoke else 'full'}-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
