"""Xid errors while the command runs, through NVML's event API.

An Xid is the driver's report of a GPU fault (79: fell off the bus, 48: double-bit
ECC, 63/64: row remapping, 13/31/43: usually the job's own kernel). The kernel log
where they appear is not readable in a container; NVML's event API is. A failure
record that names an Xid is the node's fault, not the job's (see
:mod:`bootstrap.run.diagnose`).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Any

XID_CRITICAL = 8  # nvmlEventTypeXidCriticalError
WAIT_MS = 500


class XidWatch(threading.Thread):
    """Collects Xid events of every GPU until :meth:`stop`; never fails the job."""

    def __init__(self, module: str) -> None:
        super().__init__(daemon=True, name="xid-watch")
        self.module = module
        self.events: list[tuple[int, int]] = []  # (GPU index, Xid)
        self.note = ""  # why nothing is watched, if so
        self._halt = threading.Event()

    def stop(self) -> list[tuple[int, int]]:
        self._halt.set()
        self.join(timeout=2 * WAIT_MS / 1000)
        return list(self.events)

    def run(self) -> None:
        try:
            nvml: Any = importlib.import_module(self.module)
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - no NVML: nothing to watch
            self.note = f"no Xid watch: {exc}"
            return
        try:
            # nvmlEventSetWait_v2 from driver 450 / nvidia-ml-py 11.450; older: the v1.
            wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
            events = nvml.nvmlEventSetCreate()
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                with contextlib.suppress(nvml.NVMLError):  # NotSupported on some GPUs
                    nvml.nvmlDeviceRegisterEvents(handle, XID_CRITICAL, events)
            while not self._halt.is_set():
                try:
                    data = wait(events, WAIT_MS)
                except nvml.NVMLError:  # a timeout: nothing happened in WAIT_MS
                    continue
                index = -1
                with contextlib.suppress(Exception):  # the event names a handle
                    index = int(nvml.nvmlDeviceGetIndex(data.device))
                self.events.append((index, int(data.eventData)))
            nvml.nvmlEventSetFree(events)
        except Exception as exc:  # noqa: BLE001 - a diagnostic aid must never break the job
            self.note = f"Xid watch stopped: {exc}"
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()


def describe(events: list[tuple[int, int]]) -> str:
    return ", ".join(f"Xid {xid} on GPU {gpu}" for gpu, xid in events)
