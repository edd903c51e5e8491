"""MPI-style launch's pure part: ports, the host's agent, hostfiles, the key's source,
and the client's argument parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.config.platform import Cluster, Member
from bootstrap.config.settings import Launch, load
from bootstrap.errors import ConfigError
from bootstrap.mpi import plan as mpi
from bootstrap.mpi import ssh
from bootstrap.mpi.ssh import Usage, parse

NOWHERE = {"BOOTSTRAP_VOLCANO_DIR": "/nonexistent-volcano"}
SECRET = "sixteen-or-more-characters"


def cluster(*hosts: str, rank: int = 0, port: int = 6000) -> Cluster:
    return Cluster(tuple(Member(r, h, port + r) for r, h in enumerate(hosts)), rank, "old",
                   "job-7")


def test_the_host_list_and_its_slots() -> None:
    c = cluster("a", "a", "b", "b", "c")
    assert [mpi.agent_for(c, h) for h in "abc"] == [1, 2, 4]
    assert mpi.agent_for(cluster("a", "b"), "a") is None  # node 0 alone on its host
    assert mpi.hostfile(c, {0: 8, 1: 8, 2: 0}) == "a slots=16\nb slots=2\nc slots=1\n"
    assert mpi.mpich_hostfile(c, {}) == "a:2\nb:2\nc:1\n"


def test_ports_clear_of_the_jobs_others() -> None:
    c = cluster("a", "b", "c", port=29500)
    eph = (32768, 60999)
    assert mpi.port_conflict(28600, c, 29611, eph) is None
    assert "MASTER_PORT" in (mpi.port_conflict(29499, c, 29611, eph) or "")
    assert "relay port" in (mpi.port_conflict(29610, c, 29611, eph) or "")
    assert "ephemeral" in (mpi.port_conflict(40000, c, 29611, eph) or "")
    assert "65535" in (mpi.port_conflict(65535, c, 29611, eph) or "")


def test_the_key_comes_from_a_job_secret_or_static_store_keys(tmp_path: Path) -> None:
    env = {**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), "S3_ACCESS_KEY_ID": "AKID",
           "S3_SECRET_ACCESS_KEY": "store-secret-key-xyz"}
    s = load(env)
    from_store = mpi.job_key(s.launch, s.transfer, "job-7", None)
    with_secret = load({**env, "BOOTSTRAP_JOB_SECRET": SECRET})
    assert mpi.job_key(with_secret.launch, with_secret.transfer, "job-7", None) != from_store
    assert mpi.job_key(s.launch, s.transfer, "job-7", SECRET + "\n") == \
        mpi.job_key(with_secret.launch, with_secret.transfer, "job-7", None)  # the file's
    assert mpi.job_key(s.launch, s.transfer, "job-8", None) != from_store  # per job
    token = load({**env, "AWS_SESSION_TOKEN": "short-lived", "AWS_ACCESS_KEY_ID": "AKID",
                  "AWS_SECRET_ACCESS_KEY": "x" * 20, "S3_ACCESS_KEY_ID": "",
                  "S3_SECRET_ACCESS_KEY": ""})
    with pytest.raises(ConfigError, match="BOOTSTRAP_JOB_SECRET"):
        mpi.job_key(token.launch, token.transfer, "job-7", None)
    short = Launch("mpi", 28600, "short", None)
    with pytest.raises(ConfigError, match="shorter than 16"):
        mpi.job_key(short, s.transfer, "job-7", None)
    assert SECRET not in repr(with_secret.launch)


def test_the_plan_refuses_one_node_and_a_port_that_collides(tmp_path: Path) -> None:
    s = load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), "BOOTSTRAP_JOB_SECRET": SECRET})
    launch = Launch("mpi", 28600, SECRET, None)
    with pytest.raises(ConfigError, match="several nodes"):
        mpi.plan(cluster("a"), launch, s.transfer, 29611, (32768, 60999), None, 60)
    with pytest.raises(ConfigError, match="BOOTSTRAP_AGENT_PORT=5999"):
        mpi.plan(cluster("a", "b"), Launch("mpi", 5999, SECRET, None), s.transfer, 29611,
                 (32768, 60999), None, 60)
    p = mpi.plan(cluster("a", "a", "b", rank=1), launch, s.transfer, 29611, (32768, 60999),
                 None, 60)
    assert p.serves_exec and p.ports == (28600, 28601, 28602) and not p.launcher
    # The derived key never shows in the plan's repr (a log line or a traceback's locals).
    assert "key" not in repr(p) and repr(p.key) not in repr(p) and p.key.hex() not in repr(p)
    config = mpi.client_config(p, {"a": "10.0.0.1", "b": "10.0.0.2"})
    assert config["agents"] == {"a": [1, "10.0.0.1", 28601], "b": [2, "10.0.0.2", 28602]}
    assert config["local"] == {}  # node 1 serves its own host
    # The launcher alone on its host: pdsh's list includes it, and no agent is there.
    alone = mpi.plan(cluster("a", "b", "c"), launch, s.transfer, 29611, (32768, 60999),
                     None, 60)
    config = mpi.client_config(alone, {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"})
    assert config["local"] == {"a": "10.0.0.1"} and ssh.agent_of(config, "a") is None
    assert ssh.is_local(config, "a") and ssh.is_local(config, "10.0.0.1")
    assert not ssh.is_local(config, "b") and not ssh.is_local(config, "10.0.0.3")


def test_bad_launch_settings_name_their_variable(tmp_path: Path) -> None:
    for name, value in [("BOOTSTRAP_LAUNCH", "ssh"), ("BOOTSTRAP_AGENT_PORT", "70000")]:
        with pytest.raises(ConfigError, match=name):
            load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize("argv, want", [
    (["host", "orted", "-mca", "x"], ("host", "orted -mca x", False)),
    (["-x", "-p", "2222", "-o", "StrictHostKeyChecking=no", "host", "cmd"], ("host", "cmd", False)),
    (["-oBatchMode=yes", "-nT", "user@host", "true"], ("host", "true", True)),
    (["-l", "root", "-i", "/k", "--", "host", "a", "b"], ("host", "a b", False)),
    # pdsh's ssh module: PDSH_SSH_ARGS' default "-2 -A -x -l%u %h", then the command
    (["-2", "-A", "-x", "-lroot", "host", "echo", "0"], ("host", "echo 0", False)),
])
def test_the_clients_arguments_are_ssh_s(argv: list[str], want: tuple[str, str, bool]) -> None:
    assert parse(argv) == want


@pytest.mark.parametrize("argv", [[], ["host"], ["-p"], ["-Z", "host", "true"]])
def test_the_client_refuses_what_ssh_would(argv: list[str]) -> None:
    with pytest.raises(Usage):
        parse(argv)
