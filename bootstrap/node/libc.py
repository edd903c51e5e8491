"""Which GNU C library a set of binaries needs, read from their ELF files, and which one
this machine has.

The floor of the self-contained runtime is not a claim: it is the highest ``GLIBC_x.y``
symbol version that any of its ELF files (the interpreter, the extension modules, the
wheels' libraries) asks for, read from their ``.gnu.version_r`` sections. The build
writes it to ``<runtime>/glibc-floor``; ``run_train.sh`` compares the image's glibc with
it before starting the runtime (one clear line instead of the loader's "GLIBC_2.xx not
found"); ``bootstrap-check --image`` shows both.

    python -m bootstrap.node.libc DIR      prints the floor of the ELF files under DIR
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

_SHT_GNU_VERNEED = 0x6FFFFFFE


def versions_needed(path: Path) -> set[str]:
    """The symbol versions (``GLIBC_2.17``, ``GLIBC_2.2.5``, ...) an ELF file needs from
    any library; empty for anything that is not a 64-bit little-endian ELF file."""
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return set()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    found: set[str] = set()
    for _name, kind, _flags, _addr, offset, _size, link, info, _align, _ent in sections:
        if kind != _SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]
        entry = offset
        for _ in range(info):  # sh_info: the number of Verneed entries
            _version, count, _file, aux, following = struct.unpack_from("<HHIII", data, entry)
            at = entry + aux
            for _ in range(count):
                _hash, _flags2, _other, name, nxt = struct.unpack_from("<IHHII", data, at)
                end = data.index(b"\0", strtab + name)
                found.add(data[strtab + name:end].decode("ascii", "replace"))
                at += nxt
            entry += following
    return found


def _glibc(version: str) -> tuple[int, ...] | None:
    if not version.startswith("GLIBC_"):
        return None
    try:
        return tuple(int(p) for p in version[6:].split("."))
    except ValueError:
        return None  # GLIBC_PRIVATE


def _elf_files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        yield path


def floor(root: Path) -> tuple[tuple[int, ...], Path | None]:
    """The highest glibc version any ELF file under ``root`` needs, and that file."""
    best: tuple[int, ...] = (2, 2, 5)
    where: Path | None = None
    for path in _elf_files(root):
        for version in versions_needed(path):
            number = _glibc(version)
            if number is not None and number > best:
                best, where = number, path
    return best, where


def this_machine() -> str | None:
    """This machine's glibc version ("2.36"), None on another C library (musl)."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    return found.split()[-1] if found and found.startswith("glibc") else None


def main(argv: list[str]) -> int:
    version, where = floor(Path(argv[0]))
    print(".".join(map(str, version)))
    if where is not None:
        print(f"libc: the highest need is {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
