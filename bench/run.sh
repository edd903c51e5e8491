#!/usr/bin/env bash
# The benchmark in one command: installs the contenders, then runs bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup.sh >/dev/null
exec .venv/bin/python bench/run.py "$@"
