"""The last line of defence (bootstrap.__main__): a missing dependency is the image's
problem (exit 2), a missing name in the bootstrap's own code is a bug (exit 70)."""

from __future__ import annotations

import pytest

from bootstrap import __main__ as entry
from bootstrap.errors import EXIT_INTERNAL, EXIT_USAGE


def raising(exc: BaseException) -> int:
    def body() -> int:
        raise exc

    return entry._run(body)


def test_a_missing_dependency_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert raising(ImportError("No module named 'boto3'", name="boto3")) == EXIT_USAGE
    assert "lacks the bootstrap's dependency 'boto3'" in capsys.readouterr().err


def test_an_import_error_inside_the_bootstrap_is_a_bug(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before: "lacks the bootstrap's dependency 'bootstrap.relay.protocol'" and exit 2.
    code = raising(ImportError("cannot import name 'uniform_part_size'",
                               name="bootstrap.relay.protocol"))
    assert code == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error (ImportError" in err and "lacks" not in err
