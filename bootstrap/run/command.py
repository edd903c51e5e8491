"""The user command: which of the console's two forms it is, and the argv to exec.

``run_train.sh [python|python3|bash|sh|...] FILE PARAMS...`` is the *file* form: the
file is looked up in the code directory first, then in the current directory, and
an ``s3://``/``obs://`` URL inside the code directory maps to its downloaded copy.

``run_train.sh USER_COMMAND...`` is the *raw* form: argv is executed exactly as
given (the platform's shell already split the words; re-splitting would break
quoting). A single argument that holds shell syntax, as the console's one-string
form does (``"python a.py && python b.py"``), is the *shell* form: ``/bin/sh -c``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import location as loc
from ..errors import UsageError

# Where the platform has put code directories: its documented original layout and the
# ma-user one. A file named under either is looked for in this job's directory too.
JOB_DIR_LAYOUTS = (Path("/home/work/user-job-dir"), Path("/home/ma-user/modelarts/user-job-dir"))
_INTERPRETER = re.compile(r"^(python(\d+(\.\d+)?)?|bash|sh|dash|zsh|ksh)$")
# Characters that only mean something to a shell: their presence in a lone
# argument says the user typed a shell command line, not a program name.
_SHELL_SYNTAX = re.compile(r"[\s;&|<>`$(){}*?~]")


@dataclass(frozen=True, slots=True)
class Command:
    """The user's command as it will be executed: the argv, and its form (``file``: interpreter
    and script, ``raw``: a program, ``shell``: a line for ``sh -c``)."""

    argv: tuple[str, ...]
    form: str  # "file" | "raw" | "shell"

    @property
    def file(self) -> str | None:
        return self.argv[1] if self.form == "file" else None


def unwrap_entrypoint(argv: Sequence[str]) -> list[str]:
    """Drops a leading ``bash /home/work/run_train.sh`` (or ``sh ...``, or the script
    itself): with the bootstrap as the image's ENTRYPOINT, docker appends the console's
    run command to it, and the job must run once, not twice."""
    args = list(argv)
    if len(args) >= 2 and os.path.basename(args[0]) in ("bash", "sh") \
            and os.path.basename(args[1]) == "run_train.sh":
        return args[2:]
    if args and os.path.basename(args[0]) == "run_train.sh":
        return args[1:]
    return args


def parse(argv: Sequence[str]) -> Command:
    if not argv:
        raise UsageError("no command given; usage: run_train.sh [python|bash|...] FILE "
                         "[ARGS...]  or  run_train.sh COMMAND [ARGS...]; run_train.sh --help "
                         "says more")
    first = argv[0]
    if not first:
        raise UsageError("the command is an empty string; give a program or a file to run")
    if _INTERPRETER.match(os.path.basename(first)) and len(argv) >= 2 \
            and argv[1] and not argv[1].startswith("-"):
        return Command(tuple(argv), "file")
    if len(argv) == 1 and _SHELL_SYNTAX.search(first.strip()):
        return Command(tuple(argv), "shell")
    return Command(tuple(argv), "raw")


def resolve(command: Command, code_dir: Path | None, cwd: Path,
            code_location: loc.Location | None, job_dir: Path) -> tuple[str, ...]:
    """The argv to exec: the file form's file made absolute, the shell form wrapped."""
    if command.form == "shell":
        return ("/bin/sh", "-c", command.argv[0])
    if command.form == "raw":
        return command.argv
    given = command.argv[1]
    path = _find_file(given, code_dir, cwd, code_location, job_dir)
    return (command.argv[0], str(path), *command.argv[2:])


def _find_file(given: str, code_dir: Path | None, cwd: Path,
               code_location: loc.Location | None, job_dir: Path) -> Path:
    if "://" in given:
        relative = loc.key_inside(code_location, given) if code_location else None
        if relative is None or code_dir is None:
            where = code_location.url if code_location else "no DLS_APP_URL is set"
            raise UsageError(f"{given} is not inside the code directory ({where}); only files "
                             "of the downloaded code directory can be run by URL")
        candidates = [code_dir / relative]
    elif os.path.isabs(given):
        candidates = [Path(given), *_in_job_dir(Path(given), job_dir)]
    else:
        candidates = ([code_dir / given] if code_dir else []) + [cwd / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise UsageError(f"file {given!r} not found (looked in: {looked}); check the path in the "
                     "run command against the code directory")


def _in_job_dir(given: Path, job_dir: Path) -> list[Path]:
    """``given`` moved into this job's directory when it names a file of another layout.

    The platform's documentation writes run commands for its original layout
    (``python /home/work/user-job-dir/new/train.py``); an image with the ma-user layout
    (``MA_JOB_DIR=/home/ma-user/modelarts/user-job-dir``) or a custom BOOTSTRAP_HOME
    puts the code elsewhere, and the same command must still find its file.
    """
    for layout in JOB_DIR_LAYOUTS:
        if layout != job_dir and given.is_relative_to(layout):
            return [job_dir / given.relative_to(layout)]
    return []


def leaves_workers(argv: Sequence[str]) -> bool:
    """MindSpore's ``msrun`` without ``--join=True``: it returns 0 at once, leaving its
    workers in sessions of their own, so an exec'd job would end as they start. Such a
    run is supervised instead, where :mod:`.leftovers` waits for them."""
    import shlex

    words: list[str] = []
    for arg in argv:
        try:
            words += shlex.split(arg) if _SHELL_SYNTAX.search(arg) else [arg]
        except ValueError:
            words += arg.split()
    for i, word in enumerate(words):
        if os.path.basename(word) == "msrun" or (
                word == "mindspore.parallel.cluster.run" and i and words[i - 1] == "-m"):
            rest = words[i + 1:]
            for j, flag in enumerate(rest):
                value = flag.partition("=")[2] if flag.startswith("--join=") else (
                    rest[j + 1] if flag == "--join" and j + 1 < len(rest) else None)
                if value is not None:
                    return value.lower() != "true"
            return True
    return False
