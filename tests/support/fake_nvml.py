"""A fake of the ``pynvml`` module (nvidia-ml-py) for machines without a GPU.

It mirrors the real module's names, constants, return types and exception classes
(``test_fake_nvml_mirrors_pynvml`` checks them against the installed pynvml), and
reads its scenario from the ``FAKE_NVML`` environment variable (JSON) so that a
bootstrap started as a subprocess with ``BOOTSTRAP_NVML_MODULE=tests.support.fake_nvml``
sees the same GPUs as the test that set it up::

    {"mode": "ok" | "missing" | "no-driver" | "mismatch" | "hang-init",
     "driver": "550.54.15", "cuda": 12040,
     "gpus": [{"name": ..., "ecc": 0, "processes": 0, "memory_used": 0, ...}]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

# Constant values as in pynvml.
NVML_FEATURE_ENABLED = 1
NVML_FEATURE_DISABLED = 0
NVML_TEMPERATURE_GPU = 0
NVML_VOLATILE_ECC = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_TIMEOUT = 10
nvmlEventTypeXidCriticalError = 8
nvmlClocksThrottleReasonHwSlowdown = 0x08
nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80

_MESSAGES = {3: "Not Supported", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
             18: "RM has detected an NVML/RM version mismatch."}


class NVMLError(Exception):
    """Like pynvml's: ``NVMLError(code)`` builds the subclass for that code."""

    value: int

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_NotSupported(NVMLError): ...  # noqa: N801,E701 - pynvml's names
class NVMLError_DriverNotLoaded(NVMLError): ...  # noqa: N801,E701
class NVMLError_LibraryNotFound(NVMLError): ...  # noqa: N801,E701
class NVMLError_LibRmVersionMismatch(NVMLError): ...  # noqa: N801,E701
class NVMLError_Timeout(NVMLError): ...  # noqa: N801,E701


NVMLError._valClassMapping.update({3: NVMLError_NotSupported, 9: NVMLError_DriverNotLoaded,
                                   12: NVMLError_LibraryNotFound,
                                   18: NVMLError_LibRmVersionMismatch, 10: NVMLError_Timeout})


@dataclass
class c_nvmlEventData_t:  # noqa: N801
    device: int
    eventType: int  # noqa: N815
    eventData: int  # noqa: N815 - the Xid
    gpuInstanceId: int  # noqa: N815
    computeInstanceId: int  # noqa: N815


@dataclass
class c_nvmlMemory_t:  # noqa: N801
    total: int
    free: int
    used: int


@dataclass
class c_nvmlProcessInfo_t:  # noqa: N801
    pid: int
    usedGpuMemory: int  # noqa: N815


def _scenario() -> dict[str, Any]:
    scenario: dict[str, Any] = json.loads(os.environ.get("FAKE_NVML",
                                                         '{"mode": "ok", "gpus": []}'))
    return scenario


_state: dict[str, Any] = {}


def _gpu(handle: int) -> dict[str, Any]:
    if not _state:
        raise NVMLError(1)  # NVML_ERROR_UNINITIALIZED
    return dict(_state["gpus"][handle])


def _supported(gpu: dict[str, Any], key: str) -> Any:
    value = gpu.get(key)
    if value == "unsupported":
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return value


def nvmlInit() -> None:
    sc = _scenario()
    mode = sc.get("mode", "ok")
    if mode == "missing":
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    if mode == "no-driver":
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    if mode == "mismatch":
        raise NVMLError(NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    if mode == "hang-init":  # a GPU that fell off the bus: the driver never answers
        import time

        time.sleep(3600)
    _state.update(sc)
    _state.setdefault("gpus", [])


def nvmlShutdown() -> None:
    _state.clear()


def nvmlSystemGetDriverVersion() -> str:
    return str(_state.get("driver", "550.54.15"))


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_state.get("cuda", 12040))


def nvmlDeviceGetCount() -> int:
    return len(_state["gpus"])


def nvmlEventSetCreate() -> dict[str, Any]:
    """Xid events come from the scenario: ``"xid": [{"gpu": 0, "xid": 79, "after": 1.0}]``
    (seconds after the set was created)."""
    import time

    return {"created": time.monotonic(), "devices": set(), "sent": 0}


def nvmlDeviceRegisterEvents(handle: int, eventTypes: int, eventSet: dict[str, Any]) -> None:  # noqa: N803
    _gpu(handle)
    eventSet["devices"].add(handle)


def nvmlEventSetWait_v2(eventSet: dict[str, Any], timeoutms: int) -> c_nvmlEventData_t:
    import time

    pending = [e for e in _state.get("xid", []) if e.get("gpu", 0) in eventSet["devices"]]
    if eventSet["sent"] < len(pending):
        event = pending[eventSet["sent"]]
        due = eventSet["created"] + float(event.get("after", 0))
        if time.monotonic() + timeoutms / 1000 >= due:
            time.sleep(max(due - time.monotonic(), 0))
            eventSet["sent"] += 1
            return c_nvmlEventData_t(int(event.get("gpu", 0)), nvmlEventTypeXidCriticalError,
                                     int(event["xid"]), 0xFFFFFFFF, 0xFFFFFFFF)
    time.sleep(timeoutms / 1000)
    raise NVMLError(NVML_ERROR_TIMEOUT)


def nvmlDeviceGetIndex(handle: int) -> int:
    _gpu(handle)
    return handle


def nvmlEventSetFree(eventSet: dict[str, Any]) -> None:
    eventSet["devices"].clear()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_state["gpus"]):
        raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpu(handle).get("name", "NVIDIA H100 80GB HBM3"))


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_gpu(handle).get("uuid", f"GPU-{handle:08d}-fake-0000-0000-000000000000"))


def nvmlDeviceGetMemoryInfo(handle: int, version: Any = None) -> c_nvmlMemory_t:
    g = _gpu(handle)
    total = int(g.get("memory_total", 80 * 2**30))
    used = int(g.get("memory_used", 4 * 2**20))
    return c_nvmlMemory_t(total=total, free=total - used, used=used)


def nvmlDeviceGetPersistenceMode(handle: int) -> int:
    return int(_supported(_gpu(handle), "persistence") if "persistence" in _gpu(handle) else 1)


def nvmlDeviceGetCurrPcieLinkGeneration(handle: int) -> int:
    return int(_gpu(handle).get("pcie_gen", 5))


def nvmlDeviceGetMaxPcieLinkGeneration(handle: int) -> int:
    return int(_gpu(handle).get("pcie_gen_max", 5))


def nvmlDeviceGetCurrPcieLinkWidth(handle: int) -> int:
    return int(_gpu(handle).get("pcie_width", 16))


def nvmlDeviceGetMaxPcieLinkWidth(handle: int) -> int:
    return int(_gpu(handle).get("pcie_width_max", 16))


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return int(_gpu(handle).get("temperature", 35))


@dataclass
class c_nvmlUtilization_t:  # noqa: N801 - pynvml's name
    gpu: int
    memory: int


def nvmlDeviceGetUtilizationRates(handle: int) -> c_nvmlUtilization_t:
    """A rank stuck in an NCCL collective spins at 100 %: the watchdog must not care."""
    util = int(_gpu(handle).get("utilization", 0))
    return c_nvmlUtilization_t(util, util)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return int(_gpu(handle).get("power_mw", 70_000))


def nvmlDeviceGetTotalEccErrors(handle: int, errorType: int, counterType: int) -> int:  # noqa: N803
    g = _gpu(handle)
    return int(_supported(g, "ecc") or 0)


def nvmlDeviceGetRetiredPagesPendingStatus(device: int) -> int:
    return int(_supported(_gpu(device), "retired_pending") or 0)


def nvmlDeviceGetRemappedRows(device: int) -> tuple[int, int, int, int]:
    g = _gpu(device)
    pending = _supported(g, "remap_pending") or 0
    return (0, 0, int(pending), int(g.get("remap_failed", 0)))


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[c_nvmlProcessInfo_t]:
    n = int(_gpu(handle).get("processes", 0))
    return [c_nvmlProcessInfo_t(pid=1000 + i, usedGpuMemory=2**30) for i in range(n)]


def nvmlDeviceGetCurrentClocksThrottleReasons(handle: int) -> int:
    return int(_gpu(handle).get("throttle", 0))
