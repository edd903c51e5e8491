"""When peer-assisted fetch applies (BOOTSTRAP_PEER_FETCH), and the one line that says
why not when it was asked for and cannot be."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bootstrap.cluster import auth
from bootstrap.config import location
from bootstrap.config.settings import PEER_FETCH_NODES, load
from bootstrap.errors import ConfigError
from bootstrap.log import Log, Redactor
from bootstrap.relay import protocol
from bootstrap.relay.protocol import Peers

KEYS = {"AWS_ACCESS_KEY_ID": "AKEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-example",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "MA_JOB_ID": "job-7"}


def peers_for(tmp_path: Path, nodes: int, url: str = "s3://bucket/code/",
              kind: str = "relay-code", **env: str) -> tuple[Peers | None, str]:
    hosts = {f"BATCH_CUSTOM{j}_HOSTS": f"node-{j}:29500" for j in range(nodes)}
    full = {"BOOTSTRAP_VOLCANO_DIR": "/nonexistent-volcano", "BOOTSTRAP_HOME": str(tmp_path),
            "DLS_TASK_INDEX": str(min(1, nodes - 1)), "DLS_TASK_NUMBER": str(nodes), **hosts,
            **KEYS, **env}
    said = io.StringIO()
    settings = load(full)
    found = protocol.plan(settings, location.parse(url), kind, Log(Redactor(full), stream=said))
    return found, said.getvalue()


def test_auto_starts_at_the_documented_size(tmp_path: Path) -> None:
    assert peers_for(tmp_path, PEER_FETCH_NODES - 1)[0] is None
    found, _ = peers_for(tmp_path, PEER_FETCH_NODES)
    assert found is not None and found.rank == 1
    assert found.ports == tuple(29611 + 3 * r for r in range(PEER_FETCH_NODES))
    assert found.hosts == tuple(f"node-{j}" for j in range(PEER_FETCH_NODES))
    assert found.key == auth.derive("s3cr3t-example", "job-7", "relay-code")
    data, _ = peers_for(tmp_path, PEER_FETCH_NODES, kind="relay-data")
    assert data is not None and data.ports == tuple(p + 1 for p in found.ports)
    assert data.key == auth.derive("s3cr3t-example", "job-7", "relay-data") != found.key


def test_on_and_off_override_the_size(tmp_path: Path) -> None:
    assert peers_for(tmp_path, 2, BOOTSTRAP_PEER_FETCH="on")[0] is not None
    assert peers_for(tmp_path, 64, BOOTSTRAP_PEER_FETCH="off")[0] is None
    assert peers_for(tmp_path, 1, BOOTSTRAP_PEER_FETCH="on")[0] is None  # nobody to ask
    assert peers_for(tmp_path, 2, "file:///data/code", BOOTSTRAP_PEER_FETCH="on")[0] is None


def test_short_lived_tokens_switch_it_off_and_say_why(tmp_path: Path) -> None:
    found, said = peers_for(tmp_path, 16, AWS_SESSION_TOKEN="token-example")
    assert found is None
    assert "relay: off" in said and "no shared static keys" in said
    assert "s3cr3t" not in said and "token-example" not in said


def test_the_engines_port_is_never_taken(tmp_path: Path) -> None:
    # Under auto the relay steps aside with one line; asked for, it is a usage error.
    found, said = peers_for(tmp_path, 16, BOOTSTRAP_RELAY_PORT="29490")
    # 29500 = 29490 + 3 * 3 + 1: node 3's data port
    assert found is None and "relay: off" in said and "port 29500 (node 3's)" in said
    with pytest.raises(ConfigError, match="MASTER_PORT; choose another base"):
        peers_for(tmp_path, 16, BOOTSTRAP_RELAY_PORT="29500", BOOTSTRAP_PEER_FETCH="on")


@pytest.mark.parametrize("value", ["yes", "2"])
def test_a_bad_switch_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="BOOTSTRAP_PEER_FETCH"):
        peers_for(tmp_path, 16, BOOTSTRAP_PEER_FETCH=value)
