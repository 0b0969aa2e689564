"""What handing over a dead worker's points is worth, measured (issue 7).

    python benchmarks/handoff_value.py [--quick] [--seeds 3] [--models logreg,mlp] [--keep DIR]

Fashion-MNIST, 4 workers, logistic regression (configs/fashion_mnist.yaml) and the MLP
(configs/fashion_mnist_mlp.yaml, ``model.n_iterations`` cut to ``--mlp-iterations``), world rank 2 SIGKILLed
at 40% of the rounds, partitions ``label-skew`` (Dirichlet alpha 0.3) and ``iid``. Rows: fault-free,
``remap: none``, ``representative`` with every selection rule at two ``n_most_rep`` sizes, ``full``; each
run once per seed (``model.seed`` seeds the partition, the initial model and the minibatches, so a seed's
runs share the partition and differences between rows are paired). Jobs run one at a time through
jobs/local.sh. Writes benchmarks/results/handoff_value.{json,md} and handoff_classes.png.

The dead worker's classes of a seed are the classes of which rank 2 held more than half of the training
rows in the initial partition (from ``class_histogram`` of the run's summary); their accuracy is the mean
per-class test accuracy over them, the other classes' the mean over the rest.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RESULTS, ROOT, machine, run, write  # noqa: E402

CONFIGS = {"logreg": "configs/fashion_mnist.yaml", "mlp": "configs/fashion_mnist_mlp.yaml"}
DEAD_RANK = 2
WORKERS = 4
SHARE = 0.5  # a class is the dead worker's when it held more than this share of the class's rows
KEEP_FILES = ("summary.json", "metrics.csv", "config.yaml")


def rows_of_grid(rules: list[str], sizes: list[str]) -> list[dict]:
    """The table rows: fault-free, none, representative x rule x size, full."""
    out = [{"row": "fault-free", "remap": None}, {"row": "none", "remap": "none"}]
    for size in sizes:
        for rule in rules:
            out.append({"row": f"rep {rule} {size}", "remap": "representative", "rule": rule, "size": size})
    out.append({"row": "full", "remap": "full"})
    return out


def dead_classes(summary: dict) -> list[int]:
    """The dead worker's classes of a run (see the module docstring)."""
    from ftmpi.plot import held_classes

    return held_classes(summary, [DEAD_RANK], SHARE)


def handoff_bytes(run_dir: Path) -> int:
    """Bytes of the handoff files rank 0 wrote (HDF5: X float32, y int32, ids int64, plus headers)."""
    return sum(p.stat().st_size for p in (run_dir / "shards").glob("handoff-*.h5"))


def _metrics(run_dir: Path) -> list[dict]:
    import csv

    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                    for row in csv.DictReader(fh)]
    except OSError:
        return []


def record(s: dict, run_dir: Path, n_features: int) -> dict:
    """One run's numbers for the table."""
    per = s.get("per_class_acc") or []
    dead = dead_classes(s)
    rest = [c for c in range(len(per)) if c not in dead]
    f = (s.get("failures") or [{}])[0]
    rows = _metrics(run_dir)
    times = [r["round_time"] for r in rows[1:] if math.isfinite(r.get("round_time", math.nan))
             and not (f and r["round"] == f.get("round"))]
    handed = int(f.get("rows_handed") or 0)
    return {
        "status": s.get("status"), "rc": s.get("rc"), "final_acc": s.get("final_test_acc"), "per_class_acc": per,
        "dead_classes": dead,
        "dead_acc": statistics.fmean(per[c] for c in dead) if dead and per else None,
        "other_acc": statistics.fmean(per[c] for c in rest) if rest and per else None,
        "failure_round": f.get("round"), "detection_latency": f.get("detection_latency"),
        "recovery_time": f.get("recovery_time"), "handoff_time": f.get("handoff_time"),
        "rows_handed": handed, "rows_dropped": int(f.get("rows_dropped") or 0),
        "handoff_bytes": handoff_bytes(run_dir), "handoff_bytes_rows": handed * (n_features * 4 + 4 + 8),
        "round_time_median": statistics.median(times) if times else None,
        "coverage": s.get("coverage"), "wall": s.get("wall_seconds"), "outer_wall": s.get("outer_wall"),
        "initial_shards": s.get("initial_shards"), "class_histogram": s.get("class_histogram"),
    }


def keep(run_dir: Path, dest: Path) -> None:
    """Keep the small files of a run (for the plot); drop its shards and checkpoints (~190 MB a run)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
    shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- statistics
def _vals(recs: list[dict], key: str) -> list[float]:
    return [r[key] for r in recs if r.get(key) is not None and math.isfinite(r[key])]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(a: list[dict], b: list[dict], key: str) -> list[float]:
    """Per-seed differences a - b of ``key`` (points of accuracy), over the seeds both have."""
    bs = {r["seed"]: r for r in b}
    return [100 * (r[key] - bs[r["seed"]][key]) for r in a
            if r["seed"] in bs and r.get(key) is not None and bs[r["seed"]].get(key) is not None]


def fmt(m: float | None, s: float | None, scale: float = 1.0, nd: int = 2, sign: bool = False) -> str:
    if m is None:
        return "—"
    return f"{m * scale:{'+' if sign else ''}.{nd}f} ± {s * scale:.{nd}f}"


def summarize(records: list[dict], grid: list[dict]) -> dict:
    """Mean ± std over seeds for every (model, partition, row), with paired deltas to fault-free."""
    out: dict = {}
    for model in dict.fromkeys(r["model"] for r in records):
        for part in dict.fromkeys(r["partition"] for r in records if r["model"] == model):
            base = [r for r in records if (r["model"], r["partition"], r["row"]) == (model, part, "fault-free")]
            cell = out.setdefault(model, {}).setdefault(part, {})
            for g in grid:
                recs = [r for r in records if (r["model"], r["partition"], r["row"]) == (model, part, g["row"])]
                if not recs:
                    continue
                ok = [r for r in recs if r["status"] == "completed"]
                c: dict = {"n": len(ok), "failed": len(recs) - len(ok), "seeds": [r["seed"] for r in ok]}
                for key in ("final_acc", "dead_acc", "other_acc", "rows_handed", "handoff_bytes", "handoff_time",
                            "round_time_median", "recovery_time"):
                    c[key] = mean_std(_vals(ok, key))
                for key in ("final_acc", "dead_acc", "other_acc"):
                    c[f"d_{key}"] = mean_std(paired(ok, base, key))
                cell[g["row"]] = c
    return out


# -------------------------------------------------------------------------------------------- markdown
def table(cells: dict, grid: list[dict]) -> list[str]:
    out = ["| row | final acc % | Δ vs fault-free | dead classes acc % | Δ vs fault-free | other classes acc % "
           "| rows handed | MB moved | handoff s | round s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for g in grid:
        c = cells.get(g["row"])
        if c is None:
            continue
        base = g["row"] == "fault-free"
        fail = f" ({c['failed']} failed)" if c["failed"] else ""
        handed = "—" if base else fmt(*c["rows_handed"], nd=0)
        mb = "—" if base else fmt(*c["handoff_bytes"], scale=1e-6, nd=2)
        ht = "—" if base else fmt(*c["handoff_time"], nd=3)
        out.append(f"| {g['row']}{fail} | {fmt(*c['final_acc'], 100)} | {'—' if base else fmt(*c['d_final_acc'], sign=True)} "
                   f"| {fmt(*c['dead_acc'], 100)} | {'—' if base else fmt(*c['d_dead_acc'], sign=True)} "
                   f"| {fmt(*c['other_acc'], 100)} | {handed} | {mb} | {ht} | {fmt(*c['round_time_median'], nd=3)} |")
    return out


def comparisons(records: list[dict], rules: list[str], sizes: list[str], model: str, part: str) -> list[str]:
    """Paired per-seed differences between selection rules at the same size (points of accuracy)."""
    def recs(row: str) -> list[dict]:
        return [r for r in records if (r["model"], r["partition"], r["row"]) == (model, part, row)
                and r["status"] == "completed"]
    out = []
    for size in sizes:
        for a in rules:
            if a == "random":
                continue
            for key, what in (("final_acc", "overall"), ("dead_acc", "dead classes")):
                d = paired(recs(f"rep {a} {size}"), recs(f"rep random {size}"), key)
                if d:
                    m, s = mean_std(d)
                    wins = sum(x > 0 for x in d)
                    out.append(f"| {size} | {a} − random | {what} | {m:+.2f} ± {s:.2f} | {wins} of {len(d)} | "
                               f"{', '.join(f'{x:+.2f}' for x in d)} |")
    return out


def best_rule(cells: dict, rules: list[str], sizes: list[str]) -> str | None:
    """The representative row with the highest mean dead-class accuracy (ties: overall accuracy)."""
    cands = [(c["dead_acc"][0], c["final_acc"][0], row) for row, c in cells.items()
             if row.startswith("rep ") and c["dead_acc"][0] is not None]
    return max(cands)[2] if cands else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a small grid: logreg only, 2 seeds, rules loss and random, size 0.05 (~3 min)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--models", default="logreg,mlp", help="comma-separated: logreg, mlp")
    ap.add_argument("--partitions", default="label-skew,iid")
    ap.add_argument("--rules", default=None, help="selection rules (default: every rule of kernels.SELECTORS)")
    ap.add_argument("--sizes", default="100,0.05", help="n_most_rep values: counts or fractions of the shard")
    ap.add_argument("--mlp-iterations", type=int, default=800,
                    help="model.n_iterations of the MLP runs (config: 1500; 800 = 80 rounds, like logreg)")
    ap.add_argument("--eval-every", type=int, default=2, help="executor.eval_every of every run (curves)")
    ap.add_argument("--keep", default=None, help="folder for the runs' summary/metrics/config (default: a temp dir)")
    ap.add_argument("--out", default="handoff_value", help="result name in benchmarks/results")
    args = ap.parse_args()
    from ftmpi.kernels import SELECTORS

    from ftmpi.config import load_config

    rules = args.rules.split(",") if args.rules else list(SELECTORS)
    sizes = args.sizes.split(",")
    models, parts, seeds = args.models.split(","), args.partitions.split(","), list(range(args.seeds))
    if args.quick:
        models, seeds = ["logreg"], list(range(min(args.seeds, 2)))
        rules = [r for r in rules if r in ("loss", "random")] if not args.rules else rules
        sizes = ["0.05"] if args.sizes == "100,0.05" else sizes
    grid = rows_of_grid(rules, sizes)
    keep_dir = Path(args.keep or tempfile.mkdtemp(prefix="ftmpi-handoff-"))
    scratch = Path(tempfile.mkdtemp(prefix="ftmpi-handoff-run-"))
    plan = []
    model_rounds: dict[str, int] = {}
    for model in models:
        overrides = [f"model.n_iterations={args.mlp_iterations}"] if model == "mlp" else []
        cfg = load_config(ROOT / CONFIGS[model], overrides, env={})
        rounds = math.ceil(cfg.model.n_iterations / cfg.executor.comm_period)
        at = rounds * 2 // 5
        model_rounds[model] = rounds
        for part in parts:
            for seed in seeds:
                for g in grid:
                    sets = overrides + [f"data.partition={part}", f"model.seed={seed}",
                                        f"executor.eval_every={args.eval_every}"]
                    if g["remap"]:
                        sets.append(f"executor.remap={g['remap']}")
                    if g["remap"] == "representative":
                        sets += [f"optimizer.rep_selection={g['rule']}", f"optimizer.n_most_rep={g['size']}"]
                    name = f"{model}-{part}-s{seed}-{g['row'].replace(' ', '-')}"
                    plan.append({"model": model, "partition": part, "seed": seed, "row": g["row"], "name": name,
                                 "sets": sets, "inject": [] if g["remap"] is None else [f"kill:{DEAD_RANK}@{at}"],
                                 "rounds": rounds, "fault_round": at})
    print(f"handoff_value: {len(plan)} jobs, kept in {keep_dir}", file=sys.stderr)
    records = []
    t0 = time.monotonic()
    for i, p in enumerate(plan):
        rd = scratch / p["name"]
        args_ = [a for s in p["sets"] for a in ("--set", s)] + [a for f in p["inject"] for a in ("--inject", f)]
        s = run(WORKERS, CONFIGS[p["model"]], rd, *args_, limit=300)
        rec = {k: p[k] for k in ("model", "partition", "seed", "row", "name", "rounds", "fault_round")}
        rec |= record(s, rd, 784)
        keep(rd, keep_dir / p["name"])
        records.append(rec)
        el = time.monotonic() - t0
        print(f"[{i + 1}/{len(plan)} {el:6.0f}s, ~{el / (i + 1) * (len(plan) - i - 1):4.0f}s left] {p['name']}: "
              f"{rec['status']} acc {rec['final_acc']} dead {rec['dead_acc']} handed {rec['rows_handed']} "
              f"handoff {rec['handoff_time']}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - t0
    cells = summarize(records, grid)
    res = {"machine": machine(), "workers": WORKERS, "dead_rank": DEAD_RANK, "share": SHARE, "seeds": seeds,
           "rules": rules, "sizes": sizes, "models": models, "partitions": parts,
           "mlp_iterations": args.mlp_iterations, "eval_every": args.eval_every, "quick": args.quick,
           "study_wall_seconds": wall, "kept_runs": str(keep_dir), "summary": cells, "runs": records}

    png = None
    best: dict[str, str | None] = {}
    for model in models:
        if "label-skew" in cells.get(model, {}):
            best[model] = best_rule(cells[model]["label-skew"], rules, sizes)
    if best and any(best.values()):
        from ftmpi.plot import plot_held_class_accuracy

        panels = []
        for model in models:
            if not best.get(model):
                continue
            lines = []
            for row, label in (("fault-free", "fault-free"), ("none", "remap none (its rows dropped)"),
                               (best[model], f"remap representative, best: {best[model][4:]}"),
                               ("full", "remap full (whole shard handed over)")):
                lines.append((label, [keep_dir / f"{model}-label-skew-s{s}-{row.replace(' ', '-')}" for s in seeds]))
            panels.append((f"{model}, label-skew", lines))
        png = plot_held_class_accuracy(panels, RESULTS / ("handoff_classes.png" if args.out == "handoff_value"
                                                          else f"{args.out}_classes.png"),
                                       rank=DEAD_RANK, share=SHARE).path
    res["plot"] = str(png) if png else None
    res["best"] = best

    mk = [f"# What handing over a dead worker's points is worth (Fashion-MNIST, {WORKERS} workers)", "",
          f"{res['machine']}", "",
          f"Command: `python benchmarks/handoff_value.py{' --quick' if args.quick else ''}` — {len(plan)} jobs "
          f"one at a time, {wall / 60:.1f} min on this machine.", "",
          "**Setup.** " + "; ".join(
              f"{m}: `{CONFIGS[m]}`" + (f" with `model.n_iterations={args.mlp_iterations}` (config: 1500)"
                                        if m == "mlp" else "")
              + f", {model_rounds[m]} rounds, killed at round {model_rounds[m] * 2 // 5}" for m in models) +
          f". World rank {DEAD_RANK} (one of {WORKERS} workers) is SIGKILLed at 40% of the rounds (ULFM detects "
          f"it). Every run sets `executor.eval_every={args.eval_every}`; everything else is the config's. Seeds "
          f"{seeds} (`model.seed` seeds the partition, the initial model and the minibatches: a seed's rows share "
          "one partition, so the Δ columns are per-seed paired differences). `label-skew` is Dirichlet(0.3) "
          "over 4 workers; `iid` an even shuffle.", "",
          f"**Dead classes.** For each seed, the classes of which rank {DEAD_RANK} held more than "
          f"{int(SHARE * 100)}% of the class's training rows in the initial partition (`class_histogram` and "
          "`initial_shards` of summary.json). *dead classes acc* is the mean final test accuracy over those "
          "classes (Fashion-MNIST's test set has 1000 rows per class), *other classes acc* the mean over the rest. "
          "Under `iid` no class qualifies (rank 2 holds about 25% of each), so those columns are empty.", "",
          "**Columns.** Mean ± std over seeds (sample std). *rows handed*: rows of the dead shard given to the "
          "survivors (`failures[].rows_handed`); *MB moved*: bytes of the HDF5 handoff files rank 0 wrote (rows × "
          "(784·4 + 4 + 8) B of X, y, ids plus headers) — the survivors read them from the run folder; "
          "*handoff s*: rank 0's release/select/write time plus the slowest survivor's load "
          "(`failures[].handoff_time`); *round s*: median round time of the run (rank 0's wall time per round, "
          "the failure round excluded). Rows `rep RULE SIZE`: `remap: representative`, "
          "`optimizer.rep_selection: RULE`, `optimizer.n_most_rep: SIZE` (a count, or a fraction of the dead "
          "shard).", ""]
    for model in models:
        for part in parts:
            if part not in cells.get(model, {}):
                continue
            c0 = cells[model][part]
            mk += [f"## {model}, {part}", ""] + table(c0, grid) + [""]
            comp = comparisons(records, rules, sizes, model, part)
            if comp:
                mk += [f"Selection rules against `random` at the same size ({model}, {part}; per-seed paired "
                       "differences in points; wins = seeds where the rule is better):", "",
                       "| size | rules | accuracy | mean ± std | wins | per seed |", "|---|---|---|---|---|---|"]
                mk += comp + [""]
    if png:
        mk += [f"Plot: `benchmarks/results/{Path(png).name}` (label-skew; mean over seeds, band = min–max; "
               f"best representative row per model by dead-class accuracy: {best}).", ""]
    write(args.out, res, "\n".join(mk))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
