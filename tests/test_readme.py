"""The README documents every variable the bootstrap reads or exports."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

NAME = re.compile(r"(?:BOOTSTRAP|DLS|BATCH|VC|MA|S3|OBS|AWS|PET|CUDA|NVIDIA|PIP|TF|NCCL|GLOO|"
                  r"OMPI|SSL|PRTE|HYDRA|PDSH)_[A-Z0-9_]+|MASTER_ADDR|MASTER_PORT|NNODES|NODE_RANK|WORLD_SIZE|"
                  r"RANK|TMPDIR|PYTHONPATH|PYTHONUNBUFFERED")
# Variables that are other programs' and only named in passing (never read or set).
NOT_OURS = {"SSL_CERT_DIR"}


def variables_in_code() -> set[str]:
    """Every string in the bootstrap's code (any quoting, the keys of dicts and the
    arguments of env.get/parse helpers alike) that is a whole variable name of the
    families above; an f-string's pieces are fragments (``BATCH_CUSTOM{i}_HOSTS``), not
    names."""
    found: set[str] = set()
    for path in (REPO / "bootstrap").rglob("*.py"):  # subpackages too (storage/)
        tree = ast.parse(path.read_text())
        pieces = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                  for part in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in pieces and NAME.fullmatch(node.value):
                found.add(node.value)
    return found


def test_every_variable_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    used = variables_in_code()
    used.update(re.findall(r"\b(BOOTSTRAP_[A-Z_]+)\b", (REPO / "scripts/run_train.sh").read_text()))
    assert {"BOOTSTRAP_PEER_FETCH", "DLS_APP_URL", "MASTER_PORT"} <= used, "the scan is broken"
    missing = sorted(v for v in used - NOT_OURS if f"`{v}`" not in readme and
                     not (v.startswith("PET_") and "`PET_*`" in readme))
    assert missing == [], f"not in README.md: {missing}"


def test_the_scan_sees_names_however_they_are_quoted() -> None:
    tree = ast.parse("env.get('BOOTSTRAP_A'); x = {\"DLS_B\": 1}; f'{y}'; z = 'MA_C'")
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and NAME.fullmatch(n.value)}
    assert names == {"BOOTSTRAP_A", "DLS_B", "MA_C"}
