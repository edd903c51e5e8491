"""Landing (bootstrap/landing.py): a file is whole or absent, a symlink is replaced and
never followed, temporaries have one scheme and a sweep finds them all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootstrap import landing
from bootstrap.errors import DownloadError


def test_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    landing.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # rename(2) onto a non-empty folder fails
    with pytest.raises(OSError):
        landing.write_text(target, "x")
    assert (target / "inside").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_mode_is_set_whatever_the_umask_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    link = tmp_path / "hostfile"
    link.symlink_to(outside)
    old = os.umask(0o077)
    try:
        landing.write_text(link, "node0 slots=8\n", mode=0o644)
    finally:
        os.umask(old)
    assert not link.is_symlink() and link.read_text() == "node0 slots=8\n"
    assert outside.read_text() == "keep"
    assert link.stat().st_mode & 0o777 == 0o644


def test_temporary_names_are_hidden_short_distinct_and_swept(tmp_path: Path) -> None:
    long_name = tmp_path / ("n" * 255)  # a name at NAME_MAX still has a temporary beside it
    names = {landing.temporary(tmp_path) for _ in range(1000)}
    assert len(names) == 1000
    for name in list(names)[:3]:
        base = os.path.basename(name)
        assert base.startswith(".") and base.endswith(landing.TMP_SUFFIX) and len(base) < 40
    landing.write_text(long_name, "x")
    (tmp_path / "sub").mkdir()
    left = [Path(landing.temporary(tmp_path)), Path(landing.temporary(tmp_path / "sub"))]
    for path in left:
        path.write_bytes(b"half")  # what a killed run leaves
    (tmp_path / "sub" / "keep.txt").write_text("mine")
    assert landing.sweep(tmp_path) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["n" * 255, "sub", "sub/keep.txt"]


def test_a_commit_onto_a_folder_says_what_to_do_and_leaves_no_temporary(
        tmp_path: Path) -> None:
    (tmp_path / "data" / "inside").mkdir(parents=True)
    tmp = landing.temporary(tmp_path)
    Path(tmp).write_bytes(b"body")
    with pytest.raises(DownloadError, match="is a folder but the bucket holds a file"):
        landing.commit(tmp, tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_write_all_writes_a_body_larger_than_a_slice_at_its_offset(tmp_path: Path) -> None:
    body = os.urandom(landing.WRITE_SLICE * 3 + 17)
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        landing.write_all(fd, b"head")
        landing.write_all(fd, memoryview(body), 4)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + body


def test_a_switch_moves_the_link_in_one_rename(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    link = tmp_path / "data"
    landing.switch(link, tmp_path / "v1")
    landing.switch(link, tmp_path / "v2")
    assert os.readlink(link) == str(tmp_path / "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "v1", "v2"]
