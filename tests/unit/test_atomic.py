"""The one atomic write: whole or absent, a symlink replaced, never followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootstrap import atomic


def test_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # rename(2) onto a non-empty folder fails
    with pytest.raises(OSError):
        atomic.write_text(target, "x")
    assert (target / "inside").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_mode_is_set_whatever_the_umask_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    link = tmp_path / "hostfile"
    link.symlink_to(outside)
    old = os.umask(0o077)
    try:
        atomic.write_text(link, "node0 slots=8\n", mode=0o644)
    finally:
        os.umask(old)
    assert not link.is_symlink() and link.read_text() == "node0 slots=8\n"
    assert outside.read_text() == "keep"
    assert link.stat().st_mode & 0o777 == 0o644
