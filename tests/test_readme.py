"""The README documents every variable the bootstrap reads or exports."""

from __future__ import annotations

import ast
import re

from tests.conftest import NAME, REPO, variables_in_code

# Variables that are other programs' and only named in passing (never read or set).
NOT_OURS = {"SSL_CERT_DIR"}


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
