"""Install the code directory's Python requirements before the command.

The platform's convention is ``pip-requirements.txt`` in the code directory; a plain
``requirements.txt`` is installed only with ``BOOTSTRAP_PIP_INSTALL=1`` (many repos
carry one that is not meant for the training image). ``BOOTSTRAP_PIP_INSTALL=0``
turns installing off. pip is the image's own (the Python that will run the
command), and honours ``PIP_INDEX_URL``, else the platform's ``MA_PIP_URL``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DependencyInstallFailed
from ..log import Log
from .launch import on_path

if TYPE_CHECKING:

    from ..config.settings import PipInstall


def requirements_file(code_dir: Path, mode: PipInstall) -> Path | None:
    """The file to install: pip-requirements.txt, or with mode "on" requirements.txt
    too; None when there is none or installing is off."""
    if mode == "off":
        return None
    names = ["pip-requirements.txt"] + (["requirements.txt"] if mode == "on" else [])
    for name in names:
        if (code_dir / name).is_file():
            return code_dir / name
    return None


def interpreter(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The Python that will run the command: the file form's interpreter when it is
    a Python, else python3/python on the job's PATH, else the bootstrap's own."""
    first = os.path.basename(argv[0]) if argv else ""
    if first.startswith("python") and len(argv) > 1:
        found = on_path(argv[0], env, os.X_OK)
        if found:
            return found
    for name in ("python3", "python"):
        found = on_path(name, env, os.X_OK)
        if found:
            return found
    return sys.executable


def install(requirements: Path, python: str, env: Mapping[str, str], log: Log) -> None:
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r",
           str(requirements)]
    if not env.get("PIP_INDEX_URL") and env.get("MA_PIP_URL"):
        cmd += ["--index-url", env["MA_PIP_URL"]]
    log.info(f"pip: installing {requirements.name} with {python}")
    import subprocess  # here: only a job that installs pays for it (~3 ms)

    proc = subprocess.run(cmd, env=dict(env), cwd=requirements.parent, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        reason = errors[-1] if errors else f"pip exited {proc.returncode}"
        raise DependencyInstallFailed(f"pip install -r {requirements.name} failed: {reason}; "
                                      "fix the file, or set BOOTSTRAP_PIP_INSTALL=0")
