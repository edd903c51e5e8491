"""Is this node fit to train? GPU and node checks, a short report, a verdict.

Each check yields a :class:`Finding`: ``ok``, ``warn`` or ``fail``. A problem is a
failure when its check is in the fatal set (``BOOTSTRAP_FATAL_CHECKS``, a comma list
of check names, ``all`` or ``none``; the default is marked below), else a warning.

=================  ==============================================  ========
check              problem                                          default
=================  ==============================================  ========
gpu.nvml           NVML present but broken (driver/library mismatch) fatal
gpu.required       no GPU while BOOTSTRAP_REQUIRE_GPU=1              fatal
gpu.count          GPU count != BOOTSTRAP_EXPECT_GPUS / MA_NUM_GPUS  fatal
gpu.ecc            volatile uncorrected ECC errors                   fatal
gpu.remap          row remapping failed                              fatal
gpu.busy           compute processes or most memory already in use   fatal
gpu.cuda           image CUDA newer than the driver, no compat libs  fatal
gpu.pending        retired pages / row remap pending (needs reset)   warning
gpu.pcie           PCIe link narrower than its maximum               warning
gpu.throttle       thermal or power-brake clock throttling           warning
node.disk          free space where the code lands < 32 GB           warning
node.cache         free space on /cache < 32 GB                      warning
node.shm           /dev/shm < 1 GB (DataLoader bus errors)           warning
node.memory        available memory < 2 GB                           warning
node.nofile        open-file limit < 8192                            warning
node.memlock       locked-memory limit not unlimited with IB         warning
=================  ==============================================  ========

Thresholds: ``BOOTSTRAP_MIN_DISK_GB``, ``BOOTSTRAP_MIN_CACHE_GB``,
``BOOTSTRAP_MIN_SHM_MB``, ``BOOTSTRAP_MIN_MEMORY_GB``, ``BOOTSTRAP_MIN_NOFILE``,
``BOOTSTRAP_BUSY_MEMORY_FRACTION``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import landing
from ..config.settings import GB, PREFLIGHT_CHECKS, Preflight
from . import gpu, resources
from .gpu import Inventory
from .resources import Resources

if TYPE_CHECKING:
    from typing import Any

MiB = 2**20


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict: ``ok``, ``warn`` (logged, the job goes on) or ``fail`` (the job
    stops before the command runs)."""

    check: str
    level: str  # "ok" | "warn" | "fail"
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    """The whole preflight of one node: the GPUs and node resources it saw, every finding, and
    how long it took; written as JSON next to the job's logs."""

    inventory: Inventory
    node: Resources
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(f.level == "fail" for f in self.findings)

    @property
    def gpu_count(self) -> int:
        return len(self.inventory.gpus)

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "fail"]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 4), "gpu_count": self.gpu_count,
                "inventory": asdict(self.inventory), "node": asdict(self.node),
                "findings": [asdict(f) for f in self.findings]}

    def lines(self) -> list[str]:
        inv = self.inventory
        out = []
        if not inv.nvml:
            out.append("preflight: no NVML library or driver: this node runs CPU-only")
        elif inv.error:
            out.append(f"preflight: {inv.error}")
        else:
            cuda = cuda_text(inv.cuda_driver) if inv.cuda_driver else "?"
            out.append(f"preflight: {len(inv.gpus)} GPU(s), driver {inv.driver}, "
                       f"CUDA {cuda} supported" + (f", {inv.hidden} hidden by "
                                                   "CUDA_VISIBLE_DEVICES" if inv.hidden else ""))
            for g in inv.gpus:
                pcie = (f"PCIe gen{g.pcie_gen} x{g.pcie_width}/x{g.pcie_width_max}"
                        if g.pcie_width is not None else "PCIe ?")
                extras = [pcie]
                if g.temperature is not None:
                    extras.append(f"{g.temperature} C")
                if g.power_watts is not None:
                    extras.append(f"{g.power_watts:.0f} W")
                if g.persistence is not None:
                    extras.append("persistence " + ("on" if g.persistence else "off"))
                out.append(f"  GPU{g.index} {g.name} {g.uuid[:12]}, {g.memory_total // MiB} MiB "
                           f"({g.memory_used // MiB} MiB used), " + ", ".join(extras))
        for f in self.findings:
            if f.level != "ok":
                out.append(f"  {'FAIL' if f.level == 'fail' else 'warn'} {f.check}: {f.message}")
        fails, warns = len(self.failures()), sum(f.level == "warn" for f in self.findings)
        verdict = f"FAILED ({fails} fatal)" if fails else "ok"
        out.append(f"preflight: {verdict}, {warns} warning(s), {self.seconds * 1000:.0f} ms")
        return out


def evaluate(inv: Inventory, node: Resources, pol: Preflight) -> list[Finding]:
    """The verdict on every check: pure, so every failure is easy to test."""
    found: list[Finding] = []

    def problem(check: str, message: str) -> None:
        found.append(Finding(check, "fail" if check in pol.fatal else "warn", message))

    gpus = inv.gpus
    if inv.error:
        problem("gpu.nvml", f"{inv.error}; the driver and the NVML library in the image do "
                            "not match: do not ship a driver in the image (the host mounts it)")
    if pol.require_gpu and not gpus:
        problem("gpu.required", "no GPU is visible but BOOTSTRAP_REQUIRE_GPU=1")
    if pol.expect_gpus is not None and len(gpus) != pol.expect_gpus and not inv.error:
        problem("gpu.count", f"{len(gpus)} GPU(s) visible, the job asked for "
                             f"{pol.expect_gpus} (BOOTSTRAP_EXPECT_GPUS / MA_NUM_GPUS)")
    for g in gpus:
        name = f"GPU{g.index}"
        if g.ecc_uncorrected:
            problem("gpu.ecc", f"{name} has {g.ecc_uncorrected} volatile uncorrected ECC "
                               "error(s): its memory is not trustworthy; drain this node")
        if g.remap_failed:
            problem("gpu.remap", f"{name} failed to remap a memory row: the GPU needs service")
        if g.retired_pending or g.remap_pending:
            problem("gpu.pending", f"{name} has retired pages or row remaps pending: reset "
                                   "the GPU when the node is idle")
        if g.processes or g.memory_used > pol.busy_fraction * g.memory_total:
            problem("gpu.busy", f"{name} is already in use ({g.processes or 0} compute "
                                f"process(es), {g.memory_used // MiB} MiB used): a previous "
                                "job left something running")
        if g.pcie_width and g.pcie_width_max and g.pcie_width < g.pcie_width_max:
            problem("gpu.pcie", f"{name} PCIe link is x{g.pcie_width} of x{g.pcie_width_max}: "
                                "transfers will be slow")
        if g.throttle:
            problem("gpu.throttle", f"{name} clocks are throttled: {', '.join(g.throttle)}")
    if gpus and node.cuda_image and inv.cuda_driver:
        image = _cuda_number(node.cuda_image)
        if image and image > inv.cuda_driver and not node.cuda_compat:
            problem("gpu.cuda", f"the image's CUDA {node.cuda_image} is newer than the driver "
                                f"supports ({cuda_text(inv.cuda_driver)}); "
                                "use an older CUDA base image or install the compat libraries")
    if node.job_dir_free is not None and node.job_dir_free < pol.min_disk:
        problem("node.disk", f"{node.job_dir_free / GB:.1f} GB free at {node.job_dir} "
                             f"(< {pol.min_disk / GB:g} GB)")
    if node.cache_free is not None and node.cache_free < pol.min_cache:
        problem("node.cache", f"{node.cache_free / GB:.1f} GB free on {node.cache_dir} "
                              f"(< {pol.min_cache / GB:g} GB)")
    if node.shm_total is not None and node.shm_total < pol.min_shm:
        problem("node.shm", f"/dev/shm is {node.shm_total // MiB} MiB (< {pol.min_shm // MiB} "
                            "MiB): PyTorch DataLoader workers die with a bus error; give the "
                            "container a larger --shm-size")
    if node.mem_available < pol.min_memory:
        problem("node.memory", f"{node.mem_available / GB:.1f} GB memory available "
                               f"(< {pol.min_memory / GB:g} GB)")
    if 0 <= node.nofile < pol.min_nofile:
        problem("node.nofile", f"open-file limit is {node.nofile} (< {pol.min_nofile}): data "
                               "loaders and NCCL open many; raise ulimit -n")
    if node.ib_device and node.memlock != -1:
        problem("node.memlock", f"locked-memory limit is {node.memlock} bytes with "
                                f"{node.ib_device} present: RDMA needs ulimit -l unlimited")
    checked = {f.check for f in found}
    found += [Finding(c, "ok", "") for c in sorted(PREFLIGHT_CHECKS - checked)]
    return found


def cuda_text(number: int) -> str:
    """NVML's 12040 as "12.4"."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _cuda_number(version: str) -> int | None:
    parts = version.split(".")
    try:
        return int(parts[0]) * 1000 + (int(parts[1]) * 10 if len(parts) > 1 else 0)
    except ValueError:
        return None


def run(pol: Preflight, job_dir: Path, ipoib_device: str) -> Report:
    """Inspects and judges this node, within ``pol.timeout`` seconds.

    NVML can block for minutes on a node whose GPU fell off the bus (where
    ``nvidia-smi`` hangs too). The inspection runs on a daemon thread; past the
    deadline the node fails ``gpu.nvml`` naming the call that never returned, and the
    job stops (the start barrier tells the other nodes) instead of holding them all.
    """

    started = time.monotonic()
    calls: list[str] = []
    found: list[Inventory] = []
    worker = threading.Thread(target=lambda: found.append(gpu.inspect(pol, calls)),
                              daemon=True, name="nvml")
    worker.start()
    worker.join(pol.timeout)
    if found:
        inv = found[0]
    else:
        stuck = calls[-1] if calls else "loading the NVML library"
        inv = Inventory(nvml=True, error=f"NVML did not answer within {pol.timeout:g} s "
                                         f"(BOOTSTRAP_PREFLIGHT_TIMEOUT): {stuck} never "
                                         "returned; the GPU or its driver is hung")
    state = resources.measure(pol, job_dir, ipoib_device)
    findings = evaluate(inv, state, pol)
    return Report(inv, state, tuple(findings), time.monotonic() - started)


def write(report: Report, job_dir: Path) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "preflight.json"
    landing.write_text(path, json.dumps(report.to_json(), indent=2) + "\n")
    return path
