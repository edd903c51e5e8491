"""Which Python installs a code directory's requirements (``run/deps.interpreter``): the
command's own when its file form names one, else python3/python on the job's PATH, else
the bootstrap's; found by the same PATH search the launcher uses (not ``shutil.which``,
whose compression modules every downloading job would import)."""

from __future__ import annotations

import sys
from pathlib import Path

from bootstrap.run.deps import interpreter


def executable(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_commands_python_then_python3_on_path_then_the_bootstraps(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    own = executable(first, "python3.9")
    py3 = executable(second, "python3")
    (first / "python3").mkdir()  # a folder of that name is not a program: skipped
    env = {"PATH": f"{first}:{second}"}
    assert interpreter(["python3.9", "train.py"], env) == str(own)
    assert interpreter([str(own), "train.py"], env) == str(own)  # a path is taken as it is
    assert interpreter(["python3.12", "train.py"], env) == str(py3)  # not on PATH
    assert interpreter(["bash", "run.sh"], env) == str(py3)  # not a Python
    assert interpreter(["python"], env) == str(py3)  # no file: not the file form
    assert interpreter(["bash", "run.sh"], {"PATH": str(tmp_path / "none")}) == sys.executable
