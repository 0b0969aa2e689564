"""Stragglers (issue 25): one worker 4x slower, with and without quorum rounds, on real Fashion-MNIST.

    nice python benchmarks/bench_straggler.py [--repeats 3] [--rules-repeats 2]

4 workers, logistic regression (configs/fashion_mnist.yaml, 80 rounds, evaluated every 4). World rank 2 is
``slowdown:2@0:4`` from the first round (each local step followed by 3x its duration of sleep). Per partition
(``iid``, ``label-skew``), in interleaved runs: fault-free; the slowdown without the feature (quorum 1.0: every
round waits for the straggler); the slowdown with ``executor.quorum: 0.75`` and every other key at its
default (quorum rounds, late replies folded, the straggler rebalanced). Time to 84 %: rank 0's wall clock
(``metrics.csv`` ``wall``, as ``executor.target_accuracy`` would stop) at the first evaluated row at or above
0.84 (0.82 on label-skew, where the fault-free run ends near 0.83), and the training time to it: the same
less the moment round 0 went out (start-up differs by tenths of a second between identical runs and has
nothing to do with a straggler; the "vs fault-free" ratio is of training times); final accuracy after all 80 rounds; on
label-skew, the accuracy of the slow worker's classes (those of which it holds the most rows at the deal).

The late-reply rule (``executor.late_weight``): label-skew, ``slowdown:2@0:3``, quorum 0.75, rebalancing off
(``straggler_window: 1000``) and ``max_staleness: 4`` so that the slow worker's every reply is late, under
``full`` (1), ``inverse`` (1/(1+s)) and ``drop`` (a first-K-of-N quorum), against fault-free.

Writes benchmarks/results/straggler.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import held_classes, machine, rotated, run, write  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
SLOW = ["--inject", "slowdown:2@0:4"]
TARGET = {"iid": 0.84, "label-skew": 0.82}  # a linear model on label-skew shards ends near 0.83: its target is 82 %
VARIANTS = [("fault-free", []), ("slowdown, quorum 1.0 (without)", SLOW),
            ("slowdown, quorum 0.75 (with)", [*SLOW, "--set", "executor.quorum=0.75"])]
RULES = [("fault-free", []), *[(f"late_weight {w}", ["--inject", "slowdown:2@0:3", "--set", "executor.quorum=0.75",
                                                       "--set", "executor.straggler_window=1000", "--set",
                                                       "executor.max_staleness=4", "--set",
                                                       f"executor.late_weight={w}"])
                                 for w in ("full", "inverse", "drop")]]


def measure(run_dir: Path, summary: dict, target: float) -> dict:
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    hit = next((r for r in rows if float(r["test_acc"]) >= target), None)
    mine = held_classes(summary)  # world rank 2's classes
    per_class = summary.get("per_class_acc") or []
    return {"status": summary.get("status"), "lost": [f["rank"] for f in summary.get("failures", [])],
            "final_acc": summary.get("final_test_acc"), "target": target, "t84": float(hit["wall"]) if hit else None,
            # from when round 0 went out: start-up, which differs by tenths of a second between identical runs, left out
            "t84_train": float(hit["wall"]) - float(rows[0]["wall"]) + float(rows[0]["round_time"]) if hit else None,
            "round84": int(hit["round"]) if hit else None, "wall": summary.get("wall_seconds"),
            "outer_wall": summary.get("outer_wall"), "slow_classes": mine,
            "slow_class_acc": statistics.mean(per_class[c] for c in mine) if mine and per_class else None,
            "late_folded": sum(int(r.get("late_folded") or 0) for r in rows),
            "late_dropped": int(rows[-1].get("late_dropped") or 0) if rows else 0,
            "rebalanced_rounds": sum(1 for r in rows if int(r.get("rebalanced") or 0) > 0),
            "median_round_ms": 1000 * statistics.median(float(r["round_time"]) for r in rows[1:]) if rows else None}


def series(tmp: Path, name: str, variants: list, partitions: list[str], repeats: int, seeds: bool = True) -> list[dict]:
    out = []
    for rep in range(repeats):  # interleaved: one run of each variant, then again
        seed = ["--set", f"model.seed={rep}"] if seeds else []  # the same deal, another init and minibatches
        for part in partitions:
            for i, (label, args) in rotated(variants, rep):  # each variant in each place equally often
                d = tmp / f"{name}-{part}-{i}-{rep}"
                s = run(4, CONFIG, d, "--set", f"data.partition={part}", *seed, *args)
                row = {"series": name, "partition": part, "variant": label, "repeat": rep,
                       **measure(d, s, TARGET[part])}
                out.append(row)
                print(row, flush=True)
    return out


def machine_line() -> str:
    m = machine()
    return (f"{m['date']}, {m['cores']} cores, load average (1 min) {os.getloadavg()[0]:.1f} at the end; "
            "times on a 2-core machine vary by tens of percent between identical runs: rounds to target and "
            "accuracies do not")


def per_repeat(rows: list[dict], variants: list, partitions: list[str]) -> list[str]:
    """Each repeat's training-time ratio and rounds to target against the fault-free run of the same repeat."""
    md = ["Per repeat (training time to target over the same repeat's fault-free run; rounds to target):", "",
          "| partition | run | ratios | median ratio | rounds (fault-free rounds) |", "|---|---|---|---|---|"]
    for part in partitions:
        ref = {r["repeat"]: r for r in rows if r["partition"] == part and r["variant"] == variants[0][0]}
        for label, _ in variants[1:]:
            rs = [r for r in rows if r["partition"] == part and r["variant"] == label]
            ratios = [r["t84_train"] / ref[r["repeat"]]["t84_train"] for r in rs
                      if r["t84_train"] and ref.get(r["repeat"], {}).get("t84_train")]
            rounds = ", ".join(f"{r['round84']} ({ref[r['repeat']]['round84']})" for r in rs if r["repeat"] in ref)
            md.append(f"| {part} | {label} | {', '.join(f'{x:.2f}' for x in ratios)} | "
                      f"{statistics.median(ratios) if ratios else float('nan'):.2f}× | {rounds} |")
    return md


def med(rows: list[dict], key: str) -> float | None:
    v = [r[key] for r in rows if r[key] is not None]
    return statistics.median(v) if v else None


def table(rows: list[dict], variants: list, partitions: list[str]) -> list[str]:
    md = ["| partition (target) | run | time to target (s, median) | training time to target (s, median) | "
          "vs fault-free (training time) | rounds to target | final acc | "
          "Δ acc (pts) "
          "| slow worker's classes acc | Δ (pts) | median round (ms) | late folded / dropped | rounds rebalanced | "
          "lost |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for part in partitions:
        ref = [r for r in rows if r["partition"] == part and r["variant"] == variants[0][0]]
        t0, a0, c0 = med(ref, "t84_train"), med(ref, "final_acc"), med(ref, "slow_class_acc")
        for label, _ in variants:
            rs = [r for r in rows if r["partition"] == part and r["variant"] == label]
            t, a, c = med(rs, "t84_train"), med(rs, "final_acc"), med(rs, "slow_class_acc")
            fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
            md.append(f"| {part} ({TARGET[part]:.0%}) | {label} | {fmt(med(rs, 't84'), '.2f')} | {fmt(t, '.2f')} | "
                      f"{fmt(t / t0 if t and t0 else None, '.2f')}× | "
                      f"{fmt(med(rs, 'round84'), '.0f')} | {fmt(a, '.4f')} | "
                      f"{fmt(100 * (a - a0) if a is not None and a0 is not None else None, '+.2f')} | "
                      f"{fmt(c, '.4f')} | {fmt(100 * (c - c0) if c is not None and c0 is not None else None, '+.2f')} "
                      f"| {fmt(med(rs, 'median_round_ms'), '.1f')} | {med(rs, 'late_folded'):.0f} / "
                      f"{med(rs, 'late_dropped'):.0f} | {med(rs, 'rebalanced_rounds'):.0f} | "
                      f"{sorted({x for r in rs for x in r['lost']}) or 'none'} |")
    return md


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rules-repeats", type=int, default=2)
    ap.add_argument("--partitions", default="iid,label-skew")
    ap.add_argument("--same-seed", action="store_true",
                    help="every repeat with model.seed 0 (timing repeats); default: repeat k with model.seed=k")
    a = ap.parse_args()
    parts = a.partitions.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-straggler-"))
    rows = series(tmp, "main", VARIANTS, parts, a.repeats, not a.same_seed)
    rules = series(tmp, "rules", RULES, ["label-skew"], a.rules_repeats, not a.same_seed) if a.rules_repeats > 0 else []
    how = "repeat k with model.seed=k" if not a.same_seed else "every repeat model.seed=0"
    md = [f"`{' '.join(['nice python benchmarks/bench_straggler.py', *sys.argv[1:]])}`, {machine_line()}", "",
          f"Main comparison ({a.repeats} repeats, {how}; medians over the repeats; every run interleaved):", "",
          *table(rows, VARIANTS, parts), "", *per_repeat(rows, VARIANTS, parts)]
    if rules:
        md += ["", "Late-reply rule (label-skew, `slowdown:2@0:3`, quorum 0.75, rebalancing off, max_staleness 4):",
               "", *table(rules, RULES, ["label-skew"])]
    write("straggler", {"machine": machine(), "config": CONFIG, "target": TARGET, "runs": rows, "rules": rules},
          "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
