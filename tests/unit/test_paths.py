"""Path safety: which object keys may become files here, and how folders are made."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.errors import DownloadError
from bootstrap.transfer.paths import NAME_MAX, SafeDirs, relative_path


def test_keys_under_the_prefix_become_relative_paths() -> None:
    assert relative_path("code/a/b.py", "code/") == ("a/b.py", False)
    assert relative_path("code/a/", "code/") == ("a", True)
    assert relative_path("code/", "code/") is None  # the prefix's own marker
    assert relative_path("top.py", "") == ("top.py", False)
    assert relative_path("code/" + "n" * NAME_MAX, "code/") == ("n" * NAME_MAX, False)


@pytest.mark.parametrize("rel, why", [
    ("../x", "'..'"), ("a/../../x", "'..'"), ("/abs", "absolute"), ("a//b", "empty"),
    ("./x", "'.'"), ("a\\..\\b", "backslash"), ("nul\0", "NUL"),
    ("n" * (NAME_MAX + 1), "longer than"),
])
def test_hostile_keys_are_refused(rel: str, why: str) -> None:
    with pytest.raises(DownloadError, match=why):
        relative_path("code/" + rel, "code/")


def test_safe_dirs_never_write_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    dirs = SafeDirs(root)
    assert dirs.ensure("a/b") == root / "a" / "b" and (root / "a" / "b").is_dir()
    with pytest.raises(DownloadError, match="symlink"):
        dirs.ensure("link/x")
    assert list(outside.iterdir()) == []
    (root / "file").write_text("")
    with pytest.raises(DownloadError, match="is a file"):
        dirs.ensure("file/x")
