"""Honest update norms, and what the screening rule (ftmpi/core/screen.py) makes of them (issue 23).

    python benchmarks/bench_screen.py                         # the grid, then the fault runs (~15 min, 2 cores)
    python benchmarks/bench_screen.py --render benchmarks/results/screen.json   # the tables again

Part 1, honest runs: real Fashion-MNIST jobs (4 workers unless said), logreg (configs/fashion_mnist.yaml) and
MLP (configs/fashion_mnist_mlp.yaml, 800 iterations as in the handoff study), ``iid`` and ``label-skew``
(Dirichlet 0.3) shards, two regimes: *local* (the configs: 10 local Adam steps, model deltas averaged) and
*sync* (``send_gradients``, ``comm_period: 1``: one minibatch gradient per worker per round), unquantized and
4-bit, a worker SIGKILLed at 40 % (the survivors' norms move when they take its rows), ``unbalanced`` shards
and 2 workers. Rank 0 appends every round's update norms to a trace (``FTMPI_SCREEN_TRACE``) while it
screens with the default rule; the trace is then replayed through :class:`ftmpi.core.screen.Screen` with no
limit, which gives every update's ratio to its reference (the quantity the factor bounds), and the same for
the two halves of the rule alone (the others' median only, the worker's own history only).

Part 2, the same traces with one update scaled by S: the fraction of (round, worker) pairs at which it would
be caught, for a range of S, at the chosen factor.

Part 3, real runs with injected faults (``nan``, ``corrupt`` bit flips and scalings, ``reject_limit``
rounds in a row, a diverging learning rate): rejected or not, lost or not, exit code, accuracy against the
fault-free run.

Writes benchmarks/results/screen.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RESULTS, machine, run, write  # noqa: E402

from ftmpi.config import ExecutorConfig  # noqa: E402
from ftmpi.core.screen import HISTORY, Screen  # noqa: E402

LOGREG, MLP = "configs/fashion_mnist.yaml", "configs/fashion_mnist_mlp.yaml"
SYNC = ("--set", "executor.send_gradients=true", "--set", "executor.comm_period=1")
SKEW = ("--set", "data.partition=label-skew")
ITERS = 800
FACTOR = ExecutorConfig().screen_factor
SCALES = (2, 3, 5, 10, 20, 50, 100, 1000)


def grid() -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(label, config, workers, args) of the honest runs."""
    out = []
    for model, cfg in (("logreg", LOGREG), ("mlp", MLP)):
        base = ("--set", f"model.n_iterations={ITERS}")
        for part, pargs in (("iid", ()), ("label-skew", SKEW)):
            for regime, rargs in (("local", ()), ("sync", SYNC)):
                rounds = ITERS if regime == "sync" else ITERS // 10
                for q in (0, 4):
                    out.append((f"{model} {part} {regime} q{q}", cfg, 4,
                                (*base, *pargs, *rargs, "--set", f"executor.quantize={q}")))
                out.append((f"{model} {part} {regime} q0 kill:2@{int(rounds * 0.4)}", cfg, 4,
                            (*base, *pargs, *rargs, "--inject", f"kill:2@{int(rounds * 0.4)}")))
    out.append(("logreg unbalanced local q0", LOGREG, 4, ("--set", "data.partition=unbalanced")))
    out.append(("logreg label-skew local q0, 2 workers", LOGREG, 2, SKEW))
    out.append(("mlp label-skew local q0, 2 workers", MLP, 2, ("--set", f"model.n_iterations={ITERS}", *SKEW)))
    return out


FAULTS = [  # (label, config, workers, args): logreg local iid unless said; the fault at round 20 of 80
    ("fault-free", LOGREG, 4, ()),
    ("nan:2@20", LOGREG, 4, ("--inject", "nan:2@20")),
    ("corrupt:2@20 (bit flip)", LOGREG, 4, ("--inject", "corrupt:2@20")),
    ("corrupt:2@20:100", LOGREG, 4, ("--inject", "corrupt:2@20:100")),
    ("corrupt:2@20:20", LOGREG, 4, ("--inject", "corrupt:2@20:20")),
    ("corrupt:2@20..22 (3 in a row: lost)", LOGREG, 4,
     ("--inject", "corrupt:2@20", "--inject", "corrupt:2@21:1000", "--inject", "nan:2@22")),
    ("mlp sync label-skew, fault-free", MLP, 4, ("--set", f"model.n_iterations={ITERS}", *SKEW, *SYNC)),
    ("mlp sync label-skew, corrupt:3@300 (bit flip)", MLP, 4,
     ("--set", f"model.n_iterations={ITERS}", *SKEW, *SYNC, "--inject", "corrupt:3@300")),
    ("mlp sync label-skew, nan:3@300", MLP, 4,
     ("--set", f"model.n_iterations={ITERS}", *SKEW, *SYNC, "--inject", "nan:3@300")),
    ("smoke mlp (hidden 32), SGD learning rate 10: NaN", "configs/smoke.yaml", 4,
     ("--set", "model.type=mlp", "--set", "model.hidden=32", "--set", "optimizer.learning_rate=10")),
    ("mlp, SGD learning rate 100: huge but finite", MLP, 4,
     ("--set", f"model.n_iterations={ITERS}", "--set", "optimizer.name=sgd", "--set", "optimizer.learning_rate=100",
      "--set", "optimizer.clip_norm=0")),
]


def replay(trace: list[dict]) -> dict:
    """Every update's ratio to its reference under the rule (no limit), and under each half alone."""
    screen = Screen(math.inf, 10**9)
    rule, others, own = [], [], []
    hist: dict[int, list[float]] = {}
    for row in trace:
        norms = {int(r): float(n) for r, n in row["norms"].items()}
        out = screen.round(row["round"], norms)
        for r, v in out.verdicts.items():
            if v.ratio is not None:
                rule.append((row["round"], r, v.ratio))
            rest = [n for q, n in norms.items() if q != r and math.isfinite(n)]
            if rest and math.isfinite(norms[r]):
                others.append(norms[r] / float(np.median(rest)))
            h = hist.setdefault(r, [])
            if h and math.isfinite(norms[r]):
                own.append(norms[r] / float(np.median(h[-HISTORY:])))
            if math.isfinite(norms[r]):
                h.append(norms[r])
    ratios = np.array([x for *_, x in rule])
    worst = max(rule, key=lambda t: t[2]) if rule else None
    return {"updates": int(sum(len(r["norms"]) for r in trace)), "judged": len(rule),
            "max": float(ratios.max()) if len(ratios) else None,
            "p99": float(np.quantile(ratios, 0.99)) if len(ratios) else None,
            "p50": float(np.median(ratios)) if len(ratios) else None,
            "worst_at": None if worst is None else {"round": worst[0], "rank": worst[1]},
            "max_others_only": max(others, default=None), "max_own_only": max(own, default=None),
            "caught": {str(s): float(np.mean(s * ratios > FACTOR)) if len(ratios) else None for s in SCALES},
            "norm_first": _median_norm(trace[0]) if trace else None,
            "norm_last": _median_norm(trace[-1]) if trace else None}


def _median_norm(row: dict) -> float | None:
    finite = [float(v) for v in row["norms"].values() if math.isfinite(float(v))]
    return float(np.median(finite)) if finite else None


def one(label: str, cfg: str, workers: int, args: tuple[str, ...], tmp: Path, i: int) -> dict:
    trace = tmp / f"trace-{i}.jsonl"
    trace.unlink(missing_ok=True)
    os.environ["FTMPI_SCREEN_TRACE"] = str(trace)
    try:
        s = run(workers, cfg, tmp / f"r{i}", *args, limit=900)
    finally:
        os.environ.pop("FTMPI_SCREEN_TRACE", None)
    rows = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    scr = s.get("screen") or {}
    return {"run": label, "workers": workers, "args": list(args), "exit_code": s.get("exit_code"),
            "status": s.get("status"), "final_test_acc": s.get("final_test_acc"), "rounds": len(rows),
            "rejected": scr.get("rejected"), "rejections": scr.get("rejections", [])[:5],
            "lost": [{"rank": f["rank"], "how": f["how"], "round": f["round"]} for f in s.get("failures", [])],
            "wall": s.get("outer_wall"), **({"replay": replay(rows)} if rows else {})}


def render(doc: dict) -> str:
    f = doc["factor"]
    honest = doc["honest"]
    worst = max((r["replay"]["max"] for r in honest if r.get("replay") and r["replay"]["max"]), default=float("nan"))
    false = sum(r["rejected"] or 0 for r in honest)
    n = sum(r["replay"]["updates"] for r in honest if r.get("replay"))
    md = [f"# Screening the workers' updates (issue 23): honest norms and the factor {f:g}", "",
          f"{len(honest)} honest runs, {n} updates; the largest ratio of an honest update's norm to its reference "
          f"(the larger of the other workers' median this round and its own median over its last {HISTORY} "
          f"accepted): **{worst:.3g}**; the factor {f:g} leaves a margin of {f / worst:.1f}x. "
          f"Updates rejected live in these runs (at the factor {f:g}): **{false}**.", "",
          "| run | rounds | rejected | ratio p50 | p99 | max (where) | others' median only | own history only "
          "| median norm first → last round | final acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in honest:
        p = r.get("replay") or {}
        at = p.get("worst_at") or {}
        md.append(f"| {r['run']} | {r['rounds']} | {r['rejected']} | {_n(p.get('p50'))} | {_n(p.get('p99'))} | "
                  f"{_n(p.get('max'))} (round {at.get('round')}, rank {at.get('rank')}) | "
                  f"{_n(p.get('max_others_only'))} | {_n(p.get('max_own_only'))} | "
                  f"{_n(p.get('norm_first'))} → {_n(p.get('norm_last'))} | {_n(r['final_test_acc'], '.4f')} |")
    oth = max(r["replay"]["max_others_only"] or 0 for r in honest if r.get("replay"))
    own = max(r["replay"]["max_own_only"] or 0 for r in honest if r.get("replay"))
    md += ["", f"Each half of the reference alone comes closer to the limit: the others' median only reaches "
           f"{oth:.3g} (label-skew sync: a worker whose shard holds other classes sends consistently larger "
           f"gradients), the worker's own history only {own:.3g} (a minibatch gradient's noise); the larger of "
           f"the two stays at or below {worst:.3g}. Norms fall by 3 to 4 orders of magnitude over a local run, "
           "and move when a survivor takes a dead worker's rows (mlp label-skew local: the largest ratio, 1.52, "
           "at round 33, right after the kill at 32); neither came near the limit."]
    md += ["", f"What an update scaled by S would meet at the factor {f:g}: the fraction of the honest runs' "
           "(round, worker) updates that, scaled by S with everything else unchanged, are rejected (pooled over "
           "the runs above).", "", "| S | " + " | ".join(str(s) for s in SCALES) + " |",
           "|---|" + "---|" * len(SCALES)]
    pooled = []
    for s in SCALES:
        num = sum(r["replay"]["caught"][str(s)] * r["replay"]["judged"] for r in honest if r.get("replay"))
        den = sum(r["replay"]["judged"] for r in honest if r.get("replay"))
        pooled.append(num / den if den else float("nan"))
    md.append("| caught | " + " | ".join(f"{x:.3f}" for x in pooled) + " |")
    md += ["", "Real runs with injected faults (logreg local iid, 80 rounds, unless said):", "",
           "| run | exit | status | rejected (round: rank) | lost | final acc | vs fault-free |",
           "|---|---|---|---|---|---|---|"]
    ref = {r["run"]: r["final_test_acc"] for r in doc["faults"] if "fault-free" in r["run"]}
    for r in doc["faults"]:
        base = ref.get("mlp sync label-skew, fault-free") if r["run"].startswith("mlp sync") else \
            ref.get("fault-free") if "learning rate" not in r["run"] else None
        acc = r["final_test_acc"]
        delta = f"{acc - base:+.4f}" if isinstance(acc, float) and isinstance(base, float) else ""
        rej = ", ".join(f"{x['round']}: {x['rank']}" for x in r["rejections"]) or "none"
        lost = ", ".join(f"{x['rank']} ({x['how']}, round {x['round']})" for x in r["lost"]) or "none"
        md.append(f"| {r['run']} | {r['exit_code']} | {r['status']} | {rej} | {lost} | {_n(acc, '.4f')} | {delta} |")
    md += ["", "Reading: a NaN or Inf, and a flipped high exponent bit (the update's norm becomes ~1e37), are caught "
           "at the round they happen, and the run ends as without them (within 0.0003 of fault-free). A scaling "
           "is caught from about 20x (87 % of positions; 50x: 99.6 %); below 5x an update cannot be told from "
           "honest spread by its norm (honest updates reach 2.9x their reference); one worker's 5x update "
           "among 4 makes the average twice an honest step. A "
           "learning rate that makes the model NaN stops the run (exit 8, the last finite model checkpointed); "
           "one that blows it up to huge but *finite* values, all workers alike (MLP, SGD at 100: two round-0 "
           "updates rejected, the two that agree accepted), is not caught: screening compares the workers with "
           "each other and with themselves, not with what a sane model looks like.", ""]
    m = doc["machine"]
    md += ["", f"Machine: {m.get('cores')} cores (shared), Python {m.get('python')}, numpy {m.get('numpy')}, "
           f"{m.get('mpi')}, {m.get('date')}. Accuracies are deterministic; times are not reported.", ""]
    return "\n".join(md)


def _n(x: object, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and x is not None else "–"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", help="re-render the markdown of a results JSON")
    ap.add_argument("--only", choices=("honest", "faults"), help="run one part only")
    a = ap.parse_args()
    if a.render:
        doc = json.loads(Path(a.render).read_text())
        (RESULTS / "screen.md").write_text(render(doc))
        print(render(doc))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-screen-"))
    old = RESULTS / "screen.json"
    doc = json.loads(old.read_text()) if a.only and old.exists() else {}
    doc.update({"machine": machine(), "factor": FACTOR, "history": HISTORY})
    i = 0
    for part, runs in (("honest", grid()), ("faults", FAULTS)):
        if a.only and a.only != part:
            continue
        doc[part] = []
        for label, cfg, w, args in runs:
            doc[part].append(one(label, cfg, w, args, tmp, i))
            i += 1
            r = doc[part][-1]
            print(json.dumps({k: r.get(k) for k in ("run", "exit_code", "rejected", "final_test_acc")}
                             | {"max": (r.get("replay") or {}).get("max")}), flush=True)
    write("screen", doc, render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
