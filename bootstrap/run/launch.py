"""The last stage: the user command's environment, working directory and exec.

What the user process gets (the original contract, plus what the bootstrap adds):

* ``DLS_USER_HOME_DIR`` (BOOTSTRAP_HOME) and ``DLS_USER_JOB_DIR`` (its user-job-dir);
* ``PYTHONPATH`` = code dir : job dir : the inherited PYTHONPATH;
* ``PYTHONUNBUFFERED=1``, so print() reaches the platform's log view at once;
* ``BOOTSTRAP_CODE_DIR`` = where the code landed, and the working directory is that
  folder (without DLS_APP_URL: the current directory, unchanged);
* ``TMPDIR=/cache`` where the node has the platform's NVMe SSD, unless TMPDIR is set;
* ``BOOTSTRAP_ACTIVE=1``, so a ``run_train.sh`` the command calls again runs its own
  command directly instead of preparing the job a second time;
* every other variable, ``DLS_*`` and ``BATCH_*`` included, unchanged.

The bootstrap then *replaces itself* with the command (execve), so the exit code
and the signals are the command's own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.settings import ACTIVE_MARKER
from ..errors import CommandNotExecutable, CommandNotFound

if TYPE_CHECKING:
    from typing import NoReturn


def user_environment(env: Mapping[str, str], home: Path, job_dir: Path, cache_dir: Path,
                     code_dir: Path | None, exports: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: ours passed through (but for the job secret and, as
    the original script did, ``KUBERNETES_*``), plus the original script's variables,
    the code directory first on PYTHONPATH, TMPDIR on the node's SSD when the user set
    none, the nested-run marker and the cluster's exports."""
    out = dict(env)
    out["DLS_USER_HOME_DIR"] = str(home)
    out["DLS_USER_JOB_DIR"] = str(job_dir)
    paths = [str(code_dir)] if code_dir else []
    paths.append(str(job_dir))
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    out["PYTHONUNBUFFERED"] = "1"
    if code_dir:
        out["BOOTSTRAP_CODE_DIR"] = str(code_dir)
    if "TMPDIR" not in env and cache_dir.is_dir() and os.access(cache_dir, os.W_OK | os.X_OK):
        out["TMPDIR"] = str(cache_dir)
    out[ACTIVE_MARKER] = "1"
    out.pop("BOOTSTRAP_JOB_SECRET", None)  # the bootstrap's, not the command's
    # The original run_train.sh unset the pod's KUBERNETES_* service variables: a job has
    # no business with the cluster's API server, and they wake detectors that would try
    # it (JAX's Kubernetes cluster, with the kubernetes package installed).
    for name in [k for k in out if k.startswith("KUBERNETES_")]:
        del out[name]
    out.update(exports)
    return out


def on_path(name: str, env: Mapping[str, str], mode: int) -> str | None:
    """The first file called ``name`` on the command's PATH that ``mode`` allows (a name
    with a ``/`` is that file alone): ``shutil.which``'s search, without importing shutil
    (its compression modules cost ~13 ms of every job's start-up, measured)."""
    if "/" in name:
        return name if os.access(name, mode) and not os.path.isdir(name) else None
    for folder in os.get_exec_path(dict(env)):
        candidate = os.path.join(folder, name)
        if os.access(candidate, mode) and not os.path.isdir(candidate):
            return candidate
    return None


def find_program(name: str, env: Mapping[str, str]) -> str:
    """Resolves argv[0] like a shell would, with the shell's exit codes for failures."""
    if "/" in name:
        path: str | None = name
        if not os.path.exists(name):
            path = None
    else:
        path = on_path(name, env, os.X_OK)
        if path is None and on_path(name, env, os.F_OK):
            raise CommandNotExecutable(f"{name}: found on PATH but not executable; "
                                       "chmod +x it or run it through its interpreter")
    if path is None:
        raise CommandNotFound(f"{name}: command not found; check the run command and PATH "
                              "(or install it in the image)")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CommandNotExecutable(f"{name}: not an executable file; chmod +x it or run it "
                                   "through its interpreter (e.g. bash FILE)")
    return path


def exec_command(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 umask: int | None = None) -> NoReturn:
    program = find_program(argv[0], env)
    if cwd is not None:
        os.chdir(cwd)
    if umask is not None:
        os.umask(umask)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, list(argv), dict(env))
    except PermissionError:
        raise CommandNotExecutable(f"{argv[0]}: permission denied") from None
    except OSError as exc:  # ENOEXEC, a bad interpreter line, ...
        raise CommandNotExecutable(f"{argv[0]}: cannot be executed: {exc.strerror}") from None
