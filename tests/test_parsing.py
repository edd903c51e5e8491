"""Pure parsing: command forms, code-directory URLs, settings, key safety, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.config import location, settings
from bootstrap.errors import ConfigError, DownloadError, UsageError
from bootstrap.log import Redactor
from bootstrap.run import command
from bootstrap.transfer.paths import relative_path

JOB = Path("/j")


@pytest.mark.parametrize("argv, form", [
    (["python", "train.py"], "file"),
    (["python3", "train.py", "--lr", "0.1"], "file"),
    (["python3.9", "a.py"], "file"),
    (["/usr/bin/python3", "a.py"], "file"),
    (["bash", "run.sh", "x"], "file"),
    (["sh", "run.sh"], "file"),
    (["python", "-c", "pass"], "raw"),
    (["python", "-m", "torch.distributed.run", "t.py"], "raw"),
    (["python"], "raw"),
    (["torchrun", "--nproc-per-node=2", "train.py"], "raw"),
    (["echo", "a && b"], "raw"),
    (["python a.py && python b.py"], "shell"),
    (["echo hi | tr a-z A-Z"], "shell"),
    (["nvidia-smi"], "raw"),
])
def test_command_forms(argv: list[str], form: str) -> None:
    assert command.parse(argv).form == form


def test_no_command_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no command"):
        command.parse([])


def test_file_is_looked_up_in_code_dir_then_cwd(tmp_path: Path) -> None:
    code, cwd = tmp_path / "code", tmp_path / "cwd"
    code.mkdir()
    cwd.mkdir()
    (code / "a.py").write_text("")
    (cwd / "a.py").write_text("")
    (cwd / "b.py").write_text("")
    loc = location.parse("s3://bkt/new/")
    got = command.resolve(command.parse(["python", "a.py", "x y"]), code, cwd, loc, JOB)
    assert got == ("python", str(code / "a.py"), "x y")
    got = command.resolve(command.parse(["python", "b.py"]), code, cwd, loc, JOB)
    assert got == ("python", str(cwd / "b.py"))
    got = command.resolve(command.parse(["python", "s3://bkt/new/a.py"]), code, cwd, loc, JOB)
    assert got == ("python", str(code / "a.py"))
    with pytest.raises(UsageError, match="not inside the code directory"):
        command.resolve(command.parse(["python", "s3://other/new/a.py"]), code, cwd, loc, JOB)
    with pytest.raises(UsageError) as err:
        command.resolve(command.parse(["python", "missing.py"]), code, cwd, loc, JOB)
    assert str(code / "missing.py") in err.value.message
    assert str(cwd / "missing.py") in err.value.message


def test_shell_form_wraps_with_sh() -> None:
    cmd = command.parse(["python a.py && python b.py"])
    assert command.resolve(cmd, None, Path("/"), None, Path("/j")) == (
        "/bin/sh", "-c", "python a.py && python b.py")


@pytest.mark.parametrize("argv, leaves", [
    (["msrun", "--worker_num=2", "train.py"], True),  # --join defaults to False
    (["msrun", "--join=False", "train.py"], True),
    (["msrun", "--join=True", "train.py"], False),
    (["msrun", "--join", "True", "train.py"], False),
    (["/bin/sh", "-c", "msrun --worker_num=2 --join=True train.py"], False),
    (["/bin/sh", "-c", "msrun --worker_num=2 train.py"], True),
    (["python", "-m", "mindspore.parallel.cluster.run", "train.py"], True),
    (["python", "train.py", "msrunner"], False),
])
def test_msrun_without_join_is_a_command_that_leaves_workers(argv: list[str],
                                                             leaves: bool) -> None:
    """Such a run is supervised even where it would be exec'd: its workers are waited for."""
    assert command.leaves_workers(argv) is leaves


@pytest.mark.parametrize("url, name, bucket, prefix", [
    ("s3://b0b/new/", "new", "b0b", "new/"),
    ("s3://b0b/new", "new", "b0b", "new/"),
    ("obs://b0b/a/b/c/", "c", "b0b", "a/b/c/"),
    ("s3://b0b", "b0b", "b0b", ""),
    ("s3://b0b/", "b0b", "b0b", ""),
    ("s3://b0b//x//", "x", "b0b", "x/"),
])
def test_remote_locations(url: str, name: str, bucket: str, prefix: str) -> None:
    loc = location.parse(url)
    assert (loc.name, loc.bucket, loc.prefix) == (name, bucket, prefix)
    assert location.destination(Path("/j"), loc) == Path("/j") / name


def test_local_locations() -> None:
    assert location.parse("file:///srv/code/").name == "code"
    assert location.parse("/srv/code").path == Path("/srv/code")


@pytest.mark.parametrize("url, needle", [
    ("s3:///x", "no bucket name"),
    ("s3://", "no bucket name"),
    ("http://host/x", "unknown scheme"),
    ("s3://UPPER/x", "not a valid bucket name"),
    ("s3://b0b/../x", "'..'"),
    ("file://relative", "absolute path"),
])
def test_bad_locations(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        location.parse(url)


def test_settings_defaults_and_errors(tmp_path: Path) -> None:
    s = settings.load({"BOOTSTRAP_HOME": str(tmp_path)})
    assert s.job_dir == tmp_path / "user-job-dir"
    assert s.code is None and s.transfer.workers == 256
    for name, value in [("BOOTSTRAP_DOWNLOAD_WORKERS", "abc"), ("BOOTSTRAP_DOWNLOAD_WORKERS", "0"),
                        ("BOOTSTRAP_PEER_TIMEOUT", "-1"), ("BOOTSTRAP_PEER_TIMEOUT", "nan"),
                        ("BOOTSTRAP_LOG_FORMAT", "xml"), ("BOOTSTRAP_S3_ADDRESSING", "x")]:
        with pytest.raises(ConfigError, match=name):
            settings.load({"BOOTSTRAP_HOME": str(tmp_path), name: value})


@pytest.mark.parametrize("key", [
    "p/../x", "p/a/../../x", "p//abs", "p/a//b", "p/a\\..\\b", "p/nul\0", "p/./x",
    "p/" + "n" * 256,
])
def test_hostile_keys_are_refused(key: str) -> None:
    with pytest.raises(DownloadError, match="refusing object key"):
        relative_path(key, "p/")


def test_normal_keys() -> None:
    assert relative_path("p/a b/ü.py", "p/") == ("a b/ü.py", False)
    assert relative_path("p/dir/", "p/") == ("dir", True)
    assert relative_path("p/", "p/") is None


def test_redactor_hides_secrets_everywhere() -> None:
    r = Redactor({"AWS_SECRET_ACCESS_KEY": "SEKRETVALUE123", "MY_API_TOKEN": "tok-42-xyz",
                  "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"})
    text = r("url https://x/?k=SEKRETVALUE123 tok-42-xyz key AKIDEXAMPLE --password=hunter2")
    assert "SEKRETVALUE123" not in text and "tok-42-xyz" not in text
    assert "AKIDEXAMPLE" not in text and "AKID***" in text
    assert "hunter2" not in text
