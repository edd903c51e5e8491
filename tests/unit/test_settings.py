"""Settings parsing: defaults, closed sets, bad values named, the job-dir rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bootstrap.config import parse
from bootstrap.config.settings import (
    VARIABLES,
    ignored_variables,
    load,
    load_preflight,
    load_transfer,
    nearest_variable,
)
from bootstrap.errors import ConfigError
from tests.conftest import RUN_TRAIN, variables_in_code

NOWHERE = {"BOOTSTRAP_VOLCANO_DIR": "/nonexistent-volcano"}


def test_defaults(tmp_path: Path) -> None:
    s = load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path)})
    assert s.job_dir == tmp_path / "user-job-dir" and s.code is None
    assert s.transfer.workers == 256 and s.transfer.memory == 256 * 2**20
    assert s.transfer.backend == "auto" and s.transfer.endpoint.region == "us-east-1"
    assert s.cluster.layout.size == 1 and s.cluster.layout.source == "local"
    assert s.cluster.barrier == "auto" and s.cluster.ipoib_device == "ib0"
    assert s.run.supervise is None and s.run.pip_install == "auto" and not s.run.nested
    assert s.run.failure_file == tmp_path / "user-job-dir" / "failure.json"
    assert s.outputs.output_dir is None and s.outputs.log_upload is None
    assert "gpu.ecc" in s.preflight.fatal and "node.shm" not in s.preflight.fatal


@pytest.mark.parametrize("name, value", [
    ("BOOTSTRAP_DOWNLOAD_WORKERS", "abc"), ("BOOTSTRAP_DOWNLOAD_WORKERS", "0"),
    ("BOOTSTRAP_PEER_TIMEOUT", "-1"), ("BOOTSTRAP_PEER_TIMEOUT", "nan"),
    ("BOOTSTRAP_LOG_FORMAT", "xml"), ("BOOTSTRAP_S3_ADDRESSING", "x"),
    ("BOOTSTRAP_S3_BACKEND", "rust"), ("BOOTSTRAP_SUPERVISE", "maybe"),
    ("BOOTSTRAP_PIP_INSTALL", "sometimes"), ("BOOTSTRAP_FATAL_CHECKS", "gpu.nope"),
    ("BOOTSTRAP_MASTER_PORT", "70000"), ("AWS_ENDPOINT_URL", "ftp://x"),
])
def test_a_bad_value_names_its_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name.split("_URL")[0] if "URL" in name else name):
        load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize("env, named", [
    ({"DLS_APP_URL": "s3://Bad_Bucket/code/"}, "DLS_APP_URL"),
    ({"DLS_APP_URL": "http://b/code/"}, "DLS_APP_URL"),
    ({"BOOTSTRAP_DATA_DIR": "/d", "DLS_DATA_URL": "s3://b/../x/"}, "DLS_DATA_URL"),
    ({"BOOTSTRAP_OUTPUT_DIR": "/o", "DLS_TRAIN_URL": "/local/out"}, "DLS_TRAIN_URL"),
    ({"BOOTSTRAP_OUTPUT_DIR": "/o"}, "DLS_TRAIN_URL"),
    ({"BOOTSTRAP_LOG_UPLOAD_URL": "s3:/typo/logs/"}, "BOOTSTRAP_LOG_UPLOAD_URL"),
    ({"DLS_USE_UPLOADER": "true", "DLS_UPLOAD_LOG_OBS_DIR": "file:///x"},
     "DLS_UPLOAD_LOG_OBS_DIR"),
])
def test_every_url_is_parsed_with_the_settings(tmp_path: Path, env: dict[str, str],
                                               named: str) -> None:
    # Every URL the job uses is refused at load, before any stage runs (the log's
    # destination was first read after training).
    with pytest.raises(ConfigError, match=named):
        load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), **env})


def test_urls_arrive_as_locations_and_unused_ones_are_not_read(tmp_path: Path) -> None:
    s = load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), "DLS_APP_URL": "obs://bkt/new/",
              "BOOTSTRAP_OUTPUT_DIR": "/o", "DLS_TRAIN_URL": "s3://bkt/out",
              "BOOTSTRAP_LOG_UPLOAD_URL": "s3://bkt/logs/", "BOOTSTRAP_DATA_DIR": "/d",
              "DLS_DATA_URL": "s3://bkt/data/"})
    assert s.code is not None and (s.code.bucket, s.code.prefix, s.code.name) == ("bkt", "new/",
                                                                                   "new")
    assert s.outputs.destination is not None and s.outputs.destination.prefix == "out/"
    assert s.outputs.log_upload is not None and s.outputs.log_upload.prefix == "logs/"
    assert s.staging.source is not None and s.staging.enabled
    # The platform sets DLS_DATA_URL and DLS_TRAIN_URL on jobs that never use them: a
    # value the job will not use is not a reason to stop it.
    quiet = load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), "DLS_DATA_URL": "weird",
                  "DLS_TRAIN_URL": "/not/remote"})
    assert quiet.staging.source is None and not quiet.staging.enabled
    assert quiet.outputs.destination is None


def test_closed_sets_are_normalised() -> None:
    assert load_transfer({"BOOTSTRAP_S3_BACKEND": " Native "}).backend == "native"
    assert load({**NOWHERE, "BOOTSTRAP_PIP_INSTALL": "1"}).run.pip_install == "on"
    assert load({**NOWHERE, "BOOTSTRAP_PIP_INSTALL": "off"}).run.pip_install == "off"
    assert load({**NOWHERE, "BOOTSTRAP_SUPERVISE": "yes"}).run.supervise is True
    assert load_preflight({"BOOTSTRAP_FATAL_CHECKS": "none"}).fatal == frozenset()
    assert load_preflight({"BOOTSTRAP_FATAL_CHECKS": "node.shm, gpu.pcie"}).fatal == {
        "node.shm", "gpu.pcie"}


def test_the_job_dir_rule(tmp_path: Path) -> None:
    ma = str(tmp_path / "ma" / "user-job-dir")
    launcher = {**NOWHERE, "BOOTSTRAP_LAUNCHER_HOME": str(tmp_path / "work")}
    assert load(launcher).job_dir == tmp_path / "work" / "user-job-dir"
    assert load({**launcher, "MA_JOB_DIR": ma}).job_dir == Path(ma)
    explicit = {**launcher, "MA_JOB_DIR": ma, "BOOTSTRAP_HOME": str(tmp_path / "mine")}
    assert load(explicit).job_dir == tmp_path / "mine" / "user-job-dir"
    assert load(explicit).home == tmp_path / "mine"


def test_endpoint_and_keys_come_from_the_platforms_variables() -> None:
    t = load_transfer({"S3_ENDPOINT": "obs.cn-north-4.myhuaweicloud.com",
                       "S3_ACCESS_KEY_ID": "AKIDEXAMPLE", "S3_SECRET_ACCESS_KEY": "s3cr3t"})
    assert t.endpoint.url == "https://obs.cn-north-4.myhuaweicloud.com"
    assert t.endpoint.region == "cn-north-4" and t.endpoint.addressing == "virtual"
    assert t.credentials is not None and t.credentials.secret_key == "s3cr3t"
    assert "s3cr3t" not in repr(t)  # a stray repr in a log line must not leak it
    local = load_transfer({"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"})
    assert local.endpoint.addressing == "path" and local.credentials is None


def test_parse_helpers() -> None:
    assert parse.integer({"N": " 12 "}, "N", 3) == 12 and parse.integer({}, "N", 3) == 3
    assert parse.flag({"F": "TRUE"}, "F", False) is True and parse.flag({}, "F", True) is True
    assert parse.first({"A": "", "B": "b"}, "A", "B") == "b" and parse.text({"T": " "}, "T") is None


def test_the_settings_repr_shows_no_secret(tmp_path: Path) -> None:
    """A stray ``repr`` of the settings (a debug line, a traceback's locals) shows the
    access key's first characters at most: never the secret key, the session token or
    the job secret (each record that holds one hides it: its own repr, ``field(repr=False)``)."""
    secrets = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret-key", "AWS_SESSION_TOKEN":
               "FwoGZXIvYXdz-session-token", "BOOTSTRAP_JOB_SECRET": "9f8e7d6c-job-secret"}
    s = load({**NOWHERE, "BOOTSTRAP_HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE1234",
              **secrets})
    assert s.transfer.credentials is not None and s.launch.secret == secrets["BOOTSTRAP_JOB_SECRET"]
    shown = repr(s)
    assert "Transfer(" in shown and "AKID" in shown  # the repr is whole, the key id cut short
    assert [name for name, value in secrets.items() if value in shown] == []
    assert "AKIDEXAMPLE1234" not in shown


def test_the_known_variables_are_exactly_those_the_code_names() -> None:
    named = {v for v in variables_in_code(skip=frozenset({"VARIABLES", "DEV_VARIABLES"}))
             if v.startswith("BOOTSTRAP_")}
    named |= set(re.findall(r"\b(BOOTSTRAP_[A-Z_]+)\b", RUN_TRAIN.read_text()))
    assert {"BOOTSTRAP_DOWNLOAD_WORKERS", "BOOTSTRAP_PYTHON"} <= named, "the scan is broken"
    assert sorted(VARIABLES - named) == [], "listed but read nowhere"
    assert sorted(named - VARIABLES) == [], "read but not in settings.VARIABLES"


def test_unknown_names_are_found_and_a_near_one_suggested() -> None:
    env = {"BOOTSTRAP_DOWNLOAD_WORKER": "64", "BOOTSTRAP_DEBUG": "0", "BOOTSTRAP_ZZZ": "1",
           "BOOTSTRAP_DEMO_NODES": "2", "PATH": "/bin"}
    assert ignored_variables(env) == ("BOOTSTRAP_DOWNLOAD_WORKER", "BOOTSTRAP_ZZZ")
    assert nearest_variable("BOOTSTRAP_DOWNLOAD_WORKER") == "BOOTSTRAP_DOWNLOAD_WORKERS"
    assert nearest_variable("BOOTSTRAP_ZZZ") is None
    assert load({"BOOTSTRAP_HOME": "/tmp/h", "BOOTSTRAP_ZZZ": "1"}).ignored == ("BOOTSTRAP_ZZZ",)


@pytest.mark.parametrize("env, want", [
    ({"DLS_JOB_ID": "d-1", "MA_VJ_NAME": "ma-job-x"}, "d-1"),
    ({"BATCH_JOB_ID": "b-2"}, "b-2"),
    ({"MA_VJ_NAME": "ma-job-95f661bd-1527"}, "modelarts-job-95f661bd-1527"),
    ({"MA_VJ_NAME": "ma-job-95f661bd-vc3"}, "modelarts-job-95f661bd"),
    ({"MA_JOB_ID": " m-3 "}, "m-3"),
    ({}, None),
])
def test_the_job_id_is_the_platforms(env: dict[str, str], want: str | None) -> None:
    from bootstrap.config.platform import platform_job_id

    assert platform_job_id(env) == want


def test_node_r_uploads_under_its_own_folder_unless_shared() -> None:
    from bootstrap.config.location import parse as parse_url
    from bootstrap.transfer import keys

    train = parse_url("s3://bkt/run/out/")
    assert keys.node_destination(train, 0, "node") == train
    one = keys.node_destination(train, 1, "node")
    assert (one.url, one.bucket, one.prefix) == \
        ("s3://bkt/run/out/node-1/", "bkt", "run/out/node-1/")
    assert keys.node_destination(train, 3, "shared") == train
    assert keys.attempt(train, 2, "modelarts-job-1/x", 4) == \
        "run/out/.bootstrap/2/modelarts-job-1_x/attempt-4/"
    assert keys.not_node_zeros("node-12/a.pt", "node") and not keys.not_node_zeros(
        "node-12/a.pt", "shared")
    assert keys.not_node_zeros(".bootstrap/0/complete.json", "shared")
    assert not keys.not_node_zeros("node-x/a.pt", "node")
