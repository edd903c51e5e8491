"""Markdown tables from one ``bench/run.py`` result file, for bench/README.md.

    .venv/bin/python bench/report.py bench/results/full-YYYYMMDD-HHMMSS.json

Each cell is the median in seconds with its spread (min-max) and the ratio to s5cmd
on the same data set in the same run; a second table gives CPU per object and peak
RSS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def table(rows: dict[str, dict[str, dict[str, float]]], title: str) -> str:
    names: list[str] = []
    for row in rows.values():
        names += [n for n in row if n not in names]
    out = [f"**{title}** (median s [min-max], × s5cmd)", "",
           "| data set | " + " | ".join(names) + " |",
           "| --- |" + " --- |" * len(names)]
    for label, row in rows.items():
        ref = row["s5cmd"]["median_s"]
        cells = []
        for n in names:
            r = row.get(n)
            cells.append("–" if r is None else
                         f"{r['median_s']:.2f} [{r['min_s']:.2f}-{r['max_s']:.2f}] "
                         f"**{r['median_s'] / ref:.2f}×**")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", f"**{title}: CPU ms per object / peak RSS MiB**", "",
            "| data set | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names)]
    for label, row in rows.items():
        out.append(f"| {label} | " + " | ".join(
            "–" if n not in row else
            f"{row[n]['cpu_ms_per_object']:.2f} / {row[n]['peak_rss_mib']:.0f}"
            for n in names) + " |")
    return "\n".join(out)


def main() -> int:
    data: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    print(f"Run of {data['date']} on {data['machine']}, {data['reps']} repetitions"
          + (f"; outputs on {data['outputs']}" if data.get("outputs") else "") + ".\n")
    print(table(data["results"], "Downloads"))
    if data.get("uploads"):
        print()
        print(table(data["uploads"], "Uploads"))
    if data.get("latency"):
        print()
        print(table(data["latency"], "Latency mode (the store N ms away each way)"))
    s = data["startup"]
    print(f"\nStart-up: `python -c pass` {s['python_ms']:.1f} ms, `run_train.sh python -c pass` "
          f"{s['run_train_ms']:.1f} ms: **{s['overhead_ms']:.1f} ms** of overhead.")
    if data.get("imports"):
        print("Import cost: " + ", ".join(f"{k} {v:.0f} ms" for k, v in data["imports"].items()))
    if data.get("overlap"):
        o = data["overlap"]
        print(f"Code (small2k) and data (mixed1g) in one job start: stages {o['sum_s']:.2f} s "
              f"in sum, the longest {o['longest_s']:.2f} s, the job's wall time "
              f"{o['wall_s']:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
