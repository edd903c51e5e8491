#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up .venv (and the Debian packages
# the multi-node and docker tests need, apt-installed on this host when run as root),
# lint, type-check bootstrap, tests, devtools and bench, then pytest. Exit non-zero on any
# failure; pytest's "no tests ran" (5) counts as one.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/dev/setup-dev.sh test
# Debian packages for the network-namespace and docker tests: installed on this host
# (as root) when missing. See README, "Development".
bash scripts/dev/setup-system.sh
# The engines that need environments of their own (tests/test_engines.py).
bash scripts/dev/setup-engines.sh
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
