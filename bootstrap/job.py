"""The whole story of a job's start, stage by stage.

settings -> command -> (fetch | data | preflight | peers) -> barrier -> network -> launch.

Each stage lives in a package named for its concern (``config``, ``transfer``,
``relay``, ``data``, ``node``, ``cluster``, ``run``); this file only orders them, times
them and hands values between them. Everything that can be checked without I/O (the
settings, the command, the cluster description, the endpoint) is checked first, so a
typo in the job spec fails in milliseconds, not after a download.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster import topology
from .config import location
from .config.settings import ACTIVE_MARKER, Settings, load, nearest_variable
from .errors import (
    EXIT_DOWNLOAD,
    EXIT_HANG,
    STOP_SIGNALS,
    BarrierFailed,
    BootstrapError,
    ConfigError,
    PreflightFailed,
    Terminated,
)
from .log import Log, Redactor
from .node import preflight
from .restart import Attempt
from .run import command, launch
from .run.logfile import CappedLog
from .version import describe

if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .config.platform import Cluster
    from .data.staging import Staged
    from .mpi import plan as mpi_plan_module
    from .mpi.agent import Agent
    from .rayjob.plan import Plan as RayPlan
    from .relay import protocol as relay_protocol
    from .restart.evidence import Evidence
    from .run.watchdog import Watchdog
    from .transfer.outputs import OutputSync


# STOP_SIGNALS: a handler that raises turns them into an exception, so every stage's
# cleanup (temporary files of a half-done download) runs on the way out. exec resets
# them to default.


EVIDENCE_WAIT = 30.0  # seconds a failed start waits to learn its attempt's number


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated(signum)


class Timer:
    """``with timed(log, NAME) as t:`` logs ``stage NAME: N ms (t.detail)`` at the end,
    with ``t.fields`` as JSON fields (BOOTSTRAP_LOG_FORMAT=json) beside ``stage`` and
    ``seconds``."""

    def __init__(self) -> None:
        self.detail = ""
        self.fields: dict[str, Any] = {}


@contextmanager
def timed(log: Log, name: str) -> Iterator[Timer]:
    timer = Timer()
    started = time.monotonic()
    yield timer
    log.stage(name, time.monotonic() - started, timer.detail, **timer.fields)


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
    cluster = settings.cluster.layout
    mpi_plan = _mpi_plan(settings) if settings.launch.agents else None
    ray_plan = _ray_plan(settings, environ) if settings.launch.mode == "ray" else None
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

    # The slow waits overlap, so start-up costs the longest of them, not their sum: the
    # code download runs here (where signals land), the preflight, the data staging and
    # the peers' DNS in threads. A failure in any of them stops the job (the peers' wait
    # at once; a half-done staging is left to the next run, which sweeps it).
    code_dir = location.destination(settings.job_dir, code_url) if code_url else None
    stop = threading.Event()
    checked = _Background(_preflight_stage, settings, log)
    resolved = _Background(_peers_stage, settings, log, stop) if cluster.size > 1 else None
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

    # MPI-style launch: the agents listen before the barrier, so that once it is passed
    # node 0 finds every one of them up.
    agent = _agent(mpi_plan, settings, addresses, log) if mpi_plan and mpi_plan.rank else None
    try:
        topo = _cluster_stage(settings, log, report, addresses, data_failure,
                              force_barrier=mpi_plan is not None)
        exports: dict[str, str] = {}
        if topo is not None:
            files = topology.write_files(topo, settings.job_dir)
            exports = topology.without_user_overrides(topo.exports(files), environ)
        mpi_bin = None
        if mpi_plan is not None and topo is not None:
            from .mpi import install

            mpi_exports, mpi_bin = install.install(
                settings.job_dir, mpi_plan, cluster,
                {r: topo.slots(r) for r in range(cluster.size)}, addresses)
            if ray_plan is not None:
                mpi_exports = _ray_exports(ray_plan, topo.master_addr, settings.job_dir)
            exports.update(topology.without_user_overrides(mpi_exports, environ))
        if staged is not None:
            exports.update(staged.exports())
        exports["BOOTSTRAP_ATTEMPT"] = str(attempt.number)

        final_argv = command.resolve(cmd, code_dir, Path.cwd(), code_url, settings.job_dir)
        env = launch.user_environment(environ, settings.home, settings.job_dir,
                                      settings.run.cache_dir, code_dir, exports)
        if mpi_bin is not None and ray_plan is None:  # pdsh, DeepSpeed run `ssh`: ours
            from .mpi.plan import path_with

            env["PATH"] = path_with(mpi_bin, env.get("PATH", os.defpath))
        if code_dir is not None:
            _deps_stage(code_dir, final_argv, env, settings, log)
    except BaseException:
        if agent is not None:
            agent.close()
        raise
    if agent is not None:
        return _serve_launcher(agent, env, code_dir, settings, log, attempt.evidence)

    sync = None
    if settings.outputs.output_dir is not None:
        from .transfer import outputs

        sync = outputs.OutputSync(settings.outputs, settings.transfer, _sync_state(settings),
                                  log, rank=settings.cluster.layout.rank,
                                  attempt=attempt.number)
    supervise = settings.run.supervise
    if supervise is None:  # PID 1 must supervise; so must anything with work after the end
        supervise = (os.getpid() == 1 or sync is not None or mpi_plan is not None
                     or settings.outputs.log_upload is not None
                     or attempt.evidence is not None or command.leaves_workers(final_argv))
    launch.find_program(final_argv[0], env)  # 127/126 now, while we can still say why
    where = f" (in {code_dir})" if code_dir else ""
    if not supervise:
        log.info(f"exec: {shlex.join(log.redact.argv(final_argv))}{where}")
        _default_signals()
        launch.exec_command(final_argv, env, code_dir, user_umask)
    log.info(f"run (supervised, pid {os.getpid()}): {shlex.join(log.redact.argv(final_argv))}"
             f"{where}; log: {settings.run.log_file}")
    if mpi_plan is None:
        return _supervise(final_argv, env, code_dir, settings, log, sync, user_umask,
                          report.gpu_count, evidence=attempt.evidence)
    from .mpi.launcher import Launcher

    launcher = Launcher(mpi_plan, addresses, log)
    ray = None
    try:
        launcher.connect_all()
        if ray_plan is not None and topo is not None and mpi_bin is not None:
            from .rayjob.cluster import RayCluster

            ray = RayCluster(ray_plan, topo.master_addr,
                             {m.rank: (m.host, addresses.get(m.host, m.host))
                              for m in cluster.peers},
                             mpi_bin / "ssh", env, settings.run.grace_seconds,
                             settings.cluster.peer_timeout, log)
            ray.start()
        code = _supervise(final_argv, env, code_dir, settings, log, sync, user_umask,
                          report.gpu_count, remote_stacks=launcher.stacks,
                          evidence=attempt.evidence,
                          keep=ray.sessions() if ray is not None else frozenset())
    except BaseException:
        if ray is not None:
            ray.stop()
        launcher.abandon()
        raise
    if ray is not None:
        ray.stop()
    launcher.finish(code)  # every node ends with the launcher's code
    return code


def _mpi_plan(settings: Settings) -> mpi_plan_module.Plan:
    """The launch agents' plan (BOOTSTRAP_LAUNCH=mpi or ray), checked before anything
    runs (exit 2 on a port that collides, a job of one node, no shared secret, or the
    cryptography package missing)."""
    from .cluster import ports
    from .mpi import plan

    try:
        import cryptography  # noqa: F401 - the agents' frames need it
    except ImportError:
        raise ConfigError(f"BOOTSTRAP_LAUNCH={settings.launch.mode} needs the `cryptography` "
                          "package in the bootstrap's Python: pip install cryptography (the "
                          "bundled runtime has it)") from None
    return plan.plan(settings.cluster.layout, settings.launch, settings.transfer,
                     settings.cluster.relay_port, ports.ephemeral(), _secret_file_text(settings),
                     settings.cluster.peer_timeout)


def _secret_file_text(settings: Settings) -> str | None:
    path = settings.launch.secret_file
    if path is None or settings.launch.secret is not None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"BOOTSTRAP_JOB_SECRET_FILE={path}: cannot read it "
                          f"({exc.strerror}); mount the job's secret there") from None


def _ray_plan(settings: Settings, environ: Mapping[str, str]) -> RayPlan:
    """BOOTSTRAP_LAUNCH=ray's ports and token, checked before anything runs (exit 2 on a
    port that collides, nodes sharing a host, or no Ray in the image)."""
    from .cluster import ports
    from .mpi import plan as mpi
    from .rayjob import cluster as ray_cluster
    from .rayjob import plan
    from .relay import protocol as relay

    ray_cluster.ray_python(environ)
    layout, launch = settings.cluster.layout, settings.launch
    taken = ports.taken_by_the_job(layout)
    for r in range(layout.size):
        taken[mpi.port_of(launch.agent_port, r)] = f"node {r}'s launch agent port"
        for protocol in relay.PROTOCOLS:
            taken[relay.port_of(settings.cluster.relay_port, r, protocol)] = \
                f"node {r}'s relay port (BOOTSTRAP_RELAY_PORT)"
    secret = mpi.shared_secret(launch, settings.transfer, _secret_file_text(settings))
    return plan.plan(layout, secret, launch.ray_port, launch.ray_worker_ports, taken,
                     ports.ephemeral())


def _ray_exports(p: RayPlan, head: str, job_dir: Path) -> dict[str, str]:
    """Ray's variables on every node, its token written beside the job (0600)."""
    from .rayjob import cluster, plan

    return {**plan.exports(str(cluster.write_token(p, job_dir))), "RAY_ADDRESS": p.gcs(head)}


def _agent(p: mpi_plan_module.Plan, settings: Settings, addresses: Mapping[str, str],
           log: Log) -> Agent:
    """This node's launch agent, listening on its own address in the job (the one its
    host name resolves to) and open to the job's nodes only."""
    from .cluster import peers
    from .mpi.agent import Agent

    me = settings.cluster.layout.nodes[p.rank].host
    mine = addresses.get(me) or peers.resolve(me) or ""
    allowed = {*addresses.values(), *(a for a in [mine] if a)}
    agent = Agent(p, mine, allowed, {}, None, settings.run.grace_seconds, log)
    role = "runs the launcher's remote commands" if p.serves_exec else \
        "waits for the launcher's end (another node here runs its remote commands)"
    log.info(f"launch: node {p.rank} listening on {agent.where}; it {role}")
    return agent


def _serve_launcher(agent: Agent, env: Mapping[str, str], cwd: Path | None,
                    settings: Settings, log: Log, evidence: Evidence | None) -> int:
    """Nodes 1..N-1 in MPI-style launch: serve (the remote commands' output teed into
    this node's log file, as the command's would be), then end with the launcher's code
    (a failure record says so when it is not 0)."""
    from .run import supervise

    agent.env, agent.cwd = dict(env), cwd
    stacks_dir = None
    if settings.run.hang_seconds > 0:  # node 0's watchdog may ask for the stacks here
        stacks_dir, agent.env = _stack_hook(settings, env)
        agent.stacks = (stacks_dir, settings.run.failure_file.parent / "hang-stacks.txt")
    path = settings.run.log_file
    try:
        agent.tee = CappedLog(path, settings.run.log_max)
    except OSError as exc:
        log.warn(f"launch: cannot write the log file {path} ({exc.strerror}); remote "
                 "output goes to the launcher only")
    try:
        agent.start()
        code = agent.wait()
    finally:
        if agent.tee is not None:
            agent.tee.close()
        _drop_stack_hook(stacks_dir)
    log.info(f"launch: the launcher (node 0) ended with {code}; this node exits {code}")
    if code != 0:
        supervise.write_launcher_record(settings.run.failure_file, code, settings.task_index,
                                        log)
    if evidence is not None:
        evidence.upload()
    return code


def _default_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _fetch_stage(code_url: location.Location, code_dir: Path, settings: Settings,
                 log: Log) -> None:
    # Loaded only when there is something to fetch (the S3 client; the relay's plan
    # with its proofs' crypto only on several nodes, its server and client only when
    # peers share the fetch).
    from .transfer import fetch

    with timed(log, "fetch") as t:
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
    with timed(log, "restore") as t:
        peers = _relay_plan(settings, train, "relay-outputs", log)
        restored = restore.restore(outputs, settings.transfer, rank, _sync_state(settings),
                                   peers, log)
        t.detail = f"{restored.summary()} -> {outputs.output_dir}"
        t.fields = restored.fields()


def _staging_stage(settings: Settings, log: Log) -> Staged:
    from .data import staging

    cluster = settings.cluster.layout
    with timed(log, "data") as t:
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
        with timed(log, "deps") as t:
            deps.install(requirements, deps.interpreter(argv, env), env, log)
            t.detail = f"{requirements.name} installed"


def _supervise(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
               settings: Settings, log: Log, sync: OutputSync | None,
               user_umask: int, gpus: int = 0,
               remote_stacks: Callable[[], str] | None = None,
               evidence: Evidence | None = None,
               keep: frozenset[int] = frozenset()) -> int:
    from .run import supervise
    from .run.rounds import Rounds
    from .transfer import outputs

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
        outcome = supervise.Supervisor(
            argv, env, cwd, settings.run.grace_seconds, log, settings.run.log_file, user_umask,
            dog, settings.preflight.nvml_module if gpus else None, settings.run.log_max,
            settings.run.detached, keep).run()
    finally:
        _drop_stack_hook(stacks_dir)
        rounds.stop()
    # The platform may repeat its SIGTERM while we save the outputs: finish the job's
    # last duties rather than die half-way (SIGKILL still ends everything).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    code = EXIT_HANG if outcome.hang else outcome.exit_code
    if code != 0:
        supervise.write_failure_record(settings.run.failure_file, outcome,
                                       settings.task_index, log, exit_code=code)
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
    from .run import watchdog

    stacks_dir, with_hook = _stack_hook(settings, env)
    dog = watchdog.Watchdog(settings.run.hang_seconds, settings.run.hang_action,
                            settings.run.heartbeat_file, settings.outputs.output_dir,
                            stacks_dir, settings.run.failure_file.parent / "hang-stacks.txt",
                            log, stop_command=lambda: None, remote=remote_stacks)
    log.info(f"hang watchdog: {settings.run.hang_seconds:g} s without output, output-file "
             f"growth or a heartbeat ({settings.run.heartbeat_file}) is a hang; action "
             f"{settings.run.hang_action}")
    return dog, stacks_dir, with_hook


def _stack_hook(settings: Settings, env: Mapping[str, str]) -> tuple[Path, dict[str, str]]:
    """A folder for the stack-dump hook of this node's commands, and their environment
    with the hook armed."""
    from .run import watchdog

    stacks_dir = settings.job_dir / f".stacks-{os.getpid()}"
    stacks_dir.mkdir(parents=True, exist_ok=True)
    with_hook = dict(env)
    watchdog.environment(with_hook, stacks_dir, settings.run.heartbeat_file)
    return stacks_dir, with_hook


def _drop_stack_hook(stacks_dir: Path | None) -> None:
    """Removes what :func:`_stack_hook` made, once the commands it armed have ended."""
    if stacks_dir is not None:
        import shutil

        shutil.rmtree(stacks_dir, ignore_errors=True)


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
    with timed(log, "preflight") as t:
        report = preflight.run(settings.preflight, settings.job_dir,
                               settings.cluster.ipoib_device)
        preflight.write(report, settings.job_dir)
        for line in report.lines():
            log.info(line)
        t.detail = f"{report.gpu_count} GPU(s), " + ("ok" if report.ok else "FAILED")
    return report


def _peers_stage(settings: Settings, log: Log, stop: threading.Event) -> dict[str, str]:
    from .cluster import peers

    with timed(log, "peers") as t:
        addresses = peers.wait_for_names(settings.cluster.layout.peers,
                                         settings.cluster.peer_timeout, log, stop=stop)
        t.detail = f"{len(addresses)} peer name(s) resolved"
        t.fields = {"resolved": len(addresses)}
    return addresses


def _local_failure(report: preflight.Report) -> PreflightFailed:
    return PreflightFailed("this node failed its preflight: "
                           + "; ".join(f"{f.check}: {f.message}" for f in report.failures()))


def _cluster_stage(settings: Settings, log: Log, report: preflight.Report,
                   addresses: Mapping[str, str],
                   data_failure: BootstrapError | None = None,
                   force_barrier: bool = False) -> topology.Topology | None:
    """The start barrier and the topology, once the peers resolve; None for a local
    one-node job with no platform variables (nothing to hand the engines).

    A node that failed its preflight (or its data staging) still takes part in the
    barrier, so that every other node learns why the job stops; then it exits with
    that failure's code.
    """
    cluster, knobs = settings.cluster.layout, settings.cluster
    facts = topology.MemberFacts(gpus=report.gpu_count)
    if cluster.size == 1:
        if not report.ok:
            raise _local_failure(report)
        if cluster.source == "local":
            return None
        from .cluster import peers

        ip = peers.resolve(cluster.master.host)
        return topology.Topology(cluster, {0: facts}, master_ip=ip, own_ip=ip)

    from .cluster import barrier, ipoib, network

    ib_addr = ipoib.local_address(knobs.ipoib_device)
    facts = topology.MemberFacts(gpus=facts.gpus, ib_addr=ib_addr)
    run_barrier = force_barrier or knobs.barrier == "on" or (knobs.barrier == "auto" and ib_addr)
    if ib_addr is None:
        log.info(f"ipoib: no address on {knobs.ipoib_device}; no IB address map"
                 + ("" if run_barrier else " and no start barrier"))
    all_facts: dict[int, topology.MemberFacts] = {cluster.rank: facts}
    barrier_local = None
    if run_barrier:
        with timed(log, "barrier") as t:
            reasons = [f"{f.check}: {f.message}" for f in report.failures()]
            if data_failure is not None:
                reasons.append(f"data staging: {data_failure.message}")
            mine = barrier.Readiness(cluster.rank, not reasons, "; ".join(reasons), facts)
            try:
                everyone, barrier_local = barrier.exchange(
                    cluster, mine, addresses.get(cluster.master.host), knobs.peer_timeout, log)
            except BarrierFailed:
                if not report.ok:  # our own failure is the story, not the echo of it
                    raise _local_failure(report) from None
                if data_failure is not None:
                    raise data_failure from None
                raise
            all_facts = {r: rep.facts for r, rep in everyone.items()}
            t.detail = f"{len(everyone)} node(s) ready"
    elif not report.ok:
        raise _local_failure(report)
    if data_failure is not None:
        raise data_failure
    master_ip = _master_ip(cluster, addresses, barrier_local, log)
    own_ip = master_ip if cluster.rank == 0 else (
        barrier_local or (network.route_source(master_ip) if master_ip else None))
    topo = topology.Topology(cluster, all_facts, master_addr_ib=knobs.master_addr_ib,
                             master_ip=master_ip, own_ip=own_ip)
    net: dict[str, str] = {}
    if knobs.network == "auto":
        with timed(log, "network") as t:
            net = _network_stage(cluster, settings, addresses, barrier_local, topo, log)
            t.detail = ", ".join(f"{k}={v}" for k, v in net.items()) or "no exports"
    return topology.Topology(cluster, all_facts, master_addr_ib=knobs.master_addr_ib,
                             master_ip=master_ip, own_ip=own_ip, network=net)


def _master_ip(cluster: Cluster, addresses: Mapping[str, str], barrier_local: str | None,
               log: Log) -> str | None:
    """``MASTER_ADDR``: node 0's IP address, the one its peers reach it at. Nodes
    1..N-1 know it as what they resolved node 0's name to (and dialled, if the barrier
    ran); node 0 works it out (:func:`network.node0_address`)."""
    from .cluster import network, peers

    def address(host: str) -> str | None:
        return addresses.get(host) or peers.resolve(host)

    if cluster.rank != 0:
        return address(cluster.master.host)
    found = network.node0_address(address(cluster.master.host),
                                  address(cluster.nodes[1].host), barrier_local)
    if found is None:
        log.info(f"cluster: no address of this node that its peers reach could be found; "
                 f"MASTER_ADDR is its name, {cluster.master.host}")
    return found


def _network_stage(cluster: Cluster, settings: Settings, addresses: Mapping[str, str],
                   barrier_local: str | None, topo: topology.Topology,
                   log: Log) -> dict[str, str]:
    """The engines' interface and HCAs; the master proven reachable (nodes 1..N-1)
    and its port free (node 0) before the command starts."""
    from .cluster import network, peers

    def address(host: str) -> str | None:
        return addresses.get(host) or peers.resolve(host)

    ifaces = network.interfaces()
    proven = barrier_local is not None  # the barrier's own connection proved the path
    master_addr = topo.master_addr
    if master_addr != topo.master_ip and master_addr != cluster.master.host:
        # MASTER_ADDR is node 0's IB address (BOOTSTRAP_MASTER_ADDR_IB): the engines go
        # where it routes (node 0: the device holding it), whatever network the barrier,
        # which dials names, went over.
        choice = network.choose(cluster.rank, master_addr, None, None, ifaces)
    elif cluster.rank == 0:
        choice = network.choose(0, address(cluster.master.host),
                                address(cluster.nodes[1].host), barrier_local, ifaces)
    else:
        choice = network.choose(cluster.rank, address(master_addr), None, barrier_local,
                                ifaces)
    choice = network.with_hcas(choice, settings.cluster.sysfs_root)
    log.info(f"network: {choice.interface or 'no interface chosen'}: {choice.reason}")
    port = cluster.master.port
    if cluster.rank == 0:
        network.check_port_free(None, port)
    elif not proven:
        target = address(master_addr) or master_addr
        network.prove_reachable(target, port, choice.address,
                                time.monotonic() + settings.cluster.peer_timeout, cluster.rank)
    return choice.exports()
