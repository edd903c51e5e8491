"""The whole story of a job's start, stage by stage.

settings -> command -> fetch -> launch. Each stage is a module named for its
concern; this file only orders them, times them and hands values between them.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional

from . import command as command_mod
from . import launch
from . import location as loc
from . import settings as settings_mod
from .errors import Terminated
from .log import Log, Redactor

# Signals that stop the bootstrap itself before the command runs. A handler that
# raises turns them into an exception, so every stage's cleanup (temporary files
# of a half-done download) runs on the way out. exec resets them to default.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated(signum)


@contextmanager
def timed(log: Log, name: str) -> Iterator[dict[str, str]]:
    """Logs ``stage NAME: N ms (detail)`` when the block ends; the block may set detail."""
    info: dict[str, str] = {"detail": ""}
    started = time.monotonic()
    yield info
    log.stage(name, time.monotonic() - started, info["detail"])


def run(argv: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_terminated)
    settings = settings_mod.load(environ)
    log = Log(Redactor(environ), settings.log_format)
    command = command_mod.parse(argv)
    location = loc.parse(settings.app_url) if settings.app_url else None

    log.info(f"user: uid={os.getuid()} gid={os.getgid()} pwd: {os.getcwd()}")
    log.info(f"app url: {settings.app_url or '(none: running from the current directory)'}")
    log.info(f"command: {shlex.join(log.redact.argv(argv))}")

    code_dir: Optional[Path] = None
    if location is not None:
        code_dir = loc.destination(settings.job_dir, location)
        from . import fetch  # boto3 and tenacity load only when there is something to fetch

        with timed(log, "fetch") as info:
            stats = fetch.fetch(location, code_dir, settings, environ, log)
            info["detail"] = f"{stats.summary()} -> {code_dir}"

    final_argv = command_mod.resolve(command, code_dir, Path.cwd(), location)
    env = launch.user_environment(environ, settings.home, settings.job_dir, code_dir, {})
    log.info(f"exec: {shlex.join(log.redact.argv(final_argv))}"
             + (f" (in {code_dir})" if code_dir else ""))
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    launch.exec_command(final_argv, env, code_dir)
