"""The manifest a rerun trusts: what makes a file "unchanged", what invalidates it."""

from __future__ import annotations

import os
from pathlib import Path

from bootstrap.transfer.manifest import Manifest

SRC = "s3://b/code/"


def landed(tmp_path: Path, name: str = "a.py", data: bytes = b"print(1)\n") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def recorded(tmp_path: Path, path: Path, etag: str = "e1", source: str = SRC) -> Path:
    where = tmp_path / ".manifest.jsonl"
    m = Manifest(where, source)
    m.open_for_append()
    m.record(path.name, path.stat().st_size, etag, path)
    m.close()
    return where


def test_a_recorded_file_is_unchanged_on_the_next_run(tmp_path: Path) -> None:
    path = landed(tmp_path)
    where = recorded(tmp_path, path)
    assert Manifest(where, SRC).unchanged("a.py", path.stat().st_size, "e1", path)


def test_what_invalidates_an_entry(tmp_path: Path) -> None:
    path = landed(tmp_path)
    size = path.stat().st_size
    where = recorded(tmp_path, path)
    m = Manifest(where, SRC)
    assert not m.unchanged("a.py", size, "e2", path)  # the object changed in the bucket
    assert not m.unchanged("a.py", size + 1, "e1", path)
    assert not m.unchanged("b.py", size, "e1", path)  # never recorded
    assert not Manifest(where, "s3://b/other/").unchanged("a.py", size, "e1", path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the user touched it
    assert not Manifest(where, SRC).unchanged("a.py", size, "e1", path)


def test_a_line_cut_by_a_kill_costs_only_that_file(tmp_path: Path) -> None:
    a, b = landed(tmp_path, "a.py"), landed(tmp_path, "b.py")
    where = tmp_path / ".manifest.jsonl"
    m = Manifest(where, SRC)
    m.open_for_append()
    m.record("a.py", a.stat().st_size, "ea", a)
    m.record("b.py", b.stat().st_size, "eb", b)
    m.close()
    where.write_text(where.read_text()[:-7])  # the last line cut short
    again = Manifest(where, SRC)
    assert again.unchanged("a.py", a.stat().st_size, "ea", a)
    assert not again.unchanged("b.py", b.stat().st_size, "eb", b)


def test_a_symlink_in_place_of_the_file_is_never_trusted(tmp_path: Path) -> None:
    path = landed(tmp_path)
    where = recorded(tmp_path, path)
    size = path.stat().st_size
    target = landed(tmp_path, "elsewhere", path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    assert not Manifest(where, SRC).unchanged("a.py", size, "e1", path)
