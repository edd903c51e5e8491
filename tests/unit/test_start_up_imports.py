"""Start-up is budgeted (README, bench/README.md): the job module loads the stages it
always runs and nothing heavy. A stage a job may not run (fetch, staging, the relay,
supervision) and every heavy library are imported where they are used, and this test
fails the day ``import bootstrap.job`` pulls one of them in (hoisting them all measured
+57 ms on every job's start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("obstore", "boto3", "botocore", "asyncio", "ssl", "http.client", "psutil", "pynvml",
         "concurrent.futures", "urllib3", "tenacity", "xml.etree.ElementTree", "hashlib",
         "socket", "subprocess", "ctypes",
         # shutil pulls in three compression modules on every start (measured, 3.11);
         # typing and dataclasses are the project's ordinary tools and are not listed.
         "shutil")
LAZY_STAGES = ("bootstrap.transfer.fetch", "bootstrap.transfer.source",
               "bootstrap.transfer.download", "bootstrap.transfer.plan",
               "bootstrap.transfer.ranges",
               "bootstrap.relay.protocol", "bootstrap.relay.server", "bootstrap.relay.client",
               "bootstrap.relay.fetch", "bootstrap.data.staging",
               "bootstrap.transfer.upload", "bootstrap.run.supervise", "bootstrap.run.watchdog",
               "bootstrap.cluster.barrier", "bootstrap.cluster.network",
               "bootstrap.storage.native", "bootstrap.storage.boto", "bootstrap.mpi.agent",
               "bootstrap.mpi.channel", "bootstrap.restart.attempts", "bootstrap.restart.restore",
               "bootstrap.restart.evidence", "bootstrap.rayjob.plan", "bootstrap.rayjob.cluster",
               "bootstrap.run.leftovers", "bootstrap.mpi.mode", "bootstrap.rayjob.mode",
               "psutil", "cryptography")


def loaded_by(module: str) -> list[str]:
    code = (f"import json, sys\nimport {module}\n"
            f"print(json.dumps([m for m in {list(HEAVY + LAZY_STAGES)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    found: list[str] = json.loads(out)
    return found


def test_the_job_module_loads_nothing_heavy_and_no_optional_stage() -> None:
    assert loaded_by("bootstrap.job") == []


def test_the_entrypoint_module_loads_nothing_heavy() -> None:
    assert loaded_by("bootstrap.__main__") == []


def test_a_job_without_a_download_loads_nothing_heavy_up_to_its_exec(tmp_path: Path) -> None:
    """The whole no-download job, not only its imports: settings, preflight (on a node
    without an NVIDIA driver, no ctypes: two stat calls answer), the command's checks,
    up to the execve that replaces the bootstrap."""
    from bootstrap.node import gpu

    on_gpu_node = any(os.path.exists(node) for node in gpu.DRIVER_NODES)
    code = (f"import json, os, sys\n"
            f"def shown(*args):\n"
            f"    names = {list(HEAVY + LAZY_STAGES)!r}\n"
            f"    print(json.dumps([m for m in names if m in sys.modules]), flush=True)\n"
            f"    os._exit(0)\n"
            f"os.execve = shown\n"
            f"from bootstrap.__main__ import job_main\n"
            f"sys.argv = ['run_train.sh', 'true']\n"
            f"job_main()\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DLS_", "BATCH_", "VC_", "MA_", "BOOTSTRAP_"))}
    env["BOOTSTRAP_HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "exec: true" in r.stderr  # the job got as far as its exec
    loaded = json.loads(r.stdout)
    # A node with a driver loads the bindings, as it must to read its GPUs.
    allowed = {"ctypes", "pynvml"} if on_gpu_node else set()
    assert [m for m in loaded if m not in allowed] == []


# Where a module may import a sibling of its own package inside a function: the
# entry points, the job's story and its stages (the cluster's, the run's, the launch
# modes') load the parts a run needs, and the store opens the one backend a job uses.
# Anywhere else a sibling is imported at the top.
LAZY_SIBLINGS: dict[str, frozenset[str]] = {
    "bootstrap/__main__.py": frozenset({"job", "commands", "config", "version"}),
    "bootstrap/job.py": frozenset({"run", "transfer", "relay", "data", "cluster", "mpi",
                                   "restart", "rayjob"}),
    "bootstrap/cluster/stage.py": frozenset({"peers", "ipoib", "barrier", "network"}),
    "bootstrap/run/stage.py": frozenset({"supervise", "watchdog", "rounds"}),
    "bootstrap/mpi/mode.py": frozenset({"agent", "install", "launcher"}),
    "bootstrap/rayjob/mode.py": frozenset({"cluster"}),
    "bootstrap/storage/base.py": frozenset({"native", "boto"}),
}


def test_within_a_package_siblings_are_imported_at_the_top() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "bootstrap"
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        allowed = LAZY_SIBLINGS.get(rel, frozenset())
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    sibling = (node.module or node.names[0].name).split(".")[0]
                    if sibling not in allowed:
                        found.append(f"{rel}:{node.lineno} imports .{sibling}")
    assert found == [], found
