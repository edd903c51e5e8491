"""Parse the environment into one frozen :class:`Settings`, once, at start-up.

The platform fixes the run command, so flags cannot reach the bootstrap: its knobs
are ``BOOTSTRAP_*`` variables (all listed in README.md). Parsing is pure: it takes a
mapping and returns a value or raises :class:`ConfigError` with a message that names
the variable, what it holds and what it should hold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    home: Path  # BOOTSTRAP_HOME: the original script's $home (/home/work)
    app_url: Optional[str]  # DLS_APP_URL: the code directory, None for local development
    log_format: str  # "text" | "json"
    download_workers: int  # requests in flight at most (threads for the boto3 fallback)
    transfer_memory: int  # bytes of object data held in memory at once, all transfers
    s3_backend: str  # "auto" | "native" | "boto3"
    range_size: int  # bytes per ranged GET of a large object
    multipart_threshold: int  # objects at least this large are fetched as ranges
    retry_attempts: int  # per request, including the first
    retry_deadline: float  # seconds a single request may keep retrying
    connect_timeout: float
    read_timeout: float
    max_files: int  # refuse listings larger than this (hostile or mistaken prefixes)
    addressing: str  # "auto" | "path" | "virtual"
    peer_timeout: float  # seconds to wait for every peer (DNS and barrier)
    task_index_hint: str  # DLS_TASK_INDEX / VC_TASK_INDEX, for log file names
    barrier: str  # "auto" (when an IB device exists) | "on" | "off"
    master_addr_ib: bool  # MASTER_ADDR = node 0's IPoIB address
    network: str  # "auto" (choose the engines' interface, check reachability) | "off"
    sysfs_root: Path  # where /sys is read for HCAs (tests point it at a prepared tree)
    supervise: Optional[bool]  # None: decide (PID 1 or work after the command)
    grace_seconds: float
    log_file: Path  # the command's output, tee'd while supervising
    failure_file: Path
    output_dir: Optional[Path]  # synced to train_url
    train_url: Optional[str]
    sync_interval: float  # 0: only at the end
    sync_settle: float  # files younger than this wait for the next periodic round
    log_upload_url: Optional[str]
    pip_install: str  # "auto" | "on" | "off"

    @property
    def job_dir(self) -> Path:
        return self.home / "user-job-dir"


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
            integer: bool) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}; set it to {kind} >= {minimum:g} "
                          f"or unset it for the default ({default:g})") from None
    if value < minimum or value != value:  # NaN compares unequal to itself
        raise ConfigError(f"{name}={raw!r} is below the minimum {minimum:g}; "
                          f"unset it for the default ({default:g})")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return int(_number(env, name, default, minimum=minimum, integer=True))


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    return _number(env, name, default, minimum=minimum, integer=False)


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name}={env[name]!r} is not one of {', '.join(choices)}")
    return raw


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env[name]!r} is not a yes/no value; use 1 or 0")


def default_home(env: Mapping[str, str]) -> Path:
    """BOOTSTRAP_HOME, else the folder holding run_train.sh (run_train.sh exports it),
    else $HOME: the original script used its own folder, i.e. /home/work."""
    raw = env.get("BOOTSTRAP_HOME") or env.get("HOME") or os.getcwd()
    return Path(raw).expanduser().absolute()


def _log_upload_url(env: Mapping[str, str]) -> Optional[str]:
    """BOOTSTRAP_LOG_UPLOAD_URL, else the original's DLS_UPLOAD_LOG_OBS_DIR when
    DLS_USE_UPLOADER is on."""
    url = env.get("BOOTSTRAP_LOG_UPLOAD_URL", "").strip()
    if url:
        return url
    if env_flag(env, "DLS_USE_UPLOADER", False):
        return env.get("DLS_UPLOAD_LOG_OBS_DIR", "").strip() or None
    return None


def load(env: Mapping[str, str]) -> Settings:
    app_url = env.get("DLS_APP_URL", "").strip() or None
    home = default_home(env)
    task = env.get("VC_TASK_INDEX") or env.get("DLS_TASK_INDEX") or "0"
    supervise_raw = env.get("BOOTSTRAP_SUPERVISE", "").strip()
    output_dir = env.get("BOOTSTRAP_OUTPUT_DIR", "").strip()
    return Settings(
        home=home,
        app_url=app_url,
        log_format=env_choice(env, "BOOTSTRAP_LOG_FORMAT", "text", ("text", "json")),
        download_workers=env_int(env, "BOOTSTRAP_DOWNLOAD_WORKERS", 256, minimum=1),
        transfer_memory=env_int(env, "BOOTSTRAP_TRANSFER_MEMORY_MB", 256, minimum=8) * MiB,
        s3_backend=env_choice(env, "BOOTSTRAP_S3_BACKEND", "auto", ("auto", "native", "boto3")),
        range_size=env_int(env, "BOOTSTRAP_RANGE_SIZE", 16 * MiB, minimum=64 * 1024),
        multipart_threshold=env_int(env, "BOOTSTRAP_MULTIPART_THRESHOLD", 16 * MiB,
                                    minimum=64 * 1024),
        retry_attempts=env_int(env, "BOOTSTRAP_RETRY_ATTEMPTS", 8, minimum=1),
        retry_deadline=env_float(env, "BOOTSTRAP_RETRY_DEADLINE", 120.0, minimum=0),
        connect_timeout=env_float(env, "BOOTSTRAP_S3_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        read_timeout=env_float(env, "BOOTSTRAP_S3_READ_TIMEOUT", 30.0, minimum=0.1),
        max_files=env_int(env, "BOOTSTRAP_MAX_FILES", 1_000_000, minimum=1),
        addressing=env_choice(env, "BOOTSTRAP_S3_ADDRESSING", "auto",
                              ("auto", "path", "virtual")),
        peer_timeout=env_float(env, "BOOTSTRAP_PEER_TIMEOUT", 600.0, minimum=0),
        task_index_hint=task,
        barrier=env_choice(env, "BOOTSTRAP_BARRIER", "auto", ("auto", "on", "off")),
        master_addr_ib=env_flag(env, "BOOTSTRAP_MASTER_ADDR_IB", False),
        network=env_choice(env, "BOOTSTRAP_NETWORK", "auto", ("auto", "off")),
        sysfs_root=Path(env.get("BOOTSTRAP_SYSFS_ROOT", "").strip() or "/sys"),
        supervise=env_flag(env, "BOOTSTRAP_SUPERVISE", False) if supervise_raw else None,
        grace_seconds=env_float(env, "BOOTSTRAP_GRACE_SECONDS", 30.0, minimum=0),
        log_file=Path(env.get("BOOTSTRAP_LOG_FILE", "").strip() or f"/tmp/dls-task-{task}.log"),
        failure_file=Path(env.get("BOOTSTRAP_FAILURE_FILE", "").strip()
                          or home / "user-job-dir" / "failure.json"),
        output_dir=Path(output_dir).absolute() if output_dir else None,
        train_url=env.get("DLS_TRAIN_URL", "").strip() or None,
        sync_interval=env_float(env, "BOOTSTRAP_SYNC_INTERVAL", 0.0, minimum=0),
        sync_settle=env_float(env, "BOOTSTRAP_SYNC_SETTLE_SECONDS", 5.0, minimum=0),
        log_upload_url=_log_upload_url(env),
        pip_install=env_choice(env, "BOOTSTRAP_PIP_INSTALL", "auto", ("auto", "1", "0")),
    )
