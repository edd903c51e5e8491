"""Everything the bootstrap reads from its environment, parsed once into frozen parts.

The platform fixes the run command, so flags cannot reach the bootstrap: its knobs
are ``BOOTSTRAP_*`` variables, and the platform's own (``DLS_*``, ``MA_*``, ``VC_*``,
``BATCH_*``, the S3 endpoint and keys) describe the job. All of them are listed in
README.md's table, and this package is the only code that reads them: the stages get
the part they need (:class:`Transfer`, :class:`ClusterSettings`, :class:`Preflight`,
:class:`RunSettings`, :class:`Outputs`), never the environment. The one exception is
the command's own environment, which is passed through to it, not interpreted.

Every URL is parsed here, once, into the :class:`~.location.Location` the stages use
(the code, the data, the outputs' and the log's destinations), so a typo in any of them
stops the job before anything runs, not when its stage comes (the log's destination
used to be read first after training).

Parsing is pure apart from two small reads of the platform's description (the
Volcano host file, the current directory as the last fallback for the home): it
takes a mapping and returns a value or raises :class:`ConfigError` with a message
that names the variable, what it holds and what it should hold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import parse
from .location import Location, remote
from .location import parse as parse_url
from .platform import Cluster, discover, platform_job_id
from .storage import Credentials, Endpoint, env_credentials, resolve_endpoint

if TYPE_CHECKING:
    from typing import Literal

    Backend = Literal["auto", "native", "boto3"]
    Barrier = Literal["auto", "on", "off"]
    LogFormat = Literal["text", "json"]
    Network = Literal["auto", "off"]
    PipInstall = Literal["auto", "on", "off"]
    Shard = Literal["none", "node"]
    HangAction = Literal["stop", "dump"]
    PeerFetch = Literal["auto", "on", "off"]
    LaunchMode = Literal["each", "mpi", "ray"]
    OutputLayout = Literal["node", "shared"]
    Restore = Literal["auto", "always", "off"]


MiB = 1024 * 1024
GB = 1000**3
PEER_FETCH_NODES = 8  # BOOTSTRAP_PEER_FETCH=auto: from this many nodes on
CACHE_DIR = "/cache"  # the node-local NVMe SSD the platform mounts on GPU nodes
# Every BOOTSTRAP_* variable the bootstrap (or scripts/run_train.sh) reads or exports;
# with the repository's own dev scripts' (DEV_VARIABLES), the names a job may set: one
# that sets any other is told so (a typo, or a knob of another release), not left
# wondering why nothing changed. tests/unit/test_settings.py keeps it equal to what the
# code names.
VARIABLES = frozenset({
    "BOOTSTRAP_ACTIVE", "BOOTSTRAP_AGENT_PORT", "BOOTSTRAP_ATTEMPT", "BOOTSTRAP_BARRIER",
    "BOOTSTRAP_BUSY_MEMORY_FRACTION", "BOOTSTRAP_CACHE_DIR", "BOOTSTRAP_CLUSTER_FILE",
    "BOOTSTRAP_CODE_DIR", "BOOTSTRAP_DATA_DIR", "BOOTSTRAP_DATA_MAX_GB", "BOOTSTRAP_DATA_PATH",
    "BOOTSTRAP_DATA_SHARD", "BOOTSTRAP_DATA_SHARE_FILE", "BOOTSTRAP_DATA_TIMEOUT",
    "BOOTSTRAP_DEBUG", "BOOTSTRAP_DETACHED", "BOOTSTRAP_DOWNLOAD_WORKERS",
    "BOOTSTRAP_EVIDENCE", "BOOTSTRAP_EXPECT_GPUS",
    "BOOTSTRAP_FAILURE_FILE", "BOOTSTRAP_FATAL_CHECKS", "BOOTSTRAP_GRACE_SECONDS",
    "BOOTSTRAP_HANG_ACTION", "BOOTSTRAP_HANG_SECONDS", "BOOTSTRAP_HEARTBEAT_FILE",
    "BOOTSTRAP_HOME", "BOOTSTRAP_HOSTFILE", "BOOTSTRAP_IB_ADDR", "BOOTSTRAP_IB_MAP_FILE",
    "BOOTSTRAP_IMAGE_META", "BOOTSTRAP_JOB_SECRET", "BOOTSTRAP_JOB_SECRET_FILE",
    "BOOTSTRAP_LAUNCH", "BOOTSTRAP_LAUNCHER_HOME", "BOOTSTRAP_LOG_FILE", "BOOTSTRAP_LOG_FORMAT",
    "BOOTSTRAP_LOG_MAX_MB", "BOOTSTRAP_LOG_UPLOAD_URL", "BOOTSTRAP_MASTER_ADDR_IB",
    "BOOTSTRAP_MASTER_HOST", "BOOTSTRAP_MASTER_IB_ADDR", "BOOTSTRAP_MASTER_PORT",
    "BOOTSTRAP_MAX_FILES",
    "BOOTSTRAP_MIN_CACHE_GB", "BOOTSTRAP_MIN_DISK_GB", "BOOTSTRAP_MIN_MEMORY_GB",
    "BOOTSTRAP_MIN_NOFILE", "BOOTSTRAP_MIN_SHM_MB", "BOOTSTRAP_MPI_HOSTFILE",
    "BOOTSTRAP_MULTIPART_THRESHOLD", "BOOTSTRAP_NETWORK", "BOOTSTRAP_NUM_GPUS",
    "BOOTSTRAP_NVML_MODULE", "BOOTSTRAP_OUTPUT_DIR", "BOOTSTRAP_OUTPUT_LAYOUT",
    "BOOTSTRAP_PEER_FETCH", "BOOTSTRAP_PEER_TIMEOUT", "BOOTSTRAP_PIP_INSTALL",
    "BOOTSTRAP_PREFLIGHT_TIMEOUT", "BOOTSTRAP_PYTHON", "BOOTSTRAP_RANGE_SIZE",
    "BOOTSTRAP_RAY_PORT", "BOOTSTRAP_RAY_WORKER_PORTS",
    "BOOTSTRAP_RELAY_PORT", "BOOTSTRAP_REQUIRE_GPU", "BOOTSTRAP_RESTORE",
    "BOOTSTRAP_RETRY_ATTEMPTS", "BOOTSTRAP_RETRY_DEADLINE", "BOOTSTRAP_RUN_TRAIN",
    "BOOTSTRAP_S3_ADDRESSING", "BOOTSTRAP_S3_BACKEND", "BOOTSTRAP_S3_CONNECT_TIMEOUT",
    "BOOTSTRAP_S3_READ_TIMEOUT", "BOOTSTRAP_STACKS_DIR", "BOOTSTRAP_SUPERVISE",
    "BOOTSTRAP_SYNC_INTERVAL", "BOOTSTRAP_SYNC_SETTLE_SECONDS", "BOOTSTRAP_SYSFS_ROOT",
    "BOOTSTRAP_TRANSFER_MEMORY_MB", "BOOTSTRAP_VOLCANO_DIR",
})
DEV_VARIABLES = frozenset({"BOOTSTRAP_DEMO_NODES", "BOOTSTRAP_DEV_PYTHON"})
ACTIVE_MARKER = "BOOTSTRAP_ACTIVE"  # set for the command: a nested run_train.sh execs at once
PREFLIGHT_CHECKS_FATAL = frozenset({"gpu.nvml", "gpu.required", "gpu.count", "gpu.ecc",
                                    "gpu.remap", "gpu.busy", "gpu.cuda"})
PREFLIGHT_CHECKS = PREFLIGHT_CHECKS_FATAL | {
    "gpu.pending", "gpu.pcie", "gpu.throttle", "node.disk", "node.cache", "node.shm",
    "node.memory", "node.nofile", "node.memlock"}


@dataclass(frozen=True, slots=True)
class Transfer:
    """How objects move between the store and this node (downloads and uploads)."""

    workers: int  # BOOTSTRAP_DOWNLOAD_WORKERS: requests in flight at most (threads for boto3)
    memory: int  # bytes of object data held in memory at once, all transfers together
    backend: Backend
    range_size: int  # bytes per ranged GET of a large object
    multipart_threshold: int  # objects at least this large are fetched as ranges
    retry_attempts: int  # per request, including the first
    retry_deadline: float  # seconds a single request may keep retrying
    connect_timeout: float
    read_timeout: float
    max_files: int  # refuse listings larger than this (hostile or mistaken prefixes)
    endpoint: Endpoint
    credentials: Credentials | None  # keys from the environment; None: botocore's chain


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Who the nodes are and how they meet before the command starts."""

    layout: Cluster  # the nodes, from the platform's variables
    peer_timeout: float  # seconds to wait for every peer (DNS and barrier)
    barrier: Barrier  # "auto": when an IB device holds an address
    master_addr_ib: bool  # MASTER_ADDR = node 0's IPoIB address
    network: Network  # "auto": choose the engines' interface, prove the master reachable
    ipoib_device: str  # DLS_IPOIB_DEVICE
    peer_fetch: PeerFetch  # "auto": on for jobs of PEER_FETCH_NODES nodes or more
    relay_port: int  # BOOTSTRAP_RELAY_PORT: where a node serves the tree to its children
    sysfs_root: Path  # where /sys is read for HCAs (tests point it at a prepared tree)


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the node checks look at and which of their findings stop the job."""

    fatal: frozenset[str]
    require_gpu: bool
    expect_gpus: int | None
    min_disk: int  # bytes
    min_cache: int
    min_shm: int
    min_memory: int
    min_nofile: int
    busy_fraction: float
    timeout: float  # BOOTSTRAP_PREFLIGHT_TIMEOUT: a check that does not return fails
    nvml_module: str  # the NVML bindings' module (tests load a fake)
    cuda_visible: str | None  # CUDA_VISIBLE_DEVICES as given
    nvidia_visible: str | None  # NVIDIA_VISIBLE_DEVICES as given
    cuda_image: str | None  # CUDA_VERSION baked into the image
    cache_dir: Path
    run_train: Path  # the image's run_train.sh (`check --image`)
    image_python: str | None  # BOOTSTRAP_PYTHON
    image_meta: Path  # what the image build recorded about its base


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How the command runs: supervised or exec'd, its log, its end."""

    nested: bool  # BOOTSTRAP_ACTIVE=1: a bootstrap already prepared this job
    supervise: bool | None  # None: decide (PID 1, or work left after the command)
    grace_seconds: float
    detached: str  # BOOTSTRAP_DETACHED: "wait" for what the command leaves in its own sessions
    log_file: Path  # the command's output, tee'd while supervising
    log_max: int  # BOOTSTRAP_LOG_MAX_MB in bytes: the log file's cap (0: none)
    failure_file: Path
    pip_install: PipInstall  # "on": requirements.txt too, not only pip-requirements.txt
    cache_dir: Path  # the command's TMPDIR when it exists and TMPDIR is unset
    hang_seconds: float  # BOOTSTRAP_HANG_SECONDS: no progress this long is a hang; 0: off
    hang_action: HangAction  # "stop": stacks, then SIGTERM/grace/SIGKILL, exit 124
    heartbeat_file: Path  # touched by the command: progress (exported to it)


@dataclass(frozen=True, slots=True)
class Outputs:
    """What leaves the node and what a restarted job gets back: the output folder, the
    command's log, each attempt's evidence (see :mod:`bootstrap.restart`)."""

    output_dir: Path | None  # synced to `destination`
    destination: Location | None  # DLS_TRAIN_URL, set (and remote) when output_dir is
    sync_interval: float  # 0: only at the end
    sync_settle: float  # files younger than this wait for the next periodic round
    log_upload: Location | None  # BOOTSTRAP_LOG_UPLOAD_URL (or the original's variable)
    train_url: Location | None = None  # DLS_TRAIN_URL when it is remote: attempts, evidence
    job_id: str | None = None  # the platform's id of the job, kept across its restarts
    layout: OutputLayout = "node"  # BOOTSTRAP_OUTPUT_LAYOUT: node r > 0 under node-<r>/
    restore: Restore = "auto"  # BOOTSTRAP_RESTORE: earlier attempts' outputs come back
    evidence: bool = True  # BOOTSTRAP_EVIDENCE: each attempt's log and records uploaded


@dataclass(frozen=True, slots=True)
class Staging:
    """The job's data (DLS_DATA_URL) staged onto the node before the command starts."""

    source: Location | None  # DLS_DATA_URL, parsed when `folder` is set
    folder: Path | None  # BOOTSTRAP_DATA_DIR, e.g. /cache/data
    shard: Shard  # "node": key i goes to node i mod N
    timeout: float  # seconds to wait for another process staging the same data here
    max_bytes: int | None  # BOOTSTRAP_DATA_MAX_GB: the most this node stages

    @property
    def enabled(self) -> bool:
        return self.source is not None and self.folder is not None


@dataclass(frozen=True, slots=True)
class Launch:
    """How the command starts across the nodes: each node runs it (torchrun's way), or
    node 0 runs it and the others serve its remote shell (MPI's way)."""

    mode: LaunchMode  # BOOTSTRAP_LAUNCH: "each" (default), "mpi" or "ray"
    agent_port: int  # BOOTSTRAP_AGENT_PORT: node r's agent listens on this + r
    secret: str | None = field(repr=False)  # BOOTSTRAP_JOB_SECRET
    secret_file: Path | None  # BOOTSTRAP_JOB_SECRET_FILE
    ray_port: int = 6379  # BOOTSTRAP_RAY_PORT: node r's Ray ports are this + 8r + k
    ray_worker_ports: tuple[int, int] = (10002, 10999)  # BOOTSTRAP_RAY_WORKER_PORTS

    @property
    def agents(self) -> bool:
        """Nodes 1..N-1 run the launch agent (MPI's remote shell; Ray's workers too)."""
        return self.mode in ("mpi", "ray")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a job, read once from the environment by :func:`load` and frozen: the
    stages take the part they need and read nothing else."""

    home: Path  # the original script's $home (/home/work)
    job_dir: Path  # where the code directory lands: $home/user-job-dir or $MA_JOB_DIR
    code: Location | None  # DLS_APP_URL: the code directory, None for local development
    log_format: LogFormat
    task_index: str  # DLS_TASK_INDEX / VC_TASK_INDEX, for file names before discovery
    transfer: Transfer
    cluster: ClusterSettings
    preflight: Preflight
    run: RunSettings
    outputs: Outputs
    staging: Staging
    launch: Launch
    ignored: tuple[str, ...] = ()  # BOOTSTRAP_* names set that nothing reads (see VARIABLES)


def ignored_variables(env: Mapping[str, str]) -> tuple[str, ...]:
    """The ``BOOTSTRAP_*`` names set in ``env`` that the bootstrap does not read, sorted."""
    return tuple(sorted(name for name in env if name.startswith("BOOTSTRAP_")
                        and name not in VARIABLES and name not in DEV_VARIABLES))


def nearest_variable(name: str) -> str | None:
    """The known variable ``name`` most likely meant (a typo), if one is close."""
    import difflib  # only for a job that set an unknown name: not on every start

    found = difflib.get_close_matches(name, sorted(VARIABLES), n=1, cutoff=0.8)
    return found[0] if found else None


def debug(env: Mapping[str, str]) -> bool:
    """BOOTSTRAP_DEBUG=1: print tracebacks of internal errors. Read before anything
    else can fail, so it is not part of :class:`Settings`."""
    return env.get("BOOTSTRAP_DEBUG") == "1"


def load(env: Mapping[str, str]) -> Settings:
    """The job's whole configuration; raises ConfigError on the first bad variable."""
    home = _home(env)
    job_dir = _job_dir(env, home)
    task = parse.first(env, "VC_TASK_INDEX", "DLS_TASK_INDEX") or "0"
    return Settings(
        home=home,
        job_dir=job_dir,
        code=_code(env),
        log_format=log_format(env),
        task_index=task,
        transfer=load_transfer(env),
        cluster=load_cluster(env),
        preflight=load_preflight(env),
        run=_run(env, job_dir, task),
        outputs=_outputs(env),
        staging=_staging(env),
        launch=_launch(env),
        ignored=ignored_variables(env),
    )


def log_format(env: Mapping[str, str]) -> LogFormat:
    return parse.choice(env, "BOOTSTRAP_LOG_FORMAT", "text", ("text", "json"))  # type: ignore[return-value]


def load_transfer(env: Mapping[str, str]) -> Transfer:
    """The transfer part alone (``bootstrap sync`` needs no cluster)."""
    addressing = parse.choice(env, "BOOTSTRAP_S3_ADDRESSING", "auto", ("auto", "path", "virtual"))
    return Transfer(
        workers=parse.integer(env, "BOOTSTRAP_DOWNLOAD_WORKERS", 256, minimum=1),
        memory=parse.integer(env, "BOOTSTRAP_TRANSFER_MEMORY_MB", 256, minimum=8) * MiB,
        backend=parse.choice(env, "BOOTSTRAP_S3_BACKEND", "auto",  # type: ignore[arg-type]
                             ("auto", "native", "boto3")),
        range_size=parse.integer(env, "BOOTSTRAP_RANGE_SIZE", 64 * MiB, minimum=64 * 1024),
        multipart_threshold=parse.integer(env, "BOOTSTRAP_MULTIPART_THRESHOLD", 16 * MiB,
                                          minimum=64 * 1024),
        retry_attempts=parse.integer(env, "BOOTSTRAP_RETRY_ATTEMPTS", 8, minimum=1),
        retry_deadline=parse.number(env, "BOOTSTRAP_RETRY_DEADLINE", 120.0, minimum=0),
        connect_timeout=parse.number(env, "BOOTSTRAP_S3_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        read_timeout=parse.number(env, "BOOTSTRAP_S3_READ_TIMEOUT", 30.0, minimum=0.1),
        max_files=parse.integer(env, "BOOTSTRAP_MAX_FILES", 1_000_000, minimum=1),
        endpoint=resolve_endpoint(env, addressing),
        credentials=env_credentials(env),
    )


def load_cluster(env: Mapping[str, str]) -> ClusterSettings:
    return ClusterSettings(
        layout=discover(env, Path(parse.text(env, "BOOTSTRAP_VOLCANO_DIR") or "/etc/volcano")),
        peer_timeout=parse.number(env, "BOOTSTRAP_PEER_TIMEOUT", 600.0, minimum=0),
        barrier=parse.choice(env, "BOOTSTRAP_BARRIER", "auto",  # type: ignore[arg-type]
                             ("auto", "on", "off")),
        master_addr_ib=parse.flag(env, "BOOTSTRAP_MASTER_ADDR_IB", False),
        network=parse.choice(env, "BOOTSTRAP_NETWORK", "auto",  # type: ignore[arg-type]
                             ("auto", "off")),
        ipoib_device=parse.text(env, "DLS_IPOIB_DEVICE") or "ib0",
        peer_fetch=parse.choice(env, "BOOTSTRAP_PEER_FETCH", "auto",  # type: ignore[arg-type]
                                ("auto", "on", "off")),
        relay_port=_port(env, "BOOTSTRAP_RELAY_PORT", 29611),
        sysfs_root=Path(parse.text(env, "BOOTSTRAP_SYSFS_ROOT") or "/sys"),
    )


def load_preflight(env: Mapping[str, str]) -> Preflight:
    raw = parse.text(env, "BOOTSTRAP_FATAL_CHECKS")
    if raw is None:
        fatal = PREFLIGHT_CHECKS_FATAL
    elif raw == "all":
        fatal = PREFLIGHT_CHECKS
    elif raw == "none":
        fatal = frozenset()
    else:
        fatal = frozenset(c.strip() for c in raw.split(",") if c.strip())
        unknown = sorted(fatal - PREFLIGHT_CHECKS)
        if unknown:
            raise ConfigError(f"BOOTSTRAP_FATAL_CHECKS names unknown checks {unknown}; "
                              f"known: {', '.join(sorted(PREFLIGHT_CHECKS))}")
    expect: int | None = None
    for name in ("BOOTSTRAP_EXPECT_GPUS", "MA_NUM_GPUS"):
        if parse.text(env, name):
            expect = parse.integer(env, name, 0, minimum=0)
            break
    return Preflight(
        fatal=fatal,
        require_gpu=parse.flag(env, "BOOTSTRAP_REQUIRE_GPU", False),
        expect_gpus=expect,
        min_disk=int(parse.number(env, "BOOTSTRAP_MIN_DISK_GB", 32) * GB),
        min_cache=int(parse.number(env, "BOOTSTRAP_MIN_CACHE_GB", 32) * GB),
        min_shm=int(parse.number(env, "BOOTSTRAP_MIN_SHM_MB", 1024) * MiB),
        min_memory=int(parse.number(env, "BOOTSTRAP_MIN_MEMORY_GB", 2) * GB),
        min_nofile=parse.integer(env, "BOOTSTRAP_MIN_NOFILE", 8192),
        busy_fraction=parse.number(env, "BOOTSTRAP_BUSY_MEMORY_FRACTION", 0.5),
        timeout=parse.number(env, "BOOTSTRAP_PREFLIGHT_TIMEOUT", 60.0, minimum=0.1),
        nvml_module=parse.text(env, "BOOTSTRAP_NVML_MODULE") or "pynvml",
        cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
        nvidia_visible=env.get("NVIDIA_VISIBLE_DEVICES"),
        cuda_image=env.get("CUDA_VERSION") or None,
        cache_dir=_cache_dir(env),
        run_train=Path(parse.text(env, "BOOTSTRAP_RUN_TRAIN") or "/home/work/run_train.sh"),
        image_python=env.get("BOOTSTRAP_PYTHON") or None,
        image_meta=Path(parse.text(env, "BOOTSTRAP_IMAGE_META") or "/opt/bootstrap-meta"),
    )


def _run(env: Mapping[str, str], job_dir: Path, task: str) -> RunSettings:
    supervise = parse.flag(env, "BOOTSTRAP_SUPERVISE", False) \
        if parse.text(env, "BOOTSTRAP_SUPERVISE") else None
    pip = parse.text(env, "BOOTSTRAP_PIP_INSTALL")
    pip_install: PipInstall = "auto"
    if pip is not None and pip.lower() != "auto":
        pip_install = "on" if parse.flag(env, "BOOTSTRAP_PIP_INSTALL", False) else "off"
    hang = parse.number(env, "BOOTSTRAP_HANG_SECONDS", 0.0, minimum=0)
    if hang > 0:
        if supervise is False:
            raise ConfigError("BOOTSTRAP_HANG_SECONDS needs a supervised run, but "
                              "BOOTSTRAP_SUPERVISE=0; unset one of them")
        supervise = True  # only a parent can watch the command
    return RunSettings(
        nested=env.get(ACTIVE_MARKER) == "1",
        supervise=supervise,
        grace_seconds=parse.number(env, "BOOTSTRAP_GRACE_SECONDS", 30.0, minimum=0),
        detached=parse.choice(env, "BOOTSTRAP_DETACHED", "wait", ("wait", "stop")),
        log_file=Path(parse.text(env, "BOOTSTRAP_LOG_FILE") or f"/tmp/dls-task-{task}.log"),
        log_max=int(parse.number(env, "BOOTSTRAP_LOG_MAX_MB", 1024, minimum=0) * MiB),
        failure_file=Path(parse.text(env, "BOOTSTRAP_FAILURE_FILE") or job_dir / "failure.json"),
        pip_install=pip_install,
        cache_dir=_cache_dir(env),
        hang_seconds=hang,
        hang_action=parse.choice(env, "BOOTSTRAP_HANG_ACTION", "stop",  # type: ignore[arg-type]
                                 ("stop", "dump")),
        heartbeat_file=Path(parse.text(env, "BOOTSTRAP_HEARTBEAT_FILE")
                            or job_dir / "heartbeat"),
    )


def _outputs(env: Mapping[str, str]) -> Outputs:
    output_dir = parse.text(env, "BOOTSTRAP_OUTPUT_DIR")
    destination = None
    if output_dir:
        train_url = parse.text(env, "DLS_TRAIN_URL")
        if train_url is None:
            raise ConfigError("BOOTSTRAP_OUTPUT_DIR is set but DLS_TRAIN_URL is not: set "
                              "the job's training output location (s3://bucket/output/)")
        destination = remote(train_url, "DLS_TRAIN_URL")
    return Outputs(
        output_dir=Path(output_dir).absolute() if output_dir else None,
        destination=destination,
        sync_interval=parse.number(env, "BOOTSTRAP_SYNC_INTERVAL", 0.0, minimum=0),
        sync_settle=parse.number(env, "BOOTSTRAP_SYNC_SETTLE_SECONDS", 5.0, minimum=0),
        log_upload=_log_upload(env),
        train_url=destination or _train_url(env),
        job_id=platform_job_id(env),
        layout=parse.choice(env, "BOOTSTRAP_OUTPUT_LAYOUT", "node",  # type: ignore[arg-type]
                            ("node", "shared")),
        restore=parse.choice(env, "BOOTSTRAP_RESTORE", "auto",  # type: ignore[arg-type]
                             ("auto", "always", "off")),
        evidence=parse.flag(env, "BOOTSTRAP_EVIDENCE", True),
    )


def _train_url(env: Mapping[str, str]) -> Location | None:
    """DLS_TRAIN_URL without an output folder: where the attempts' evidence goes when it
    is an object-store URL; a local path (or anything else) is not ours to write to."""
    url = parse.text(env, "DLS_TRAIN_URL")
    if not url:
        return None
    try:
        found = parse_url(url, "DLS_TRAIN_URL")
    except ConfigError:
        return None
    return found if found.is_remote else None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = parse.integer(env, name, default, minimum=1)
    if port > 65535:
        raise ConfigError(f"{name}={port} is out of range 1-65535")
    return port


def _staging(env: Mapping[str, str]) -> Staging:
    folder = parse.text(env, "BOOTSTRAP_DATA_DIR")
    cap = parse.number(env, "BOOTSTRAP_DATA_MAX_GB", 0.0, minimum=0)
    url = parse.text(env, "DLS_DATA_URL") if folder else None  # unused without a folder
    return Staging(
        source=parse_url(url, "DLS_DATA_URL") if url else None,
        folder=Path(folder).expanduser().absolute() if folder else None,
        shard=parse.choice(env, "BOOTSTRAP_DATA_SHARD", "none",  # type: ignore[arg-type]
                           ("none", "node")),
        timeout=parse.number(env, "BOOTSTRAP_DATA_TIMEOUT", 3600.0, minimum=0),
        max_bytes=int(cap * GB) if cap > 0 else None,
    )


def _launch(env: Mapping[str, str]) -> Launch:
    secret_file = parse.text(env, "BOOTSTRAP_JOB_SECRET_FILE")
    return Launch(
        mode=parse.choice(env, "BOOTSTRAP_LAUNCH", "each",  # type: ignore[arg-type]
                          ("each", "mpi", "ray")),
        agent_port=_port(env, "BOOTSTRAP_AGENT_PORT", 28600),
        secret=parse.text(env, "BOOTSTRAP_JOB_SECRET"),
        secret_file=Path(secret_file) if secret_file else None,
        ray_port=_port(env, "BOOTSTRAP_RAY_PORT", 6379),
        ray_worker_ports=_port_range(env, "BOOTSTRAP_RAY_WORKER_PORTS", (10002, 10999)),
    )


def _port_range(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = parse.text(env, name)
    if raw is None:
        return default
    lo, sep, hi = raw.partition("-")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
        raise ConfigError(f"{name}={raw!r} is not a port range lo-hi (e.g. 10002-10999)")
    return int(lo), int(hi)


def _home(env: Mapping[str, str]) -> Path:
    """BOOTSTRAP_HOME, else the folder holding run_train.sh (the launcher passes it as
    BOOTSTRAP_LAUNCHER_HOME), else $HOME: the original script used its own folder,
    i.e. /home/work."""
    raw = parse.first(env, "BOOTSTRAP_HOME", "BOOTSTRAP_LAUNCHER_HOME", "HOME") or os.getcwd()
    return Path(raw).expanduser().absolute()


def _job_dir(env: Mapping[str, str], home: Path) -> Path:
    """$MA_JOB_DIR (the platform's ma-user layout) unless BOOTSTRAP_HOME was set by
    hand, else $home/user-job-dir. run_train.sh's own default for the home is not a
    choice the user made, so it does not count."""
    ma_job_dir = parse.text(env, "MA_JOB_DIR")
    if ma_job_dir and not parse.text(env, "BOOTSTRAP_HOME"):
        return Path(ma_job_dir).expanduser().absolute()
    return home / "user-job-dir"


def _cache_dir(env: Mapping[str, str]) -> Path:
    return Path(parse.text(env, "BOOTSTRAP_CACHE_DIR") or CACHE_DIR)


def _code(env: Mapping[str, str]) -> Location | None:
    url = parse.text(env, "DLS_APP_URL")
    return parse_url(url, "DLS_APP_URL") if url else None


def _log_upload(env: Mapping[str, str]) -> Location | None:
    """BOOTSTRAP_LOG_UPLOAD_URL, else the original's DLS_UPLOAD_LOG_OBS_DIR when
    DLS_USE_UPLOADER is on."""
    url = parse.text(env, "BOOTSTRAP_LOG_UPLOAD_URL")
    if url:
        return remote(url, "BOOTSTRAP_LOG_UPLOAD_URL")
    if parse.flag(env, "DLS_USE_UPLOADER", False):
        url = parse.text(env, "DLS_UPLOAD_LOG_OBS_DIR")
        return remote(url, "DLS_UPLOAD_LOG_OBS_DIR") if url else None
    return None
