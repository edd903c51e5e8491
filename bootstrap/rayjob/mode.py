"""``BOOTSTRAP_LAUNCH=ray`` as a launch mode (:mod:`bootstrap.run.modes`): the MPI
mode's agents and ssh client carry it; node 0 starts the head and every other node's
worker (:mod:`.cluster`), runs the driver under supervision, then stops them all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..mpi import plan as mpi
from ..mpi.mode import Mpi
from ..run import stage
from . import plan as ray

if TYPE_CHECKING:
    from ..cluster.topology import Topology
    from ..config.settings import Settings
    from ..log import Log
    from ..mpi.launcher import Launcher


class Ray(Mpi):
    def __init__(self, settings: Settings, environ: Mapping[str, str], log: Log) -> None:
        super().__init__(settings, log)
        self.ray = _plan(settings, environ, self.secret_text)
        self.head = ""

    def exports(self, topo: Topology, addresses: Mapping[str, str]) -> dict[str, str]:
        """Ray's variables on every node (its token written beside the job, 0600); the
        MPI mode's files are written too, for the ssh client that starts the workers."""
        from .cluster import write_token

        super().exports(topo, addresses)
        self.head = topo.master_addr
        token = write_token(self.ray, self.settings.job_dir)
        return {**ray.exports(str(token)), "RAY_ADDRESS": self.ray.gcs(self.head)}

    def environment(self, env: dict[str, str]) -> None:
        """Ray's processes keep the image's ssh: ours is the bootstrap's, not theirs."""

    def supervise(self, ready: stage.Ready, launcher: Launcher) -> int:
        """The head and the workers up, the driver supervised (Ray's sessions are not
        the driver's leftovers), then the cluster stopped."""
        from .cluster import RayCluster

        assert self.bin_dir is not None  # exports wrote the ssh client
        cluster = self.settings.cluster.layout
        addresses = self.addresses
        head = RayCluster(self.ray, self.head,
                          {m.rank: (m.host, addresses.get(m.host, m.host))
                           for m in cluster.peers},
                          self.bin_dir / "ssh", ready.env, self.settings.run.grace_seconds,
                          self.settings.cluster.peer_timeout, self.log)
        try:
            head.start()
            return stage.supervise(ready, self.settings, self.log,
                                   remote_stacks=launcher.stacks, keep=head.sessions())
        finally:
            head.stop()


def _plan(settings: Settings, environ: Mapping[str, str], secret_text: str | None) -> ray.Plan:
    """Ray's ports and token, or ConfigError (a port that collides, nodes sharing a host,
    no Ray in the image)."""
    from ..cluster import ports
    from .cluster import ray_python

    ray_python(environ)
    layout, launch = settings.cluster.layout, settings.launch
    taken = mpi.ports_held(layout, settings.cluster.relay_port, launch.agent_port)
    secret = mpi.shared_secret(launch, settings.transfer, secret_text)
    return ray.plan(layout, secret, launch.ray_port, launch.ray_worker_ports, taken,
                    ports.ephemeral())
