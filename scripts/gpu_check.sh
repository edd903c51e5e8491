#!/usr/bin/env bash
# The full preflight against this machine's real GPUs (no fake): the same checks a
# job runs before its command, printed as the report and as JSON. Run it on a GPU
# node (or in the image, with the host's driver mounted):
#
#     bash scripts/gpu_check.sh            # uses .venv when present, else python3
#
# Exit 0 when the node can train, 4 when a fatal check failed, 2 on bad settings.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${BOOTSTRAP_PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
"$PY" -m bootstrap check
rc=$?
"$PY" -m bootstrap check --json > "${TMPDIR:-/tmp}/bootstrap-gpu-check.json"
echo "JSON report: ${TMPDIR:-/tmp}/bootstrap-gpu-check.json (exit $rc)"
# The Xid watch a supervised job runs beside its command (NVML's event API), for 3 s:
# it must register on every GPU without error; a healthy node reports no event.
"$PY" - <<'PYEOF' || rc=$?
import time
from bootstrap.node.xid import XidWatch, describe
watch = XidWatch("pynvml")
watch.start()
time.sleep(3)
events = watch.stop()
print("xid watch:", watch.note or "registered on every GPU", "| events:",
      describe(events) or "none")
raise SystemExit(1 if watch.note.startswith("Xid watch stopped") else 0)  # no NVML: CPU node
PYEOF
exit $rc
