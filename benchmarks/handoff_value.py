"""What handing over a dead worker's points is worth, after two losses in sequence (issues 7 and 15).

    python benchmarks/handoff_value.py [--quick] [--seeds 5] [--models logreg,mlp] [--regimes local,sync]
                                       [--rows ...] [--losses 2@0.3,3@0.6] [--size 0.05]

Fashion-MNIST, 4 workers, logistic regression (configs/fashion_mnist.yaml) and the MLP
(configs/fashion_mnist_mlp.yaml, ``model.n_iterations`` cut to ``--mlp-iterations``). World rank 2 is SIGKILLed
at 30 % of the rounds and world rank 3 at 60 % (``--losses``): rank 3 then owns rows handed from rank 2, so a
rule whose weights are biased at a second loss shows on rank 2's classes. Two training regimes:

- ``local``: the configs as they are: local Adam steps on each worker, models averaged every 10 iterations;
  partitions ``label-skew`` (Dirichlet alpha 0.3) and ``iid`` (where weighting only costs: the iid cost).
- ``sync``: ``executor.send_gradients=true, executor.comm_period=1``: the workers' gradients averaged
  (weighted by shard mass) at every step, so fault-free ``label-skew`` trains like ``iid`` and the value of
  the handed rows is not mixed up with the survivors' drift on skewed shards; ``label-skew`` only.

Rows (:data:`POLICIES`; ``--rows`` picks some): fault-free, ``remap: none``, ``remap: representative`` with
``n_most_rep: --size`` and a selection/weight rule each (random chosen rows weighted as before issue 15's fix,
after it, damped, class-mix; a coreset of the features), ``remap: full``. A row whose config values this
checkout does not accept (say ``rep_weight: shard-legacy`` before the fix is merged) is left out and named in
the results. Each row runs once per seed (``model.seed`` seeds the partition, the initial model and the
minibatches: a seed's rows share the partition, so differences between rows are paired). Jobs run one at a
time through jobs/local.sh, each when no other ftmpi job, test or benchmark is busy (3 s a logreg job, ~6 s
sync, ~8-12 s MLP on a quiet 2-core machine: the full grid, 8 rows x 5 seeds x 6 setting-partitions = 240
jobs, about 35 min; ``--quick``: logreg only, 2 seeds, 48 jobs, 5-10 min). Writes
benchmarks/results/{--out}.{json,md} and {--out}_classes.png.

*Lost classes* of a seed: the classes of which the lost workers together held more than 75 % of the training
rows in the initial partition (two of four workers hold half of everything); *first-lost classes*: those rank 2
alone held more than half of (their rows were handed twice). Their accuracy is the mean per-class test accuracy
over them.
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
from _handoff_jobs import Watch, code_version, keep, wait_alone  # noqa: E402
from _handoff_report import render  # noqa: E402
from _runs import ROOT, machine, run  # noqa: E402

CONFIGS = {"logreg": "configs/fashion_mnist.yaml", "mlp": "configs/fashion_mnist_mlp.yaml"}
WORKERS = 4
SHARE = 0.75  # a class is lost when the lost workers together held more than this share of its rows (2 of 4
FIRST_SHARE = 0.5  # workers hold half of everything); first-lost when the first lost worker alone held this
ROW_BYTES = 784 * 4 + 4 + 8 + 8  # X float32, y int32, ids int64, w float64
REGIMES = {"local": [], "sync": ["executor.send_gradients=true", "executor.comm_period=1"]}
#: row -> (executor.remap, optimizer.rep_selection, optimizer.rep_weight, what it is)
POLICIES: dict[str, tuple[str | None, str | None, str | None, str]] = {
    "fault-free": (None, None, None, "no loss"),
    "none": ("none", None, None, "the lost workers' rows dropped"),
    "random-legacy": ("representative", "random", "shard-legacy",
                      "uniform random rows, each weighing |shard| / |handed| (before issue 15's fix)"),
    "random-w": ("representative", "random", "shard",
                 "random rows drawn in proportion to weight, each draw weighing M/k (unbiased)"),
    "coreset": ("representative", "coreset", "shard", "per-class k-means++ coreset, each row its cluster's mass"),
    "random-damped": ("representative", "random", "damped", "random rows, M/k capped at the remaining draws"),
    "random-classmix": ("representative", "random", "classmix",
                        "random rows weighted so that every class keeps its share"),
    "full": ("full", None, None, "the whole shards handed over"),
}
QUICK_ROWS = list(POLICIES)


def parse_losses(text: str) -> list[tuple[int, float]]:
    """``"2@0.3,3@0.6"`` -> ``[(2, 0.3), (3, 0.6)]``: world rank and fraction of the rounds, in order."""
    out = []
    for part in text.split(","):
        rank, _, frac = part.partition("@")
        try:
            r, f = int(rank), float(frac)
        except ValueError:
            raise SystemExit(f"--losses: expected RANK@FRACTION[,...] such as 2@0.3,3@0.6, got {part!r}") from None
        if not 1 <= r <= WORKERS or not 0 < f < 1:
            raise SystemExit(f"--losses: rank must be 1..{WORKERS} and the fraction in (0, 1), got {part!r}")
        out.append((r, f))
    if len({r for r, _ in out}) != len(out) or [f for _, f in out] != sorted(f for _, f in out):
        raise SystemExit(f"--losses: distinct ranks in increasing fractions, got {text!r}")
    return out


def loss_rounds(losses: list[tuple[int, float]], rounds: int) -> list[tuple[int, int]]:
    """(rank, round) of each loss for a run of ``rounds`` rounds."""
    return [(r, max(1, min(rounds - 1, round(f * rounds)))) for r, f in losses]


def row_sets(row: str, size: str) -> list[str]:
    """The ``--set`` overrides of a row."""
    remap, sel, weight, _ = POLICIES[row]
    if remap is None:
        return []
    sets = [f"executor.remap={remap}"]
    if remap == "representative":
        sets += [f"optimizer.rep_selection={sel}", f"optimizer.n_most_rep={size}", f"optimizer.rep_weight={weight}"]
    return sets


def lost_share(summary: dict, ranks: list[int]) -> list[float] | None:
    """Per class, the share of its training rows the workers ``ranks`` held in the initial partition."""
    hist, shards = summary.get("class_histogram"), summary.get("initial_shards")
    if not hist or not isinstance(shards, dict) or len(shards) != len(hist):
        return None
    order = [int(r) for r in shards]
    out = []
    for c in range(len(hist[0])):
        total = sum(h[c] for h in hist)
        held = sum(h[c] for i, h in enumerate(hist) if order[i] in ranks)
        out.append(held / total if total else 0.0)
    return out


def _mean_over(per: list[float], classes: list[int]) -> float | None:
    return statistics.fmean(per[c] for c in classes) if classes and per else None


def _metrics_rows(run_dir: Path) -> list[dict]:
    import csv

    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                    for row in csv.DictReader(fh)]
    except OSError:
        return []


def record(s: dict, run_dir: Path, lost: list[int]) -> dict:
    """One run's numbers for the tables (also for a fault-free run: its seed's partition names the classes)."""
    per = s.get("per_class_acc") or []
    share_all, share_first = lost_share(s, lost) or [], lost_share(s, lost[:1]) or []
    dead = [c for c, v in enumerate(share_all) if v > SHARE]
    first = [c for c, v in enumerate(share_first) if v > FIRST_SHARE]
    rest = [c for c in range(len(per)) if c not in dead]
    fs = [f for f in s.get("failures") or [] if isinstance(f, dict)]
    fail_rounds = {f.get("round") for f in fs}
    times = [r["round_time"] for r in _metrics_rows(run_dir)[1:]
             if math.isfinite(r.get("round_time", math.nan)) and r["round"] not in fail_rounds]
    handed = [int(f.get("rows_handed") or 0) for f in fs]
    ho = [f["handoff_time"] for f in fs if f.get("handoff_time") is not None]
    return {
        "status": s.get("status"), "rc": s.get("rc"), "final_acc": s.get("final_test_acc"), "per_class_acc": per,
        "lost_share": share_all, "first_lost_share": share_first, "dead_classes": dead, "first_classes": first,
        "dead_acc": _mean_over(per, dead), "first_acc": _mean_over(per, first), "other_acc": _mean_over(per, rest),
        "failure_rounds": [f.get("round") for f in fs], "lost_ranks": [f.get("rank") for f in fs],
        "detection_latency": [f.get("detection_latency") for f in fs],
        "recovery_time": max((f["recovery_time"] for f in fs if f.get("recovery_time") is not None), default=None),
        "handoff_time": max(ho) if ho else None, "handoff_times": ho,
        "rows_handed": sum(handed), "rows_handed_each": handed,
        "rows_dropped": sum(int(f.get("rows_dropped") or 0) for f in fs),
        "handoff_bytes": sum(p.stat().st_size for p in (run_dir / "shards").glob("handoff-*.h5")),
        "handoff_bytes_rows": sum(handed) * ROW_BYTES,
        "round_time_median": statistics.median(times) if times else None,
        "coverage": s.get("coverage"), "wall": s.get("wall_seconds"), "outer_wall": s.get("outer_wall"),
        "initial_shards": s.get("initial_shards"), "class_histogram": s.get("class_histogram"),
    }


def unclean(s: dict, lost: list[int]) -> str:
    """Why a run cannot be used as a measurement of its row ('' when it can): it did not complete, or it lost
    other workers than the ones killed (in any order: two losses in one round may be seen either way)."""
    if s.get("status") != "completed":
        return f"status {s.get('status')} (rc {s.get('rc')})"
    got = [(f.get("rank"), f.get("round"), f.get("how")) for f in s.get("failures") or []]
    if sorted(r for r, _, _ in got) != sorted(lost):
        return f"lost workers {got}, expected {lost}"
    return ""


def coreset_cost(k_frac: float, seeds: int = 3) -> dict:
    """Milliseconds of :func:`ftmpi.kernels.select_coreset` on world rank 2's Fashion-MNIST shard of seed 0,
    iid (15 000 rows) and label-skew (22 351 rows), ``k = k_frac`` of its rows, this process alone, the best of
    ``seeds`` calls each (the kernel compiled and cached beforehand)."""
    import numpy as np
    from ftmpi.kernels import select_coreset

    from ftmpi.config import load_config
    from ftmpi.core.partition import partition
    from ftmpi.storage.data import load_dataset

    cfg = load_config(ROOT / CONFIGS["logreg"], [], env={})
    d = load_dataset(cfg.data, 0)
    out = {}
    for kind in ("iid", "label-skew"):
        rows = np.sort(partition(d.y_train, WORKERS, kind, 0)[1])
        X, y, k = d.X_train[rows], d.y_train[rows], int(round(k_frac * len(rows)))
        best = math.inf
        for s in range(seeds):
            t = time.perf_counter()
            select_coreset(X, y, None, k, d.n_classes, s)
            best = min(best, time.perf_counter() - t)
        out[kind] = {"rows": len(rows), "k": k, "ms": round(1e3 * best, 1)}
    return out


def supported(rows: list[str], size: str) -> tuple[list[str], dict[str, str]]:
    """The rows whose config values this checkout accepts, and why the others are left out."""
    from ftmpi.config import load_config
    from ftmpi.errors import ConfigError

    ok, why = [], {}
    for row in rows:
        try:
            load_config(ROOT / CONFIGS["logreg"], row_sets(row, size), env={})
            ok.append(row)
        except ConfigError as e:
            why[row] = str(e).splitlines()[0]
    return ok, why


def build_plan(models: list[str], regimes: list[str], parts: list[str], sync_parts: list[str], seeds: list[int],
               rows: list[str], size: str, losses: list[tuple[int, float]], mlp_iterations: int,
               eval_every: int, sync_eval_every: int) -> tuple[dict[str, dict], list[dict]]:
    """The settings (``logreg``, ``logreg-sync``, ...) and one job per setting x partition x seed x row."""
    from ftmpi.config import load_config

    settings: dict[str, dict] = {}
    plan = []
    for model in models:
        for regime in regimes:
            setting = model if regime == "local" else f"{model}-{regime}"
            overrides = ([f"model.n_iterations={mlp_iterations}"] if model == "mlp" else []) + REGIMES[regime]
            cfg = load_config(ROOT / CONFIGS[model], overrides, env={})
            rounds = math.ceil(cfg.model.n_iterations / cfg.executor.comm_period)
            at = loss_rounds(losses, rounds)
            settings[setting] = {"model": model, "regime": regime, "rounds": rounds, "losses": at,
                                 "eval_every": eval_every if regime == "local" else sync_eval_every,
                                 "partitions": parts if regime == "local" else sync_parts}
            for part in settings[setting]["partitions"]:
                for seed in seeds:
                    for row in rows:
                        sets = overrides + [f"data.partition={part}", f"model.seed={seed}",
                                            f"executor.eval_every={settings[setting]['eval_every']}"]
                        sets += row_sets(row, size)
                        plan.append({"setting": setting, "model": model, "regime": regime, "partition": part,
                                     "seed": seed, "row": row, "name": f"{setting}-{part}-s{seed}-{row}",
                                     "sets": sets, "rounds": rounds, "fault_rounds": [f for _, f in at],
                                     "lost": [r for r, _ in at],  # also fault-free: names the classes
                                     "inject": [] if row == "fault-free" else [f"kill:{r}@{f}" for r, f in at]})
    return settings, plan


def run_plan(plan: list[dict], keep_dir: Path, wait: float, retries: int, again: int = 10) -> list[dict]:
    """Run the jobs one at a time (alone on the machine where possible: a job that shared the cores is run
    again up to ``again`` times) and return their records."""
    scratch = Path(tempfile.mkdtemp(prefix="ftmpi-handoff-run-"))
    records = []
    t0 = time.monotonic()
    for i, p in enumerate(plan):
        rd = scratch / p["name"]
        args_ = [a for s in p["sets"] for a in ("--set", s)] + [a for f in p["inject"] for a in ("--inject", f)]
        rejected: list[dict] = []
        contended: list[list[str]] = []
        waited = 0.0
        while True:
            waited += wait_alone(scratch, wait)
            with Watch(scratch) as w:
                s = run(WORKERS, CONFIGS[p["model"]], rd, *args_, limit=300)
            if w.seen and len(contended) < again:  # timings shared the cores with another job: measure again
                contended.append(w.seen)
                print(f"handoff_value: {p['name']}: other jobs ran meanwhile ({w.seen[0]}); again", file=sys.stderr)
                continue
            why = unclean(s, p["lost"] if p["inject"] else [])
            if not why or len(rejected) >= retries:
                break
            rejected.append({"why": why, "failures": s.get("failures"), "final_acc": s.get("final_test_acc")})
            print(f"handoff_value: {p['name']}: {why}; again", file=sys.stderr)
        rec = {k: p[k] for k in ("setting", "model", "regime", "partition", "seed", "row", "name", "rounds",
                                 "fault_rounds")}
        rec |= record(s, rd, p["lost"])
        rec |= {"rejected_attempts": rejected, "clean": not why, "contended_attempts": len(contended),
                "waited_for_others": waited, "shared_cores": bool(w.seen)}
        keep(rd, keep_dir / p["name"])
        records.append(rec)
        el = time.monotonic() - t0
        print(f"[{i + 1}/{len(plan)} {el:6.0f}s, ~{el / (i + 1) * (len(plan) - i - 1):4.0f}s left] {p['name']}: "
              f"{rec['status']} acc {rec['final_acc']} lost-classes {rec['dead_acc']} handed {rec['rows_handed']} "
              f"handoff {rec['handoff_time']}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    return records


def legacy_rows(res: dict, path: Path) -> None:
    """Add to study ``res`` the ``random-w`` runs of another study (``path``, its results JSON), run with the code
    before issue 15's fix, as row ``random-legacy``: the way to the "before" row when this checkout no longer
    accepts ``rep_weight: shard-legacy``. Make that study in a checkout of the old commit (with its own venv)
    into which this script and its ``_handoff_*.py`` helpers are copied: ``python benchmarks/handoff_value.py
    --rows fault-free,random-w --out handoff_legacy`` there (same other options as this study's)."""
    import json

    old = json.loads(Path(path).read_text())
    runs = [dict(r, row="random-legacy", name=r["name"].replace("-random-w", "-random-legacy"))
            for r in old["runs"] if r["row"] == "random-w"]
    if not runs:
        raise SystemExit(f"--legacy-from {path}: no random-w runs in it")
    res["runs"] = [r for r in res["runs"] if r["row"] != "random-legacy"] + runs
    if "random-legacy" not in res["rows"]:
        res["rows"].insert(res["rows"].index("random-w") if "random-w" in res["rows"] else 2, "random-legacy")
    res.setdefault("policies", {})["random-legacy"] = (
        f"random rows weighted by the code before the fix (commit {old['code']['start']['commit']}, {path})")
    res.get("rows_left_out", {}).pop("random-legacy", None)


def merge(res: dict, other: dict, name: str) -> None:
    """Add to study ``res`` the runs of study ``other`` (its results JSON, ``name``): the same rows, losses and
    representative size, other settings or seeds; a (setting, partition, seed, row) present in both keeps
    ``res``'s run. The merged study's wall time, job count and code versions are listed per part."""
    for key in ("losses", "size", "share", "first_share", "workers"):
        if res.get(key) != other.get(key):
            raise SystemExit(f"--merge {name}: {key} {other.get(key)!r} differs from {res.get(key)!r}")
    have = {(r["setting"], r["partition"], r["seed"], r["row"]) for r in res["runs"]}
    res["runs"] += [r for r in other["runs"] if (r["setting"], r["partition"], r["seed"], r["row"]) not in have]
    res["rows"] += [r for r in other["rows"] if r not in res["rows"]]
    res["policies"] = {**other.get("policies", {}), **res.get("policies", {})}
    res["seeds"] = sorted(set(res["seeds"]) | set(other["seeds"]))
    res["models"] += [m for m in other["models"] if m not in res["models"]]
    for k, v in other["settings"].items():
        if k in res["settings"]:
            v = dict(res["settings"][k], partitions=sorted(set(res["settings"][k]["partitions"]) |
                                                         set(v["partitions"])))
        res["settings"][k] = v
    res.setdefault("parts", [{"n_jobs": res["n_jobs"], "wall": res["study_wall_seconds"], "code": res["code"],
                              "quick": res["quick"], "command": res.get("command")}])
    res["parts"].append({"n_jobs": other["n_jobs"], "wall": other["study_wall_seconds"], "code": other["code"],
                         "quick": other["quick"], "file": Path(name).name, "command": other.get("command")})
    res["n_jobs"] += other["n_jobs"]
    res["study_wall_seconds"] += other["study_wall_seconds"]
    res["quick"] = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="logreg only, 2 seeds (48 jobs, 5-10 min)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (to extend a study: --merge)")
    ap.add_argument("--models", default="logreg,mlp", help="comma-separated: logreg, mlp")
    ap.add_argument("--partitions", default="label-skew,iid", help="partitions of the local regime")
    ap.add_argument("--regimes", default="local,sync", help="comma-separated: local, sync (module docstring)")
    ap.add_argument("--sync-partitions", default="label-skew", help="partitions of the sync regime")
    ap.add_argument("--rows", default=",".join(POLICIES), help=f"rows, comma-separated, of {list(POLICIES)}")
    ap.add_argument("--size", default="0.05", help="optimizer.n_most_rep of the representative rows")
    ap.add_argument("--losses", default="2@0.3,3@0.6", help="RANK@FRACTION of the rounds, in order")
    ap.add_argument("--mlp-iterations", type=int, default=800, help="model.n_iterations of the MLP runs")
    ap.add_argument("--eval-every", type=int, default=2, help="executor.eval_every of the local runs (curves)")
    ap.add_argument("--sync-eval-every", type=int, default=20, help="executor.eval_every of the sync runs")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs again a job that lost a worker it was not told to lose (default 2 more times)")
    ap.add_argument("--wait", type=float, default=900,
                    help="before each job, wait up to this many seconds for other ftmpi jobs/tests/benchmarks to end "
                    "(a job that shared the cores anyway is run again: --again)")
    ap.add_argument("--again", type=int, default=10,
                    help="runs again, up to this many times, a job during which another ftmpi job, test or benchmark "
                    "was busy (its timings are inflated); 0 to check the harness on a busy machine")
    ap.add_argument("--keep", default=None, help="folder for the runs' summary/metrics/config (default: a temp dir)")
    ap.add_argument("--out", default="handoff_value", help="result name in benchmarks/results")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the rows left out; run nothing")
    ap.add_argument("--legacy-from", metavar="JSON", default=None,
                    help="row random-legacy from another study's random-w runs (made with the code before the fix)")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="run nothing: rebuild the tables and the plot from a study's results JSON, under --out")
    ap.add_argument("--merge", metavar="JSON", action="append", default=[],
                    help="with --render: add this study's runs (same rows, losses and size; other models or seeds)")
    args = ap.parse_args()
    if args.render:
        import json

        res = json.loads(Path(args.render).read_text())
        if "rows" not in res or "losses" not in res:
            raise SystemExit(f"--render {args.render}: a study of the one-loss harness (issue 7, commit "
                             f"{res.get('code', {}).get('start', {}).get('commit', '?')}); render it with that "
                             "commit's benchmarks/handoff_value.py")
        for other in args.merge:
            merge(res, json.loads(Path(other).read_text()), other)
        if args.legacy_from:
            legacy_rows(res, Path(args.legacy_from))
        render(res, args.out)
        return 0
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in POLICIES] + [g for g in args.regimes.split(",") if g not in REGIMES]
    if unknown:
        ap.error(f"unknown rows or regimes {unknown}; rows: {list(POLICIES)}, regimes: {list(REGIMES)}")
    losses = parse_losses(args.losses)
    models, seeds = args.models.split(","), list(range(args.first_seed, args.first_seed + args.seeds))
    if args.quick:
        models, seeds = ["logreg"], seeds[:2]
    rows, left_out = supported(rows, args.size)
    for row, why in left_out.items():
        print(f"handoff_value: row {row!r} left out: this checkout refuses its config ({why})", file=sys.stderr)
    settings, plan = build_plan(models, args.regimes.split(","), args.partitions.split(","),
                                args.sync_partitions.split(","), seeds, rows, args.size, losses,
                                args.mlp_iterations, args.eval_every, args.sync_eval_every)
    if args.dry_run:
        for p in plan:
            print(p["name"], " ".join(p["sets"]), " ".join(p["inject"]))
        print(f"handoff_value: {len(plan)} jobs", file=sys.stderr)
        return 0
    keep_dir = Path(args.keep or tempfile.mkdtemp(prefix="ftmpi-handoff-"))
    print(f"handoff_value: {len(plan)} jobs, kept in {keep_dir}", file=sys.stderr)
    if "coreset" in rows:  # compile (and cache) the coreset kernel once here, not in the first job's loss
        import numpy as np
        from ftmpi.kernels import select_coreset

        select_coreset(np.zeros((4, 2), np.float32), np.arange(4) % 2, None, 2, 2, 0)
        cost = coreset_cost(float(args.size)) if 0 < float(args.size) < 1 else None
    else:
        cost = None
    code_at_start = code_version()
    t0 = time.monotonic()
    records = run_plan(plan, keep_dir, args.wait, args.retries, args.again)
    res = {"machine": machine(), "workers": WORKERS, "share": SHARE, "first_share": FIRST_SHARE, "losses": losses,
           "seeds": seeds,
           "rows": rows, "rows_left_out": left_out, "size": args.size, "models": models,
           "partitions": args.partitions.split(","), "regimes": args.regimes.split(","), "settings": settings,
           "policies": {r: POLICIES[r][3] for r in rows}, "mlp_iterations": args.mlp_iterations,
           "quick": args.quick, "retries": args.retries, "n_jobs": len(plan), "coreset_cost": cost,
           "study_wall_seconds": time.monotonic() - t0, "kept_runs": str(keep_dir),
           "code": {"start": code_at_start, "end": code_version()}, "runs": records,
           "command": "python benchmarks/handoff_value.py " + " ".join(sys.argv[1:])}
    if args.legacy_from:
        legacy_rows(res, Path(args.legacy_from))
    render(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
