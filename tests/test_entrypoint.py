"""run_train.sh as users type it: command forms, quoting, exit codes, the env contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, RUN_TRAIN, assert_one_error_line, base_env, run_train

NASTY = ["a b", "it's", 'say "hi"', "$HOME", "`id`", "ünï 文件", "--flag=x y", "", "*", "a\\b",
         "semi;colon", "&&", "new\nline"]
PRINT_ARGV = "import json,sys; print(json.dumps(sys.argv[1:]))"


def test_raw_form_preserves_every_argument(home: Path) -> None:
    r = run_train(["python", "-c", PRINT_ARGV, *NASTY], base_env(home))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == NASTY


def test_file_form_resolves_in_cwd_and_preserves_arguments(home: Path, tmp_path: Path) -> None:
    (tmp_path / "show.py").write_text(PRINT_ARGV.replace("; ", "\n"))
    r = run_train(["python", "show.py", *NASTY], base_env(home), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == NASTY
    (tmp_path / "show.sh").write_text('for a in "$@"; do printf "[%s]" "$a"; done\n')
    r = run_train(["bash", "show.sh", "a b", "$x"], base_env(home), cwd=tmp_path)
    assert r.stdout == "[a b][$x]"


def test_shell_form_runs_a_command_line(home: Path) -> None:
    r = run_train(["echo one && echo 'two  three' | tr a-z A-Z"], base_env(home))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "one\nTWO  THREE\n"


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_codes_pass_through(home: Path, code: int) -> None:
    r = run_train(["python", "-c", f"import sys; sys.exit({code})"], base_env(home))
    assert r.returncode == code
    r = run_train([f"exit {code}"], base_env(home))
    assert r.returncode == code


def test_the_command_replaces_the_bootstrap(home: Path) -> None:
    """exec: same pid as the shell that ran run_train.sh, so signals reach the command."""
    proc = subprocess.Popen(["bash", str(RUN_TRAIN), "python", "-c",
                             "import os; print(os.getpid())"],
                            env=base_env(home), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert int(out) == proc.pid


@pytest.mark.parametrize("argv, code, needle", [
    ([], 2, "no command"),
    (["python", "missing.py"], 2, "not found (looked in"),
    (["no-such-command-xyz"], 127, "command not found"),
    (["./not-executable.sh"], 126, "not an executable"),
])
def test_bad_commands(home: Path, tmp_path: Path, argv: list[str], code: int,
                      needle: str) -> None:
    (tmp_path / "not-executable.sh").write_text("echo hi\n")
    r = run_train(argv, base_env(home), cwd=tmp_path)
    assert r.returncode == code
    assert_one_error_line(r.stderr, needle)


def test_env_contract(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "new"
    src.mkdir()
    (src / "show_env.py").write_text(
        "import json, os\nprint(json.dumps({k: os.environ.get(k) for k in "
        "['DLS_USER_HOME_DIR','DLS_USER_JOB_DIR','PYTHONPATH','PYTHONUNBUFFERED',"
        "'BOOTSTRAP_CODE_DIR','DLS_TASK_INDEX','BATCH_CUSTOM0_HOSTS','TMPDIR','CWD']} | "
        "{'CWD': os.getcwd()}))\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = base_env(home, {"DLS_APP_URL": str(src), "DLS_TASK_INDEX": "0",
                          "BATCH_CUSTOM0_HOSTS": "host-0:6666", "PYTHONPATH": "/extra",
                          "BOOTSTRAP_CACHE_DIR": str(cache)})
    r = run_train(["python", "show_env.py"], env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    code = home / "user-job-dir" / "new"
    assert got == {
        "DLS_USER_HOME_DIR": str(home), "DLS_USER_JOB_DIR": str(home / "user-job-dir"),
        "PYTHONPATH": f"{code}:{home / 'user-job-dir'}:/extra", "PYTHONUNBUFFERED": "1",
        "BOOTSTRAP_CODE_DIR": str(code), "DLS_TASK_INDEX": "0",
        "BATCH_CUSTOM0_HOSTS": "host-0:6666", "TMPDIR": str(cache), "CWD": str(code)}
    env["TMPDIR"] = "/mine"
    got = json.loads(run_train(["python", "show_env.py"], env).stdout)
    assert got["TMPDIR"] == "/mine"


@pytest.mark.parametrize("named, cwd", [
    ("{work}/run_train.sh", ""),  # the platform's form: an absolute path
    ("home/work/run_train.sh", ""),  # relative to the working directory
    ("./run_train.sh", "home/work"),
    ("run_train.sh", "home/work"),  # found by bash in the working directory
    ("../work/./run_train.sh", "home/work"),  # . and .. are normalized
    ("{work}//run_train.sh", "")])
def test_run_train_copied_alone_into_an_image_home(tmp_path: Path, named: str,
                                                   cwd: str) -> None:
    """As in an image: /home/work/run_train.sh alone, the bootstrap installed in a Python;
    its home is the folder holding it, however the script was named."""
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    shutil.copy(RUN_TRAIN, work / "run_train.sh")
    env = base_env(work)
    del env["BOOTSTRAP_HOME"]  # the default: the folder holding run_train.sh
    env["PYTHONPATH"] = str(REPO)  # "installed": importable from anywhere
    r = subprocess.run(["bash", named.format(work=work), "python", "-c",
                        "import os; print(os.environ['DLS_USER_JOB_DIR'])"],
                       env=env, cwd=tmp_path / cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(work / "user-job-dir")


def _job_dir_seen(script: Path, env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run(["bash", str(script), "python", "-c",
                        "import os; print(os.environ['DLS_USER_JOB_DIR'])"],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_ma_job_dir_wins_over_the_launchers_default_not_over_an_explicit_home(
        tmp_path: Path) -> None:
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    script = work / "run_train.sh"
    shutil.copy(RUN_TRAIN, script)
    env = base_env(work)
    del env["BOOTSTRAP_HOME"]
    env["PYTHONPATH"] = str(REPO)
    ma_job_dir = tmp_path / "ma-user" / "modelarts" / "user-job-dir"
    env["MA_JOB_DIR"] = str(ma_job_dir)
    assert _job_dir_seen(script, env, tmp_path) == str(ma_job_dir)
    env["BOOTSTRAP_HOME"] = str(tmp_path / "mine")  # set by hand: the user's choice wins
    assert _job_dir_seen(script, env, tmp_path) == str(tmp_path / "mine" / "user-job-dir")


def test_a_run_command_for_the_documented_layout_finds_its_file_in_ma_job_dir(
        tmp_path: Path) -> None:
    """`python /home/work/user-job-dir/new/train.py`, as the platform's docs write it,
    on an image whose job dir is MA_JOB_DIR: the file is found where the code landed."""
    documented = Path("/home/work/user-job-dir/new/train.py")
    assert not documented.exists()  # else the control below would prove nothing
    code = tmp_path / "src" / "new"
    code.mkdir(parents=True)
    (code / "train.py").write_text("import os, sys; print('ran', sys.argv[0])\n")
    env = base_env(tmp_path / "home")
    del env["BOOTSTRAP_HOME"]
    ma_job_dir = tmp_path / "ma" / "user-job-dir"
    env.update(MA_JOB_DIR=str(ma_job_dir), DLS_APP_URL=str(code))
    r = run_train(["python", str(documented)], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ran {ma_job_dir / 'new' / 'train.py'}"
    # Control: a file that is in neither place is still "not found", exit 2.
    r = run_train(["python", "/home/work/user-job-dir/new/missing.py"], env)
    assert r.returncode == 2 and "not found" in r.stderr


def test_no_usable_python_is_one_clear_line(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname", "bash"):
        found = shutil.which(tool)
        assert found is not None, tool
        os.symlink(found, bindir / tool)
    env = {"PATH": str(bindir), "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(RUN_TRAIN), "true"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "BOOTSTRAP_PYTHON")
    r = subprocess.run(["bash", str(RUN_TRAIN), "true"], capture_output=True, text=True,
                       env={**env, "BOOTSTRAP_PYTHON": "/nonexistent/python"}, timeout=60)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "BOOTSTRAP_PYTHON=/nonexistent/python")
    # A Python that exists but lacks the bootstrap (the system one, outside the venv).
    system = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    r = subprocess.run(["bash", str(RUN_TRAIN), "true"], capture_output=True, text=True,
                       env={**env, "BOOTSTRAP_PYTHON": system}, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "cannot import the bootstrap")


def test_json_log_format(home: Path) -> None:
    r = run_train(["true"], base_env(home, {"BOOTSTRAP_LOG_FORMAT": "json"}))
    assert r.returncode == 0
    records = [json.loads(line) for line in r.stderr.splitlines()]
    assert any(rec["msg"].startswith("exec:") for rec in records)


@pytest.mark.parametrize("shadow", ["bootstrap.py", "bootstrap/__init__.py"])
def test_a_users_bootstrap_module_in_the_working_directory_does_not_shadow_ours(
        home: Path, tmp_path: Path, shadow: str) -> None:
    work = tmp_path / "work"
    (work / shadow).parent.mkdir(parents=True, exist_ok=True)
    (work / shadow).write_text("import sys\nprint('SHADOWED')\nsys.exit(99)\n")
    r = run_train(["python", "-c", "print('the job ran')"], base_env(home), cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "the job ran"
    assert "SHADOWED" not in r.stdout + r.stderr


@pytest.mark.parametrize("floor, code", [("99.0", 2), ("2.0", 0)])
def test_an_image_below_the_runtimes_glibc_floor_is_one_clear_line(
        home: Path, tmp_path: Path, floor: str, code: int) -> None:
    """A runtime records the oldest glibc its binaries need (<runtime>/glibc-floor);
    run_train.sh compares the image's before it starts it: one line and exit 2 instead
    of the loader's "GLIBC_2.xx not found" (here a floor no machine meets, and one every
    machine does)."""
    runtime = tmp_path / "runtime"
    (runtime / "bin").mkdir(parents=True)
    (runtime / "bin" / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (runtime / "bin" / "python3").chmod(0o755)
    (runtime / "glibc-floor").write_text(floor + "\n")
    r = run_train(["true"], base_env(home, {"BOOTSTRAP_PYTHON": str(runtime / "bin/python3")}))
    assert r.returncode == code, r.stderr
    if code:
        line = assert_one_error_line(r.stderr, f"needs glibc {floor} or newer",
                                     "this image's glibc is")
        assert "GLIBC_" not in line


def test_an_unknown_bootstrap_variable_is_named_in_a_warning(home: Path) -> None:
    """A typo in a knob's name is told, with the name meant; the job runs as without it,
    and the value (it might be a secret) is not printed."""
    env = base_env(home, {"BOOTSTRAP_DOWNLOAD_WORKER": "s3cr3t-v4lue",
                          "BOOTSTRAP_NO_SUCH_KNOB": "1", "BOOTSTRAP_DEBUG": "0"})
    r = run_train(["python", "-c", "print('ran')"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran"
    warned = [line for line in r.stderr.splitlines() if "reads no such variable" in line]
    assert warned == [
        "run_train: warning: BOOTSTRAP_DOWNLOAD_WORKER is set but this bootstrap reads no such "
        "variable: it has no effect (did you mean BOOTSTRAP_DOWNLOAD_WORKERS?)",
        "run_train: warning: BOOTSTRAP_NO_SUCH_KNOB is set but this bootstrap reads no such "
        "variable: it has no effect (README.md lists them)"], r.stderr
    assert "s3cr3t" not in r.stderr + r.stdout
