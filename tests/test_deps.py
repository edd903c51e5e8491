"""Dependencies: the code directory's pip-requirements.txt installed before the command
(offline, from a wheel built here), a failed install's exit 6, and the switch off."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import assert_one_error_line, base_env, run_train

pytestmark = pytest.mark.timeout(300)


def make_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so pip installs offline."""
    files = {"bootdemo_pkg.py": b"VALUE = 42\n",
             "bootdemo_pkg-1.0.dist-info/METADATA":
                 b"Metadata-Version: 2.1\nName: bootdemo-pkg\nVersion: 1.0\n",
             "bootdemo_pkg-1.0.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "bootdemo_pkg-1.0.dist-info/RECORD,,\n"
    path = folder / "bootdemo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bootdemo_pkg-1.0.dist-info/RECORD", record)
    return path


def test_pip_requirements_are_installed_first(home: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    wheel = make_wheel(code)
    (code / "pip-requirements.txt").write_text(f"{wheel.name}\n")
    target = tmp_path / "site"
    env = base_env(home, {"DLS_APP_URL": str(code), "PIP_TARGET": str(target),
                          "PIP_NO_INDEX": "1"})
    r = run_train(["python", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                   "import bootdemo_pkg; print(bootdemo_pkg.VALUE)"], env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42" and "stage deps" in r.stderr
    (code / "pip-requirements.txt").write_text("no-such-package-bootstrap-xyz==9.9\n")
    r = run_train(["true"], env, timeout=180)
    assert r.returncode == 6
    assert_one_error_line(r.stderr, "pip install -r pip-requirements.txt failed")
    r = run_train(["true"], {**env, "BOOTSTRAP_PIP_INSTALL": "0"})
    assert r.returncode == 0
