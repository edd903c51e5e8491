"""The README documents every variable the bootstrap reads or exports."""

from __future__ import annotations

import re

from tests.conftest import REPO

NAME = re.compile(r'"((?:BOOTSTRAP|DLS|BATCH|VC|MA|S3|OBS|AWS|PET|CUDA|NVIDIA|PIP|TF|NCCL|GLOO|'
                  r'OMPI)_[A-Z0-9_]+|'
                  r'MASTER_ADDR|MASTER_PORT|NNODES|NODE_RANK|WORLD_SIZE|RANK|TMPDIR|PYTHONPATH|'
                  r'PYTHONUNBUFFERED)"')


def test_every_variable_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    used = set()
    for path in (REPO / "bootstrap").rglob("*.py"):  # subpackages too (storage/)
        used.update(NAME.findall(path.read_text()))
    used.update(re.findall(r"\b(BOOTSTRAP_[A-Z_]+)\b", (REPO / "scripts/run_train.sh").read_text()))
    assert used, "the scan found nothing: the pattern is broken"
    missing = sorted(v for v in used if f"`{v}`" not in readme and
                     not (v.startswith("PET_") and "`PET_*`" in readme))
    assert missing == [], f"not in README.md: {missing}"
