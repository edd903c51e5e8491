"""The GPUs of this node, read through NVML: the one place NVML is called.

``inspect`` is the I/O boundary: it imports the NVML bindings (``pynvml``, from the
nvidia-ml-py package; ``BOOTSTRAP_NVML_MODULE`` names another module with the same
API, which is how the tests inject a fake) and returns a frozen :class:`Inventory`.
Everything else (which findings are warnings or failures) is pure, in preflight.py.

Queries a GPU does not support (ECC on consumer boards, remapped rows before
Ampere) come back as None rather than as errors.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, TypeVar

    from ..config.settings import Preflight

    T = TypeVar("T")


# Clock-event bits worth a warning (pynvml's nvmlClocksThrottleReason* values).
THROTTLE_REASONS = {0x08: "hardware slowdown", 0x20: "software thermal slowdown",
                    0x40: "hardware thermal slowdown", 0x80: "power brake"}


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as NVML reports it: identity, memory, persistence mode, PCIe link (now and at
    best), and what is throttling it."""

    index: int
    name: str
    uuid: str
    memory_total: int  # bytes
    memory_used: int
    persistence: bool | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    temperature: int | None = None  # Celsius
    power_watts: float | None = None
    ecc_uncorrected: int | None = None  # volatile
    retired_pending: bool | None = None
    remap_pending: bool | None = None
    remap_failed: bool | None = None
    processes: int | None = None  # compute processes already on it
    throttle: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Inventory:
    """``nvml`` False: no library or no driver (a CPU node); ``error``: NVML is there but
    broken (e.g. a driver/library version mismatch)."""

    nvml: bool
    gpus: tuple[Gpu, ...] = ()
    driver: str = ""
    cuda_driver: int | None = None  # e.g. 12040 for CUDA 12.4
    error: str = ""
    hidden: int = 0  # GPUs NVML sees but CUDA_VISIBLE_DEVICES hides
    notes: tuple[str, ...] = field(default_factory=tuple)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def visible(cuda_visible: str | None, nvidia_visible: str | None, count: int,
            uuids: list[str]) -> list[int] | None:
    """NVML indices CUDA will use, from CUDA_VISIBLE_DEVICES; None: all of them.

    Entries are indices or (prefixes of) UUIDs; like CUDA, the list stops at the
    first entry that matches nothing. NVIDIA_VISIBLE_DEVICES is applied by the
    container runtime before NVML sees anything, except ``none``/``void``.
    """
    if (nvidia_visible or "").strip().lower() in ("none", "void"):
        return []
    raw = cuda_visible
    if raw is None:
        return None
    chosen: list[int] = []
    for entry in (e.strip() for e in raw.split(",")):
        if entry.isdigit() and int(entry) < count:
            index = int(entry)
        else:
            matches = [i for i, u in enumerate(uuids) if entry and u.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break
        chosen.append(index)
    return chosen


NVML_LIBRARY = "libnvidia-ml.so.1"
# The driver's device nodes: /dev/nvidiactl on Linux (the container runtime mounts it
# with the GPUs), /dev/dxg under WSL 2 (Docker Desktop), where NVML works without it.
DRIVER_NODES = ("/dev/nvidiactl", "/dev/dxg")


def _driver_present() -> bool:
    """Whether NVML can start here: a driver's device node, then its library. On a CPU
    node the first test answers, two stat calls, with no ctypes to import (~5 ms of
    every job's start-up); a failed dlopen costs ~1 ms more, the bindings' import ~20 ms,
    and a CPU node needs none of them."""
    if not any(os.path.exists(node) for node in DRIVER_NODES):
        return False
    import ctypes

    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


class _Traced:
    """The bindings, recording each call as it starts: a driver that never answers is
    then named by the call that did not return (BOOTSTRAP_PREFLIGHT_TIMEOUT)."""

    def __init__(self, module: Any, calls: list[str]) -> None:
        self._module, self._calls = module, calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if not name.startswith("nvml") or isinstance(value, type) or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(name)
            return value(*args, **kwargs)

        return call


def inspect(pol: Preflight, calls: list[str] | None = None) -> Inventory:
    """The GPUs as NVML sees them; ``calls`` receives each NVML call as it starts."""
    module = pol.nvml_module
    if module == "pynvml" and not _driver_present():
        return Inventory(nvml=False, notes=(
            f"NVML: no NVIDIA driver here ({' and '.join(DRIVER_NODES)} absent, or "
            f"{NVML_LIBRARY} not found)",))
    try:
        nvml = _Traced(importlib.import_module(module), calls if calls is not None else [])
    except ImportError:
        return Inventory(nvml=False, notes=(f"the NVML bindings ({module}) are not installed",))
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        if code in (nvml.NVML_ERROR_LIBRARY_NOT_FOUND, nvml.NVML_ERROR_DRIVER_NOT_LOADED):
            return Inventory(nvml=False, notes=(f"NVML: {exc}",))
        return Inventory(nvml=True, error=f"NVML failed to start: {exc}")
    try:
        return _read(nvml, pol)
    except nvml.NVMLError as exc:
        return Inventory(nvml=True, error=f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(nvml.NVMLError):  # the process is about to exec anyway
            nvml.nvmlShutdown()


def _read(nvml: Any, pol: Preflight) -> Inventory:
    def maybe(fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except nvml.NVMLError:  # NotSupported and friends: a missing answer, not a failure
            return None

    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    chosen = visible(pol.cuda_visible, pol.nvidia_visible, count, uuids)
    indices = list(range(count)) if chosen is None else chosen
    gpus = []
    for i in indices:
        h = handles[i]
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        remap = maybe(nvml.nvmlDeviceGetRemappedRows, h)
        procs = maybe(nvml.nvmlDeviceGetComputeRunningProcesses, h)
        reasons = maybe(nvml.nvmlDeviceGetCurrentClocksThrottleReasons, h) or 0
        power = maybe(nvml.nvmlDeviceGetPowerUsage, h)
        persistence = maybe(nvml.nvmlDeviceGetPersistenceMode, h)
        gpus.append(Gpu(
            index=i, name=_text(nvml.nvmlDeviceGetName(h)), uuid=uuids[i],
            memory_total=int(mem.total), memory_used=int(mem.used),
            persistence=None if persistence is None else persistence == nvml.NVML_FEATURE_ENABLED,
            pcie_gen=maybe(nvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
            pcie_gen_max=maybe(nvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
            pcie_width=maybe(nvml.nvmlDeviceGetCurrPcieLinkWidth, h),
            pcie_width_max=maybe(nvml.nvmlDeviceGetMaxPcieLinkWidth, h),
            temperature=maybe(nvml.nvmlDeviceGetTemperature, h,
                              nvml.NVML_TEMPERATURE_GPU),
            power_watts=None if power is None else power / 1000.0,
            ecc_uncorrected=maybe(nvml.nvmlDeviceGetTotalEccErrors, h,
                                  nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
            retired_pending=_flag(maybe(nvml.nvmlDeviceGetRetiredPagesPendingStatus, h)),
            remap_pending=None if remap is None else bool(remap[2]),
            remap_failed=None if remap is None else bool(remap[3]),
            processes=None if procs is None else len(procs),
            throttle=tuple(text for bit, text in THROTTLE_REASONS.items() if reasons & bit),
        ))
    return Inventory(nvml=True, gpus=tuple(gpus), driver=_text(nvml.nvmlSystemGetDriverVersion()),
                     cuda_driver=maybe(nvml.nvmlSystemGetCudaDriverVersion),
                     hidden=count - len(indices))


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)
