"""``BOOTSTRAP_LAUNCH=mpi`` as a launch mode (:mod:`bootstrap.run.modes`): node 0 runs
the launcher under supervision with a control connection to every agent; nodes
1..N-1 serve it through their launch agents and end with its exit code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..run import stage
from ..run.logfile import CappedLog
from ..run.modes import Mode
from . import plan as mpi

if TYPE_CHECKING:
    from ..cluster.topology import Topology
    from ..config.settings import Settings
    from ..log import Log
    from ..restart.evidence import Evidence
    from .agent import Agent
    from .launcher import Launcher


class Mpi(Mode):
    force_barrier = True  # node 0 dials the agents once the barrier says they listen
    supervises = True  # node 0 sends the command's code to every agent at its end

    def __init__(self, settings: Settings, log: Log) -> None:
        super().__init__(settings, log)
        self.secret_text = _secret_file_text(settings)
        self.plan = _plan(settings, self.secret_text)
        self.serves = not self.plan.launcher
        self.agent: Agent | None = None
        self.addresses: Mapping[str, str] = {}
        self.bin_dir: Path | None = None

    def before_barrier(self, addresses: Mapping[str, str]) -> None:
        """Nodes 1..N-1: the agent listens on this node's own address in the job (the
        one its host name resolves to), open to the job's nodes only."""
        from ..cluster import peers
        from .agent import Agent

        self.addresses = addresses
        if not self.serves:
            return
        p = self.plan
        me = self.settings.cluster.layout.nodes[p.rank].host
        mine = addresses.get(me) or peers.resolve(me) or ""
        allowed = {*addresses.values(), *(a for a in [mine] if a)}
        self.agent = Agent(p, mine, allowed, {}, None, self.settings.run.grace_seconds,
                           self.log)
        role = "runs the launcher's remote commands" if p.serves_exec else \
            "waits for the launcher's end (another node here runs its remote commands)"
        self.log.info(f"launch: node {p.rank} listening on {self.agent.where}; it {role}")

    def exports(self, topo: Topology, addresses: Mapping[str, str]) -> dict[str, str]:
        """The hostfiles, the ssh client and its key (:mod:`.install`)."""
        from . import install

        cluster = self.settings.cluster.layout
        found, self.bin_dir = install.install(
            self.settings.job_dir, self.plan, cluster,
            {r: topo.slots(r) for r in range(cluster.size)}, addresses)
        return found

    def environment(self, env: dict[str, str]) -> None:
        if self.bin_dir is not None:  # pdsh, DeepSpeed run `ssh`: ours
            env["PATH"] = mpi.path_with(self.bin_dir, env.get("PATH", os.defpath))

    def teardown(self) -> None:
        if self.agent is not None:
            self.agent.close()

    def serve(self, env: Mapping[str, str], cwd: Path | None,
              evidence: Evidence | None) -> int:
        """Serves the launcher (the remote commands' output teed into this node's log
        file, as the command's would be), then ends with its code (a failure record says
        so when it is not 0)."""
        from ..run import supervise

        agent, settings, log = self.agent, self.settings, self.log
        assert agent is not None  # before_barrier made it
        agent.env, agent.cwd = dict(env), cwd
        stacks_dir = None
        if settings.run.hang_seconds > 0:  # node 0's watchdog may ask for the stacks here
            stacks_dir, agent.env = stage.stack_hook(settings, env)
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
            stage.drop_stack_hook(stacks_dir)
        log.info(f"launch: the launcher (node 0) ended with {code}; this node exits {code}")
        if code != 0:
            supervise.write_launcher_record(settings.run.failure_file, code,
                                            settings.task_index, log)
        if evidence is not None:
            evidence.upload()
        return code

    def run(self, ready: stage.Ready) -> int:
        """Node 0: every agent connected, the command supervised, its code sent to every
        node (or, on a failure here, every agent told to stop)."""
        from .launcher import Launcher

        launcher = Launcher(self.plan, self.addresses, self.log)
        try:
            launcher.connect_all()
            code = self.supervise(ready, launcher)
        except BaseException:
            launcher.abandon()
            raise
        launcher.finish(code)  # every node ends with the launcher's code
        return code

    def supervise(self, ready: stage.Ready, launcher: Launcher) -> int:
        return stage.supervise(ready, self.settings, self.log, remote_stacks=launcher.stacks)


def _plan(settings: Settings, secret_text: str | None) -> mpi.Plan:
    """The agents' plan, or ConfigError (a port that collides, a job of one node, no
    shared secret, the cryptography package missing)."""
    from ..cluster import ports

    try:
        import cryptography  # noqa: F401 - the agents' frames need it
    except ImportError:
        raise ConfigError(f"BOOTSTRAP_LAUNCH={settings.launch.mode} needs the `cryptography` "
                          "package in the bootstrap's Python: pip install cryptography (the "
                          "bundled runtime has it)") from None
    return mpi.plan(settings.cluster.layout, settings.launch, settings.transfer,
                    settings.cluster.relay_port, ports.ephemeral(), secret_text,
                    settings.cluster.peer_timeout)


def _secret_file_text(settings: Settings) -> str | None:
    """BOOTSTRAP_JOB_SECRET_FILE's text, read once (None when BOOTSTRAP_JOB_SECRET is set)."""
    path = settings.launch.secret_file
    if path is None or settings.launch.secret is not None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"BOOTSTRAP_JOB_SECRET_FILE={path}: cannot read it "
                          f"({exc.strerror}); mount the job's secret there") from None
