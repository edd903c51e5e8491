"""The run stage: the command supervised, with the rounds that keep its outputs and
evidence up to date, the hang watchdog, and the duties after its end (the failure
record, the outputs' last sync, the log's upload, the evidence) in that order.

Every launch mode (:mod:`.modes`) ends here on the node that runs the command.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EXIT_DOWNLOAD, EXIT_HANG

if TYPE_CHECKING:
    from ..config.settings import Settings
    from ..log import Log
    from ..restart.evidence import Evidence
    from ..transfer.outputs import OutputSync
    from .watchdog import Watchdog


@dataclass(frozen=True, slots=True)
class Ready:
    """The command as it runs: its argv, environment and folder, the user's umask, the
    GPUs its node has (NVML is asked about them after a failure), what keeps its
    outputs and its attempt's evidence (None when off)."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: Path | None
    umask: int
    gpus: int
    sync: OutputSync | None
    evidence: Evidence | None


def supervise(ready: Ready, settings: Settings, log: Log,
              remote_stacks: Callable[[], str] | None = None,
              keep: frozenset[int] = frozenset()) -> int:
    """Runs the command to its end and returns the job's exit code (``keep``: sessions
    that are the mode's, not leftovers; ``remote_stacks``: the other nodes' stacks,
    for the watchdog's report)."""
    from ..transfer import outputs
    from .rounds import Rounds
    from .supervise import Supervisor, write_failure_record

    env, sync, evidence = ready.env, ready.sync, ready.evidence
    dog, stacks_dir = None, None
    if settings.run.hang_seconds > 0:
        dog, stacks_dir, env = _watchdog(settings, env, log, remote_stacks)
    # Every round: the outputs, then the log's evidence, so a node killed by SIGKILL
    # leaves both as they were at its last round.
    rounds = Rounds(settings.outputs.sync_interval,
                    [w for w in (sync.periodic if sync else None,
                                 evidence.periodic if evidence else None) if w is not None])
    rounds.start()
    try:
        outcome = Supervisor(
            ready.argv, env, ready.cwd, settings.run.grace_seconds, log, settings.run.log_file,
            ready.umask, dog, settings.preflight.nvml_module if ready.gpus else None,
            settings.run.log_max, settings.run.detached, keep).run()
    finally:
        drop_stack_hook(stacks_dir)
        rounds.stop()
    # The platform may repeat its SIGTERM while we save the outputs: finish the job's
    # last duties rather than die half-way (SIGKILL still ends everything).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    code = EXIT_HANG if outcome.hang else outcome.exit_code
    if code != 0:
        write_failure_record(settings.run.failure_file, outcome, settings.task_index, log,
                             exit_code=code)
    if sync is not None and not sync.final(code) and code == 0:
        code = EXIT_DOWNLOAD  # the command succeeded but its outputs did not reach OBS
    if settings.outputs.log_upload is not None:
        outputs.upload_log(settings.run.log_file, settings.outputs.log_upload,
                           settings.transfer, log)
    if evidence is not None:
        evidence.upload()
    said = outcome.describe() + (f"; exiting {code}" if code != outcome.exit_code else "")
    if outcome.exit_code == 0 and code != 0:
        said += ("; reason: upload (infrastructure): the command succeeded but its outputs "
                 "did not reach DLS_TRAIN_URL")
    elif code != 0:
        found = outcome.diagnosis()
        said += f"; reason: {found.reason} ({found.category}): {found.evidence}"
    log.info(said)
    return code


def _watchdog(settings: Settings, env: Mapping[str, str], log: Log,
              remote_stacks: Callable[[], str] | None = None,
              ) -> tuple[Watchdog, Path, dict[str, str]]:
    from . import watchdog

    stacks_dir, with_hook = stack_hook(settings, env)
    dog = watchdog.Watchdog(settings.run.hang_seconds, settings.run.hang_action,
                            settings.run.heartbeat_file, settings.outputs.output_dir,
                            stacks_dir, settings.run.failure_file.parent / "hang-stacks.txt",
                            log, stop_command=lambda: None, remote=remote_stacks)
    log.info(f"hang watchdog: {settings.run.hang_seconds:g} s without output, output-file "
             f"growth or a heartbeat ({settings.run.heartbeat_file}) is a hang; action "
             f"{settings.run.hang_action}")
    return dog, stacks_dir, with_hook


def stack_hook(settings: Settings, env: Mapping[str, str]) -> tuple[Path, dict[str, str]]:
    """A folder for the stack-dump hook of this node's commands, and their environment
    with the hook armed."""
    from . import watchdog

    stacks_dir = settings.job_dir / f".stacks-{os.getpid()}"
    stacks_dir.mkdir(parents=True, exist_ok=True)
    with_hook = dict(env)
    watchdog.environment(with_hook, stacks_dir, settings.run.heartbeat_file)
    return stacks_dir, with_hook


def drop_stack_hook(stacks_dir: Path | None) -> None:
    """Removes what :func:`stack_hook` made, once the commands it armed have ended."""
    if stacks_dir is not None:
        import shutil

        shutil.rmtree(stacks_dir, ignore_errors=True)
