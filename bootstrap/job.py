"""The whole story of a job's start, stage by stage.

settings -> command -> mode -> (fetch | preflight | data | restore | peers) -> barrier
-> topology and network -> the mode's exports -> deps -> exec, or run (supervised), or
serve node 0 (the mode's other nodes).

Each stage lives in a package named for its concern (``config``, ``transfer``,
``relay``, ``data``, ``node``, ``restart``, ``cluster``, ``run``; the launch modes in
``run.modes``, ``mpi`` and ``rayjob``); this file only orders them, times them and hands
values between them. Everything that can be checked without I/O (the settings, the
command, the cluster description, the endpoint, the mode's ports and secret) is checked
first, so a typo in the job spec fails in milliseconds, not after a download.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster import stage as cluster_stage
from .cluster import topology
from .config import location
from .config.settings import ACTIVE_MARKER, Settings, load, nearest_variable
from .errors import STOP_SIGNALS, BootstrapError, Terminated
from .log import Log, Redactor
from .node import preflight
from .restart import Attempt
from .run import command, launch
from .run.modes import Mode
from .run.stage import Ready
from .version import describe

if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .data.staging import Staged
    from .relay import protocol as relay_protocol


# STOP_SIGNALS: a handler that raises turns them into an exception, so every stage's
# cleanup (temporary files of a half-done download) runs on the way out. exec resets
# them to default.


EVIDENCE_WAIT = 30.0  # seconds a failed start waits to learn its attempt's number


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated(signum)


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Runs the job; execs the command (no return) or returns the supervised exit code."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_terminated)
    # What the bootstrap writes (code, reports, manifests) is never world-writable, even
    # in a container started with umask 0; the command gets the umask it was given.
    user_umask = os.umask(0o022)
    os.umask(user_umask | 0o022)
    settings = load(environ)
    log = Log(Redactor(environ), settings.log_format)
    log.info(describe(settings.transfer.backend))
    cmd = command.parse(command.unwrap_entrypoint(argv))
    if settings.run.nested:
        # A bootstrap already prepared this job (ENTRYPOINT, then a script that calls
        # run_train.sh again): download, checks and barrier must not run twice.
        final_argv = command.resolve(cmd, None, Path.cwd(), None, settings.job_dir)
        log.info(f"already inside a bootstrap job ({ACTIVE_MARKER}=1): exec "
                 f"{shlex.join(log.redact.argv(final_argv))}")
        _default_signals()
        launch.exec_command(final_argv, environ, None, user_umask)
    attempt = Attempt()
    try:
        return _start(cmd, argv, environ, settings, log, user_umask, attempt)
    except BootstrapError as exc:
        # Stopped before the command ran: the record says so, as it would after a run,
        # so that one reader finds every node's end (the culprit of a multi-node stop),
        # and the attempt's evidence keeps it once this container is gone.
        from .run import supervise

        supervise.write_start_failure(settings.run.failure_file, exc, settings.task_index,
                                      log)
        evidence = attempt.evidence_when_known(EVIDENCE_WAIT)
        if evidence is not None:
            evidence.upload()
        raise


def _start(cmd: command.Command, argv: Sequence[str], environ: Mapping[str, str],
           settings: Settings, log: Log, user_umask: int, attempt: Attempt) -> int:
    """Everything after the settings and the command's form are known: the stages,
    then exec or supervise."""
    code_url = settings.code
    mode = _mode(settings, environ, log)
    _say_what_runs(settings, argv, log)

    code_dir = location.destination(settings.job_dir, code_url) if code_url else None
    report, staged, data_failure, addresses = _node_stages(settings, log, attempt, code_dir)

    mode.before_barrier(addresses)
    try:
        topo = cluster_stage.form(settings, log, report, addresses, data_failure,
                                  force_barrier=mode.force_barrier)
        exports: dict[str, str] = {}
        if topo is not None:
            files = topology.write_files(topo, settings.job_dir)
            exports = topology.without_user_overrides(topo.exports(files), environ)
            exports.update(topology.without_user_overrides(mode.exports(topo, addresses),
                                                           environ))
        if staged is not None:
            exports.update(staged.exports())
        exports["BOOTSTRAP_ATTEMPT"] = str(attempt.number)

        final_argv = command.resolve(cmd, code_dir, Path.cwd(), code_url, settings.job_dir)
        env = launch.user_environment(environ, settings.home, settings.job_dir,
                                      settings.run.cache_dir, code_dir, exports)
        mode.environment(env)
        if code_dir is not None:
            _deps_stage(code_dir, final_argv, env, settings, log)
    except BaseException:
        mode.teardown()
        raise
    if mode.serves:
        return mode.serve(env, code_dir, attempt.evidence)

    sync = None
    if settings.outputs.output_dir is not None:
        from .transfer import outputs

        sync = outputs.OutputSync(settings.outputs, settings.transfer, _sync_state(settings),
                                  log, rank=settings.cluster.layout.rank,
                                  attempt=attempt.number)
    launch.find_program(final_argv[0], env)  # 127/126 now, while we can still say why
    where = f" (in {code_dir})" if code_dir else ""
    if not _supervises(settings, mode, sync is not None, attempt, final_argv):
        log.info(f"exec: {shlex.join(log.redact.argv(final_argv))}{where}")
        _default_signals()
        launch.exec_command(final_argv, env, code_dir, user_umask)
    log.info(f"run (supervised, pid {os.getpid()}): {shlex.join(log.redact.argv(final_argv))}"
             f"{where}; log: {settings.run.log_file}")
    return mode.run(Ready(final_argv, env, code_dir, user_umask, report.gpu_count, sync,
                          attempt.evidence))


def _node_stages(settings: Settings, log: Log, attempt: Attempt, code_dir: Path | None,
                 ) -> tuple[preflight.Report, Staged | None, BootstrapError | None,
                            dict[str, str]]:
    """The stages each node runs on its own, overlapped so that start-up costs the
    longest of them, not their sum: the code download here (where signals land), the
    preflight, the data staging, the restore and the peers' DNS in threads. A failure in
    any of them stops the job (the peers' wait at once; a half-done staging is left to
    the next run, which sweeps it), except a staging failure on several nodes: it is
    returned, to be told at the barrier."""
    code_url, cluster = settings.code, settings.cluster.layout
    stop = threading.Event()
    checked = _Background(_preflight_stage, settings, log)
    resolved = (_Background(cluster_stage.resolve_peers, settings, log, stop)
                if cluster.size > 1 else None)
    staging = _Background(_staging_stage, settings, log) if settings.staging.enabled else None
    resumed = None
    if settings.outputs.train_url is not None:
        attempt.asked = True
        resumed = _Background(_resume_stage, settings, log, attempt)
    else:
        log.info("attempt: 1 (no object-store DLS_TRAIN_URL to count this job's attempts in)")
    try:
        if code_url is not None and code_dir is not None:
            _fetch_stage(code_url, code_dir, settings, log)
        report: preflight.Report = checked.result()
        staged, data_failure = _staged(staging, cluster.size)
        addresses: dict[str, str] = resolved.result() if resolved is not None else {}
        if resumed is not None:
            resumed.result()
    except BaseException:
        stop.set()
        for stage in (checked, resolved):  # staging is left to end with the process
            if stage is not None:
                stage.join()
        raise
    return report, staged, data_failure, addresses


def _mode(settings: Settings, environ: Mapping[str, str], log: Log) -> Mode:
    """The job's launch mode (BOOTSTRAP_LAUNCH), its plan checked before anything runs
    (exit 2 on a port that collides, a missing secret, a package the mode needs)."""
    if settings.launch.mode == "ray":
        from .rayjob.mode import Ray

        return Ray(settings, environ, log)
    if settings.launch.agents:
        from .mpi.mode import Mpi

        return Mpi(settings, log)
    return Mode(settings, log)


def _say_what_runs(settings: Settings, argv: Sequence[str], log: Log) -> None:
    """Who runs what, from where, on which node: the first lines a user reads."""
    code_url, cluster = settings.code, settings.cluster.layout
    log.info(f"user: uid={os.getuid()} gid={os.getgid()} pwd: {os.getcwd()}")
    log.info("app url: " + (code_url.url if code_url else
                            "(none: running from the current directory)"))
    log.info(f"command: {shlex.join(log.redact.argv(argv))}")
    for name in settings.ignored:
        meant = nearest_variable(name)
        log.warn(f"{name} is set but this bootstrap reads no such variable: it has no effect"
                 + (f" (did you mean {meant}?)" if meant else " (README.md lists them)"))
    if cluster.size > 1:
        log.info(f"cluster: node {cluster.rank} of {cluster.size} ({cluster.source} contract), "
                 f"master {cluster.master.host}:{cluster.master.port}")


def _supervises(settings: Settings, mode: Mode, syncs: bool, attempt: Attempt,
                argv: Sequence[str]) -> bool:
    """BOOTSTRAP_SUPERVISE when set (settings: the watchdog forces it); else as PID 1
    (someone must reap), and whenever work is left after the command's end: its
    outputs, its log or evidence to upload, the mode's end, detached workers."""
    if settings.run.supervise is not None:
        return settings.run.supervise
    return (os.getpid() == 1 or syncs or mode.supervises
            or settings.outputs.log_upload is not None
            or attempt.evidence is not None or command.leaves_workers(argv))


def _default_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _fetch_stage(code_url: location.Location, code_dir: Path, settings: Settings,
                 log: Log) -> None:
    # Loaded only when there is something to fetch (the S3 client; the relay's plan
    # with its proofs' crypto only on several nodes, its server and client only when
    # peers share the fetch).
    from .transfer import fetch

    with log.timed("fetch") as t:
        peers = _relay_plan(settings, code_url, "relay-code", log)
        if peers is not None:
            from .relay import fetch as relay_fetch

            stats = relay_fetch.fetch_with_peers(code_url, code_dir, settings.transfer, peers,
                                                 log)
        else:
            stats = fetch.fetch(code_url, code_dir, settings.transfer, log)
        t.detail = f"{stats.summary()} -> {code_dir}"
        t.fields = stats.fields()


def _sync_state(settings: Settings) -> Path:
    return settings.job_dir / ".output-sync-state.json"


def _resume_stage(settings: Settings, log: Log, attempt: Attempt) -> None:
    """Which attempt this is and where its evidence goes (``attempt``, as soon as
    known), then the earlier attempts' outputs restored (see :mod:`.restart`). Without
    an output folder a store that cannot be asked costs the evidence, not the job."""
    from .restart import attempts, evidence, restore

    outputs, rank = settings.outputs, settings.cluster.layout.rank
    train = outputs.train_url
    assert train is not None  # the stage runs only then
    try:
        try:
            attempt.number = attempts.begin(train, rank, outputs.job_id, settings.transfer,
                                            log)
        except BootstrapError as exc:
            if outputs.output_dir is not None:
                raise
            log.warn(f"attempt: cannot count this job's attempts under {train.url} "
                     f"({exc.message}): BOOTSTRAP_ATTEMPT=1, and no evidence is uploaded")
            return
        if outputs.evidence:
            attempt.evidence = evidence.for_attempt(settings, rank, attempt.number, log)
    finally:
        attempt.known.set()
    if outputs.output_dir is None:
        return
    with log.timed("restore") as t:
        peers = _relay_plan(settings, train, "relay-outputs", log)
        restored = restore.restore(outputs, settings.transfer, rank, _sync_state(settings),
                                   peers, log)
        t.detail = f"{restored.summary()} -> {outputs.output_dir}"
        t.fields = restored.fields()


def _staging_stage(settings: Settings, log: Log) -> Staged:
    from .data import staging

    cluster = settings.cluster.layout
    with log.timed("data") as t:
        assert settings.staging.source is not None  # enabled
        peers = _relay_plan(settings, settings.staging.source, "relay-data", log)  # own key, ports
        staged = staging.stage(settings.staging, settings.transfer, cluster.rank, cluster.size,
                               log, peers)
        how = "reused, nothing fetched" if staged.reused else staged.stats.summary()
        t.detail = f"{how} -> {staged.path}"
        t.fields = {**staged.stats.fields(), "reused": staged.reused}
    return staged


def _relay_plan(settings: Settings, url: location.Location, protocol: str,
                log: Log) -> relay_protocol.Peers | None:
    """The relay's plan for one tree; a job on one node has no peers to ask, and skips
    the relay's module (its proofs' crypto: 6M instructions, a few ms, of a downloading
    job's start)."""
    if settings.cluster.layout.size == 1:
        return None
    from .relay import protocol as relay

    return relay.plan(settings, url, protocol, log)


def _staged(staging: _Background | None,
            nodes: int) -> tuple[Staged | None, BootstrapError | None]:
    """The staged data, or (on a multi-node job) the failure to report at the barrier
    before stopping, so the other nodes stop at once instead of waiting out their
    deadline."""
    if staging is None:
        return None, None
    try:
        return staging.result(), None
    except BootstrapError as exc:
        if nodes == 1:
            raise
        return None, exc


def _deps_stage(code_dir: Path, argv: Sequence[str], env: Mapping[str, str],
                settings: Settings, log: Log) -> None:
    from .run import deps

    requirements = deps.requirements_file(code_dir, settings.run.pip_install)
    if requirements is not None:
        with log.timed("deps") as t:
            deps.install(requirements, deps.interpreter(argv, env), env, log)
            t.detail = f"{requirements.name} installed"


class _Background(threading.Thread):
    """A stage running beside the download; ``result()`` returns its value or raises
    its exception in the caller's thread. (concurrent.futures would cost ~6 ms of
    imports on every job's start-up.)"""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True, name=f"stage-{fn.__name__}")
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> Any:
        while self.is_alive():
            self.join(0.1)  # short waits: a signal still reaches the main thread
        if self._error is not None:
            raise self._error
        return self._value


def _preflight_stage(settings: Settings, log: Log) -> preflight.Report:
    with log.timed("preflight") as t:
        report = preflight.run(settings.preflight, settings.job_dir,
                               settings.cluster.ipoib_device)
        preflight.write(report, settings.job_dir)
        for line in report.lines():
            log.info(line)
        t.detail = f"{report.gpu_count} GPU(s), " + ("ok" if report.ok else "FAILED")
    return report
