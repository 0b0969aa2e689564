"""Coordinator failover on real Fashion-MNIST (issue 12's targets).

    python benchmarks/bench_failover.py [--timeout 3] [--config configs/fashion_mnist.yaml] [--repeats 3]

4 workers, ULFM. Rank 0 is killed, exits, raises or hangs at 40 % of the rounds, one launch each, no relaunch
(``remap: full``, so the deputy's rows all go to the other workers): exit code, one metrics row per round,
final accuracy against the fault-free run, takeover time (the fault -> the new coordinator's first round
message) against its bound (1 s for kill, ``executor.timeout`` + 1 s for the others), rounds redone. Then the
replication overhead: median round time with and without a deputy (``executor.deputy``), ``--repeats`` runs
each. Writes benchmarks/results/failover.{json,md} (or failover-<config>.{json,md} for another config).
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import machine, rotated, run, write  # noqa: E402


def _rows(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=3.0, help="executor.timeout for the runs (seconds)")
    ap.add_argument("--config", default="configs/fashion_mnist.yaml")
    ap.add_argument("--repeats", type=int, default=3, help="runs with and without a deputy for the overhead")
    ap.add_argument("--kinds", default="kill,exit,raise,hang", help="rank 0 faults, comma separated ('' for none)")
    ap.add_argument("--name", help="results file name (default failover, or failover-<config>)")
    ap.add_argument("--overhead-workers", type=int, default=4,
                    help="workers in the overhead runs (1: two ranks, a core each on this machine)")
    ap.add_argument("--standby", type=int, default=1, help="also rank 0 killed with executor.standby_coordinator")
    args = ap.parse_args()
    from ftmpi.config import load_config

    cfg = load_config(args.config)
    rounds = math.ceil(cfg.model.n_iterations / cfg.executor.comm_period)
    at = rounds * 2 // 5
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-failover-"))
    common = ("--set", f"executor.timeout={args.timeout}", "--set", "executor.remap=full")
    res: dict = {"machine": machine(), "config": args.config, "timeout": args.timeout, "rounds": rounds,
                 "fault_round": at}
    base = run(4, args.config, tmp / "base", *common)
    res["fault_free"] = {"test_acc": base["final_test_acc"], "wall": base["outer_wall"], "rc": base["rc"]}
    rows = []
    cases = [(k, 4, ()) for k in args.kinds.split(",") if k]
    if args.standby:  # a fifth rank that trains nothing: the same 4 workers train, nothing is handed over
        cases.append(("kill", 5, ("--set", "executor.standby_coordinator=true")))
    for kind, ranks, extra in cases:
        label = kind + (" (standby coordinator)" if extra else "")
        d = tmp / f"rank0-{kind}{'-standby' if extra else ''}"
        s = run(ranks, args.config, d, "--inject", f"{kind}:0@{at}", *common, *extra)
        c = (s.get("coordinator_changes") or [{}])[0]
        got = [int(r["round"]) for r in _rows(d)]
        bound = 1.0 if kind == "kill" else args.timeout + 1.0
        tt = c.get("takeover_time")
        acc = s.get("final_test_acc")
        delta = None if acc is None else 100 * (acc - base["final_test_acc"])
        r = {"rc": s["rc"], "status": s.get("status"), "rows_ok": got == list(range(rounds)),
             "how": c.get("how"), "new": c.get("new"), "detection_latency": c.get("detection_latency"),
             "takeover_time": tt, "bound": bound, "within_bound": tt is not None and tt <= bound,
             "rounds_redone": c.get("rounds_redone"), "test_acc": acc, "delta_points": delta,
             "coverage": s.get("coverage"), "wall": s["outer_wall"], "killed": c.get("killed")}
        res[f"rank0_{kind}{'_standby' if extra else ''}"] = r
        rows.append((label, r))
    over: dict = {"deputy_true": [], "deputy_false": []}
    for i in range(args.repeats):  # interleaved, so that a change of the machine's load hits both alike
        for _, deputy in rotated(["true", "false"], i):  # each first in every other repeat
            med = over[f"deputy_{deputy}"]
            d = tmp / f"over-{deputy}-{i}"
            s = run(args.overhead_workers, args.config, d, "--set", f"executor.deputy={deputy}", *common)
            times = [float(x["round_time"]) for x in _rows(d)[1:]]  # round 0 includes the start-up
            if times:
                med.append(statistics.median(times))
                over.setdefault(f"rounds_{deputy}", []).extend(times)
            if deputy == "true":
                dep = s.get("deputy") or {}
                over.setdefault("replica_bytes", []).append(dep.get("bytes"))
                if dep.get("replicas"):  # rank 0's own cost per round: build, pickle, isend
                    over.setdefault("replica_ms_per_round", []).append(1000 * dep["seconds"] / dep["replicas"])
    if not args.repeats:
        over = {"deputy_true": [], "deputy_false": []}
    m_on = statistics.median(over["deputy_true"]) if over["deputy_true"] else float("nan")
    m_off = statistics.median(over["deputy_false"]) if over["deputy_false"] else float("nan")
    over["overhead_pct"] = 100 * (m_on - m_off) / m_off if m_off else None
    # less noisy: every round of every run pooled, and the runs taken in pairs (one with, one without, back to
    # back), so that a change of the machine's load between pairs cancels
    pooled = {k: statistics.median(over.pop(f"rounds_{k}", []) or [float("nan")]) for k in ("true", "false")}
    over["pooled_ms"] = {k: 1000 * v for k, v in pooled.items()}
    over["pooled_pct"] = 100 * (pooled["true"] / pooled["false"] - 1)
    pairs = [100 * (a / b - 1) for a, b in zip(over["deputy_true"], over["deputy_false"], strict=False)]
    over["paired_pct"] = pairs
    over["paired_median_pct"] = statistics.median(pairs) if pairs else None
    res["overhead"] = over

    md = [f"# Coordinator failover ({args.config}, 4 workers, ULFM, timeout {args.timeout:g} s, fault at round "
          f"{at} of {rounds})", "",
          f"Fault-free: test accuracy {base['final_test_acc']:.4f}, {base['outer_wall']:.1f} s.", "",
          "| rank 0 | exit | status | one row per round | detected by | takeover (s) | bound | rounds redone | "
          "accuracy | vs fault-free (points) | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, r in rows:
        tt = "—" if r["takeover_time"] is None else f"{r['takeover_time']:.3f}"
        acc = "—" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
        dp = "—" if r["delta_points"] is None else f"{r['delta_points']:+.2f}"
        md.append(f"| {kind} | {r['rc']} | {r['status']} | {r['rows_ok']} | {r['how']} | {tt} | <= {r['bound']:.1f} "
                  f"| {r['rounds_redone']} | {acc} | {dp} | {r['wall']:.1f} |")
    if args.repeats:
        md += ["", f"Replication overhead ({args.overhead_workers} worker(s)): median round time "
               f"{1000 * m_on:.2f} ms with a deputy, {1000 * m_off:.2f} ms without ({args.repeats} runs each; "
               f"per-run medians {[round(1000 * x, 2) for x in over['deputy_true']]} "
               f"vs {[round(1000 * x, 2) for x in over['deputy_false']]} ms): "
               + (f"{over['overhead_pct']:+.1f} %" if over["overhead_pct"] is not None else "—")
               + (f"; all rounds pooled: {over['pooled_ms']['true']:.2f} vs {over['pooled_ms']['false']:.2f} ms, "
                  f"{over['pooled_pct']:+.1f} %; median of the paired runs' differences "
                  f"{over['paired_median_pct']:+.1f} % (pairs {[round(x, 1) for x in over['paired_pct']]})"
                  if over["paired_pct"] else "")
               + f"; replica bytes per run {over.get('replica_bytes')}; rank 0's time per replica (build, pickle, "
               f"isend; after the broadcast, while the workers train) "
               f"{[round(x, 3) for x in over.get('replica_ms_per_round', [])]} ms.", ""]
    name = args.name or ("failover" if args.config == "configs/fashion_mnist.yaml"
                         else f"failover-{Path(args.config).stem}")
    write(name, res, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
