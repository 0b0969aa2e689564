"""Pool several sittings of ``bench_spares.py`` (issue 24): per-seed time-to-target ratios from their JSONs.

    python benchmarks/pool_spares.py benchmarks/results/spares-a.json benchmarks/results/spares.json ...

For each file and partition, and pooled over all files: kill + spare against fault-free, a waiting spare
against fault-free, kill + spare against the waiting-spare run of the same seed (the same ranks, no fault:
what the kill alone costs), each as the median of the per-seed ratios of training time to target; and the
loss's in-run cost (``loss_cost``, ms). Prints only: the sittings' own Markdown files hold the rest.
"""
from __future__ import annotations

import json
import statistics
import sys

FF, WAIT, KILL = "fault-free", "fault-free, 1 spare", "kill:2@32, 1 spare"


def ratios(rows: list[dict], ref: dict[int, dict]) -> list[float]:
    return [r["t84_train"] / ref[r["repeat"]]["t84_train"] for r in rows
            if r["t84_train"] and ref.get(r["repeat"]) and ref[r["repeat"]]["t84_train"]]


def main(paths: list[str]) -> int:
    pool: dict[tuple[str, str], list[float]] = {}
    for p in paths:
        runs = json.load(open(p))["runs"]
        for part in sorted({r["partition"] for r in runs}):
            of = {v: [r for r in runs if r["partition"] == part and r["variant"] == v] for v in (FF, WAIT, KILL)}
            ff, wait = {r["repeat"]: r for r in of[FF]}, {r["repeat"]: r for r in of[WAIT]}
            got = {"kill/ff": ratios(of[KILL], ff), "wait/ff": ratios(of[WAIT], ff),
                   "kill/wait": ratios(of[KILL], wait),
                   "loss ms": [1000 * r["loss_cost"] for r in of[KILL] if r.get("loss_cost") is not None]}
            print(f"{p}: {part}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in got.items() if v))
            for k, v in got.items():
                pool.setdefault((part, k), []).extend(v)
    for (part, k), v in sorted(pool.items()):
        if v:
            print(f"pooled {part} {k}: n {len(v)}, median {statistics.median(v):.3f}, mean {statistics.mean(v):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
