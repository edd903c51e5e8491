"""This node's resources, read once (psutil and the OS): the I/O half of the node checks.

What is measured mirrors the platform's own pre-check (root disk and ``/cache`` over
32 GB, ``/dev/shm`` over 1 GB, ulimits when InfiniBand is used) plus what makes
training jobs die late: too little memory, too few open files, a CUDA image newer
than the driver.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    from ..config.settings import Preflight


@dataclass(frozen=True, slots=True)
class Resources:
    """The node's limits that training trips over: free disk where code and cache land,
    /dev/shm, memory, open-file and locked-memory limits, the IPoIB device."""

    job_dir: str
    job_dir_free: int | None  # bytes free where the code lands
    cache_dir: str | None  # the node-local SSD, when it exists
    cache_free: int | None
    shm_total: int | None
    mem_total: int
    mem_available: int
    nofile: int  # soft limit
    memlock: int  # soft limit in bytes, -1 for unlimited
    ib_device: str | None  # name of the IPoIB device holding an address
    cuda_image: str | None  # CUDA_VERSION baked into the image
    cuda_compat: bool  # the CUDA forward-compatibility libraries are present


def _free(path: Path) -> int | None:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _limit(which: int) -> int:
    soft, _ = resource.getrlimit(which)
    return -1 if soft == resource.RLIM_INFINITY else int(soft)


def memory() -> tuple[int, int]:
    """(total, available) bytes: /proc/meminfo where it exists (cheap), else psutil."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if ":" in line)
        return (int(fields["MemTotal"].split()[0]) * 1024,
                int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        import psutil

        mem = psutil.virtual_memory()
        return int(mem.total), int(mem.available)


def measure(pol: Preflight, job_dir: Path, ipoib_device: str) -> Resources:
    """This node's disks, memory and limits, as the preflight judges them."""
    from ..cluster import ipoib

    cache = str(pol.cache_dir)
    has_cache = os.path.isdir(cache)
    try:
        st = os.statvfs("/dev/shm")
        shm: int | None = st.f_blocks * st.f_frsize
    except OSError:
        shm = None
    mem_total, mem_available = memory()
    device = ipoib_device
    return Resources(
        job_dir=str(job_dir), job_dir_free=_free(job_dir),
        cache_dir=cache if has_cache else None,
        cache_free=_free(Path(cache)) if has_cache else None,
        shm_total=shm, mem_total=mem_total, mem_available=mem_available,
        nofile=_limit(resource.RLIMIT_NOFILE), memlock=_limit(resource.RLIMIT_MEMLOCK),
        ib_device=device if ipoib.local_address(device) else None,
        cuda_image=pol.cuda_image,
        cuda_compat=_has_compat_libcuda(),
    )


def _has_compat_libcuda(folder: str = "/usr/local/cuda/compat") -> bool:
    """Whether the image ships CUDA's forward-compatibility driver (libcuda.so*): a
    listing, not glob (whose import, with fnmatch's, is ~1 ms of every start)."""
    try:
        return any(name.startswith("libcuda.so") for name in os.listdir(folder))
    except OSError:
        return False
