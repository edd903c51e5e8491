#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up .venv (and the Debian packages
# the multi-node tests need), lint, type-check, then pytest. Exit non-zero on any
# failure; pytest's "no tests ran" (5) counts as one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-dev.sh
if [ -x scripts/setup-system.sh ]; then bash scripts/setup-system.sh; fi
.venv/bin/ruff check bootstrap tests devtools bench
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
