"""``bootstrap-check --image``: what the platform's image review checks, and what makes
jobs fail on their first run, checked inside the image itself.

* the default user is not root, ideally uid 1101 (old contract) or 1000 (new);
* ``/home/work/run_train.sh`` exists, is readable and bash is there to run it;
* a Python that imports the bootstrap (``BOOTSTRAP_PYTHON``, else python3), and which
  one it is: the self-contained runtime or the image's own, its transfer engine, and the
  image's glibc against the runtime's floor (``<runtime>/glibc-floor``);
* no setuid-root file beyond those the base image had (recorded at build time in
  ``$BOOTSTRAP_IMAGE_META/base-setuid.txt``, default /opt/bootstrap-meta);
* the image's CUDA is not newer than the driver (from the GPU preflight, with a GPU).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from ..config.settings import Preflight
from . import libc
from .preflight import Finding, Report

PLATFORM_UIDS = (1101, 1000)
SKIP = ("/proc", "/sys", "/dev", "/run")


def setuid_root_files(root: str = "/") -> list[str]:
    found = []
    root_dev = os.lstat(root).st_dev
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in SKIP
                   and os.lstat(os.path.join(folder, d)).st_dev == root_dev]
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID and st.st_uid == 0:
                found.append(path)
    return sorted(found)


def runtime_facts(prefix: Path | None = None) -> list[Finding]:
    """What the bootstrap itself runs on (this process: ``bootstrap-check`` is started
    by the bootstrap's Python): which Python, which engine, which glibc."""
    import platform

    prefix = prefix or Path(sys.prefix)
    floor_file = prefix / "glibc-floor"
    own = floor_file.is_file()
    what = "the self-contained runtime" if own else "the image's own Python"
    out = [Finding("image.runtime", "ok",
                   f"{what}: Python {platform.python_version()} in {prefix}")]
    try:
        import obstore
    except ImportError:
        out.append(Finding("image.engine", "ok", "boto3 (obstore, the native core, is not "
                                                 "installed for this Python)"))
    else:
        out.append(Finding("image.engine", "ok", f"native (obstore {obstore.__version__}), "
                                                 "boto3 as the fallback"))
    have = libc.this_machine()
    if not own:
        out.append(Finding("image.glibc", "ok", f"glibc {have or '(none: another C library)'}"))
        return out
    floor = floor_file.read_text().strip()
    below = have is None or tuple(map(int, have.split("."))) < tuple(map(int, floor.split(".")))
    out.append(Finding("image.glibc", "fail" if below else "ok",
                       f"glibc {have or '(none)'}; the runtime needs {floor} or newer"))
    return out


def check(pol: Preflight, preflight_report: Report) -> list[Finding]:
    out: list[Finding] = []
    uid = os.getuid()
    if uid == 0:
        out.append(Finding("image.user", "fail", "the image runs as root; set a non-root USER "
                                                 "(work 1101 or ma-user 1000)"))
    elif uid not in PLATFORM_UIDS:
        out.append(Finding("image.user", "warn", f"uid {uid} is neither 1101 (work) nor 1000 "
                                                 "(ma-user), which the platform expects"))
    else:
        out.append(Finding("image.user", "ok", f"uid {uid}"))
    script = pol.run_train
    if not script.is_file() or not os.access(script, os.R_OK):
        out.append(Finding("image.run_train", "fail", f"{script} is missing or unreadable: the "
                                                      "console's run command needs it"))
    elif shutil.which("bash") is None:
        out.append(Finding("image.run_train", "fail", "bash is not installed: "
                                                      "`bash /home/work/run_train.sh` fails"))
    else:
        out.append(Finding("image.run_train", "ok", str(script)))
    python = pol.image_python or shutil.which("python3") or "python3"
    try:
        ok = subprocess.run([python, "-c", "import bootstrap"], capture_output=True,
                            timeout=60).returncode == 0
    except OSError:
        ok = False
    out.append(Finding("image.python", "ok" if ok else "fail",
                       python if ok else f"{python} cannot import the bootstrap"))
    out.extend(runtime_facts())
    meta = pol.image_meta / "base-setuid.txt"
    try:
        base = set(meta.read_text().split())
    except OSError:
        out.append(Finding("image.setuid", "warn", f"no record of the base's setuid files "
                                                   f"({meta}); cannot tell what was added"))
    else:
        added = [p for p in setuid_root_files() if p not in base]
        out.append(Finding("image.setuid", "fail" if added else "ok",
                           f"setuid-root files added: {', '.join(added[:5])}" if added
                           else f"{len(base)} from the base, none added"))
    cuda = [f for f in preflight_report.findings
            if f.check == "gpu.cuda" and preflight_report.gpu_count]
    out.extend(Finding("image.cuda", f.level, f.message or "not newer than the driver")
               for f in cuda)
    return out
