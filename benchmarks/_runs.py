"""Shared by the end-to-end benchmarks: run a real job through jobs/local.sh and time it from outside."""
from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(workers: int, config: str, run_dir: Path, *args: str, limit: float = 600) -> dict:
    """Run one job; return its summary plus ``outer_wall`` (seconds, mpirun start-up included) and ``rc``."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHON=sys.executable, FTMPI_JOB_TIMEOUT=str(int(limit)))
    cmd = ["bash", str(ROOT / "jobs" / "local.sh"), str(workers), config, "--run-dir", str(run_dir), "--quiet",
           *args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"status": "missing"}
    summary["outer_wall"] = wall
    summary["rc"] = p.returncode
    if p.returncode not in (0,) and summary.get("status") != "completed":
        sys.stderr.write(f"run {' '.join(cmd)} -> rc {p.returncode}\n{p.stderr[-2000:]}\n")
    return summary


def rotated(variants: list, k: int) -> list[tuple[int, Any]]:
    """``(index, variant)`` pairs in the order repeat ``k`` runs them: the list rotated to start at ``k`` modulo
    its length, so that over ``len(variants)`` repeats every variant runs in every place of the sequence once.
    Measured here (``bench_spares.py``, 20 repeats): of three identical fault-free runs in a row, the 2nd and
    3rd ran their rounds ~4 % slower than the 1st; a fixed order charges that to whichever variant comes later."""
    n = len(variants)
    return [(i % n, variants[i % n]) for i in range(k, k + n)]


def held_classes(summary: dict, index: int = 1) -> list[int]:
    """The classes of which the ``index``-th worker (world ranks 1.. in order: rank 2 is index 1) held the most rows
    at the deal (``summary.json`` ``class_histogram``); empty when unknown."""
    hist = summary.get("class_histogram") or []
    if len(hist) <= index:
        return []
    return [c for c in range(len(hist[index])) if hist[index][c] == max(h[c] for h in hist)]


def machine() -> dict:
    import numpy

    try:
        ompi = subprocess.run(["ompi_info", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        ompi = "?"
    return {"python": platform.python_version(), "numpy": numpy.__version__, "cores": os.cpu_count(),
            "mpi": ompi, "date": time.strftime("%Y-%m-%d %H:%M")}


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def round_ms(run_dir: Path) -> float | None:
    """The median round time of a run (``metrics.csv`` ``round_time``, round 0 left out), in ms."""
    try:
        with open(run_dir / "metrics.csv") as fh:
            t = [float(r["round_time"]) for r in list(csv.DictReader(fh))[1:]]
    except (OSError, KeyError, ValueError):
        return None
    return 1000 * statistics.median(t) if t else None

