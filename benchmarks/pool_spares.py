"""Pool several sittings of ``bench_spares.py`` (issue 24): per-seed time-to-target ratios from their JSONs.

    python benchmarks/pool_spares.py benchmarks/results/spares-a.json benchmarks/results/spares.json ...

For each file and partition, and pooled over all files: kill + spare against fault-free, a waiting spare
against fault-free, kill + spare against the waiting-spare run of the same seed (the same ranks, no fault:
what the kill alone costs), each as the median of the per-seed ratios of training time to target; and the
loss's in-run cost (``loss_cost``, ms). Pooled, each ratio also as its geometric mean (the average that
treats 0.9x and 1.1x alike) with a bootstrap 95 % interval of the median (4000 resamples of the seeds, seed 1).
Prints only: the sittings' own Markdown files hold the rest.
"""
from __future__ import annotations

import json
import random
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
    rng = random.Random(1)
    for (part, k), v in sorted(pool.items()):
        if not v:
            continue
        line = f"pooled {part} {k}: n {len(v)}, median {statistics.median(v):.3f}, mean {statistics.mean(v):.3f}"
        if k != "loss ms" and min(v) > 0:
            boot = sorted(statistics.median(rng.choices(v, k=len(v))) for _ in range(4000))
            line += (f", geometric mean {statistics.geometric_mean(v):.3f}, median's 95 % interval "
                     f"{boot[100]:.3f}-{boot[3899]:.3f}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
