"""What handing over a dead worker's points is worth, measured (issue 7).

    python benchmarks/handoff_value.py [--quick] [--seeds 5] [--models logreg,mlp] [--regimes local,sync]

Fashion-MNIST, 4 workers, logistic regression (configs/fashion_mnist.yaml) and the MLP
(configs/fashion_mnist_mlp.yaml, ``model.n_iterations`` cut to ``--mlp-iterations``), world rank 2 SIGKILLed
at 40% of the rounds. Two training regimes:

- ``local``: the configs as they are: local Adam steps on each worker, models averaged every 10 iterations;
  partitions ``label-skew`` (Dirichlet alpha 0.3) and ``iid``.
- ``sync``: ``executor.send_gradients=true, executor.comm_period=1``: the workers' gradients averaged
  (weighted by shard size) at every step, so the optimisation does not depend on who holds which rows and
  fault-free ``label-skew`` trains like ``iid``; ``label-skew`` only. Under ``local`` the workers drift
  apart on skewed shards, so a fault-free skewed run is itself worse than an iid one, and any handoff that
  makes the survivors' shards less skewed can end *above* it: ``sync`` separates the value of the rows from
  that effect.

Rows: fault-free, ``remap: none``, ``representative`` with every selection rule at two ``n_most_rep`` sizes,
``full``; each run once per seed (``model.seed`` seeds the partition, the initial model and the minibatches,
so a seed's runs share the partition and differences between rows are paired). Jobs run one at a time
through jobs/local.sh, each when no other ftmpi job, test or benchmark is busy (about 45 minutes on 2 cores;
``--quick``: logreg, 2 seeds, rules loss and random at one size, about 4 minutes, written to the same files
unless ``--out`` says otherwise). Writes benchmarks/results/handoff_value.{json,md} and handoff_classes.png.

The dead worker's classes of a seed are the classes of which rank 2 held more than half of the training
rows in the initial partition (from ``class_histogram`` of the run's summary); their accuracy is the mean
per-class test accuracy over them, the other classes' the mean over the rest.
"""
from __future__ import annotations

import argparse
import math
import os
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
REGIMES = {"local": [], "sync": ["executor.send_gradients=true", "executor.comm_period=1"]}
REGIME_WORDS = {"local": "local steps, models averaged every 10 iterations (the configs)",
                "sync": "gradients averaged at every step (`send_gradients`, `comm_period 1`)"}


def rows_of_grid(rules: list[str], sizes: list[str], weighted: list[str] = ()) -> list[dict]:
    """The table rows: fault-free, none, representative x rule x size (and, for the rules in ``weighted``, the
    same with ``optimizer.rep_weight: shard``, row ``rep RULE-w SIZE``), full."""
    out = [{"row": "fault-free", "remap": None}, {"row": "none", "remap": "none"}]
    for size in sizes:
        for rule in rules:
            out.append({"row": f"rep {rule} {size}", "remap": "representative", "rule": rule, "size": size,
                        "weight": "one"})
        for rule in weighted:
            out.append({"row": f"rep {rule}-w {size}", "remap": "representative", "rule": rule, "size": size,
                        "weight": "shard"})
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


def code_version() -> dict:
    """The commit, whether the tree has uncommitted changes, and a digest of the code the jobs run."""
    import hashlib
    import subprocess

    h = hashlib.sha1()
    for p in sorted([*ROOT.glob("ftmpi/*.py"), *ROOT.glob("kernels/*.py"), ROOT / "jobs" / "local.sh"]):
        h.update(p.name.encode() + p.read_bytes())
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "ftmpi", "kernels", "jobs"], capture_output=True,
                           text=True).stdout.strip()
    return {"commit": head or "?", "uncommitted": bool(dirty), "digest": h.hexdigest()[:12]}


_OTHERS = ("ftmpi", "pytest", "benchmarks/", "sweep.sh")
_TICK = float(os.sysconf("SC_CLK_TCK"))  # clock ticks per second of /proc/<pid>/stat


def _others(mine: Path) -> dict[int, tuple[str, float]]:
    """Other ftmpi jobs, tests or benchmarks on this machine (not this study's own jobs): pid -> (command line,
    CPU seconds so far)."""
    me = {os.getpid(), os.getppid()}
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if not cmd or str(mine) in cmd or not any(k in cmd for k in _OTHERS):
                continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(d.name)] = (cmd[:100], (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def _busy(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], dt: float) -> list[str]:
    """The processes of ``after`` that used more than 10% of a core since ``before`` (sleeping shells don't)."""
    return [f"{pid}: {cmd}" for pid, (cmd, cpu) in after.items() if cpu - before.get(pid, ("", 0.0))[1] > 0.1 * dt]


class Watch:
    """Samples the other busy jobs every half second while a job of the study runs: their CPU time would be
    taken from the study's 2 cores and inflate the times it measures."""

    def __init__(self, mine: Path) -> None:
        import threading

        self.mine, self.seen, self._stop = mine, [], threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        prev, t = _others(self.mine), time.monotonic()
        while not self._stop.wait(0.5):
            cur, now = _others(self.mine), time.monotonic()
            self.seen += [c for c in _busy(prev, cur, now - t) if c not in self.seen]
            prev, t = cur, now

    def __enter__(self) -> Watch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def wait_alone(mine: Path, limit: float) -> float:
    """Wait (up to ``limit`` s) until no other ftmpi job, test or benchmark is busy; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = _others(mine)
        time.sleep(1.0)
        if not _busy(before, _others(mine), 1.0):
            break
        time.sleep(4.0)
    return time.monotonic() - t0


def unclean(s: dict, injected: bool) -> str:
    """Why a run cannot be used as a measurement of its row ('' when it can): it did not complete, or it lost
    a worker other than the one killed (the study compares remap rules after exactly one loss)."""
    if s.get("status") != "completed":
        return f"status {s.get('status')} (rc {s.get('rc')})"
    lost = [(f.get("rank"), f.get("round"), f.get("how")) for f in s.get("failures") or []]
    want = [DEAD_RANK] if injected else []
    if [r for r, _, _ in lost] != want:
        return f"lost workers {lost}, expected {want}"
    return ""


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
    for model in dict.fromkeys(r["setting"] for r in records):
        for part in dict.fromkeys(r["partition"] for r in records if r["setting"] == model):
            base = [r for r in records if (r["setting"], r["partition"], r["row"]) == (model, part, "fault-free")]
            cell = out.setdefault(model, {}).setdefault(part, {})
            for g in grid:
                recs = [r for r in records if (r["setting"], r["partition"], r["row"]) == (model, part, g["row"])]
                if not recs:
                    continue
                ok = [r for r in recs if r["status"] == "completed" and r.get("clean", True)]
                c: dict = {"n": len(ok), "failed": len(recs) - len(ok), "seeds": [r["seed"] for r in ok]}
                for key in ("final_acc", "dead_acc", "other_acc", "rows_handed", "handoff_bytes", "handoff_bytes_rows",
                            "handoff_time",
                            "round_time_median", "recovery_time"):
                    c[key] = mean_std(_vals(ok, key))
                for key in ("final_acc", "dead_acc", "other_acc"):
                    c[f"d_{key}"] = mean_std(paired(ok, base, key))
                cell[g["row"]] = c
    return out


# -------------------------------------------------------------------------------------------- markdown
def table(cells: dict, grid: list[dict]) -> list[str]:
    out = ["| row | final acc % | Δ vs fault-free | dead classes acc % | Δ vs fault-free | other classes acc % "
           "| rows handed | MB moved | MB written at the loss | handoff s | round s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in grid:
        c = cells.get(g["row"])
        if c is None:
            continue
        base = g["row"] == "fault-free"
        fail = f" ({c['failed']} failed)" if c["failed"] else ""
        handed = "—" if base else fmt(*c["rows_handed"], nd=0)
        mb = "—" if base else fmt(*c.get("handoff_bytes_rows", (None, None)), scale=1e-6, nd=2)
        mbw = "—" if base else fmt(*c["handoff_bytes"], scale=1e-6, nd=2)
        ht = "—" if base else fmt(*c["handoff_time"], nd=3)
        d_final = "—" if base else fmt(*c["d_final_acc"], sign=True)
        d_dead = "—" if base else fmt(*c["d_dead_acc"], sign=True)
        out.append(f"| {g['row']}{fail} | {fmt(*c['final_acc'], 100)} | {d_final} | {fmt(*c['dead_acc'], 100)} "
                   f"| {d_dead} | {fmt(*c['other_acc'], 100)} | {handed} | {mb} | {mbw} | {ht} "
                   f"| {fmt(*c['round_time_median'], nd=3)} |")
    return out


def comparisons(records: list[dict], rules: list[str], sizes: list[str], model: str, part: str,
                weighted: list[str] = ()) -> list[str]:
    """Paired per-seed differences between selection rules at the same size (points of accuracy)."""
    def recs(row: str) -> list[dict]:
        return [r for r in records if (r["setting"], r["partition"], r["row"]) == (model, part, row)
                and r["status"] == "completed" and r.get("clean", True)]
    out = []
    for size in sizes:
        for a in [*rules, *(f"{r}-w" for r in weighted)]:
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


def size_words(row: str) -> str:
    """``rep random 0.05`` -> ``random, 5% of the shard``; ``rep loss 100`` -> ``loss, 100 rows``;
    ``rep random-w 0.05`` -> ``random, 5% of the shard, weighted``."""
    _, rule, size = row.split()
    v = float(size)
    weighted = rule.endswith("-w")
    return (f"{rule.removesuffix('-w')}, " + (f"{100 * v:g}% of the shard" if 0 < v < 1 else f"{int(v)} rows")
            + (", weighted" if weighted else ""))


def verdict(cells: dict, settings: dict) -> list[str]:
    """Issue 7's three questions, one line per setting under label-skew: what ``none`` costs the dead
    worker's classes, how close ``full`` ends to fault-free, and the handoff time of ``representative`` against
    a round: for the best row (random selection, staged and read ahead: the defaults) and for the slowest rule
    (``loss``/``stratified``, whose rows are chosen by the workers and written at the loss)."""
    out = ["## The questions, answered (label-skew)", "",
           "| setting | none: Δ dead classes | full: Δ overall | full: Δ dead classes | best representative "
           "(Δ overall / dead) | its handoff s | slowest rule's handoff s | round s | best / round |",
           "|---|---|---|---|---|---|---|---|---|"]
    for model, st in settings.items():
        c = cells.get(model, {}).get("label-skew")
        if not c or "fault-free" not in c:
            continue
        none, full = c.get("none", {}), c.get("full", {})
        reps = {row: v for row, v in c.items() if row.startswith("rep ")}
        b = best_rule(c, [], [])
        ho = [v["handoff_time"][0] for v in reps.values() if v["handoff_time"][0] is not None]
        rounds = [v["round_time_median"][0] for v in reps.values() if v["round_time_median"][0] is not None]
        worst, rt = (max(ho), statistics.median(rounds)) if ho and rounds else (None, None)
        bh = reps[b]["handoff_time"][0] if b else None
        best_txt = (f"`{b}`: {fmt(*reps[b]['d_final_acc'], sign=True)} / {fmt(*reps[b]['d_dead_acc'], sign=True)}"
                    if b else "—")
        out.append(f"| {st['model']} {st['regime']} | {fmt(*none.get('d_dead_acc', (None, None)), sign=True)} "
                   f"| {fmt(*full.get('d_final_acc', (None, None)), sign=True)} "
                   f"| {fmt(*full.get('d_dead_acc', (None, None)), sign=True)} | {best_txt} "
                   f"| {'—' if bh is None else f'{bh:.3f}'} | {'—' if worst is None else f'{worst:.3f}'} "
                   f"| {'—' if rt is None else f'{rt:.3f}'} "
                   f"| {'—' if bh is None or not rt else f'{bh / rt:.2f}'} |")
    return out


def best_rule(cells: dict, rules: list[str], sizes: list[str]) -> str | None:
    """The representative row with the highest mean dead-class accuracy (ties: overall accuracy)."""
    cands = [(c["dead_acc"][0], c["final_acc"][0], row) for row, c in cells.items()
             if row.startswith("rep ") and c["dead_acc"][0] is not None]
    return max(cands)[2] if cands else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a small grid: logreg only, 2 seeds, rules loss and random, size 0.05 (~2 min)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--models", default="logreg,mlp", help="comma-separated: logreg, mlp")
    ap.add_argument("--partitions", default="label-skew,iid", help="partitions of the local regime")
    ap.add_argument("--regimes", default="local,sync", help="comma-separated: local, sync (module docstring)")
    ap.add_argument("--sync-partitions", default="label-skew", help="partitions of the sync regime")
    ap.add_argument("--sync-eval-every", type=int, default=20,
                    help="executor.eval_every of the sync runs (800 rounds; default 20: 40 points per curve)")
    ap.add_argument("--rules", default=None, help="selection rules (default: every rule of kernels.SELECTORS)")
    ap.add_argument("--weighted", default="random",
                    help="rules also run with optimizer.rep_weight=shard (rows 'rep RULE-w SIZE'); '' for none")
    ap.add_argument("--sizes", default="100,0.05", help="n_most_rep values: counts or fractions of the shard")
    ap.add_argument("--mlp-iterations", type=int, default=800,
                    help="model.n_iterations of the MLP runs (config: 1500; 800 = 80 rounds, as logreg)")
    ap.add_argument("--eval-every", type=int, default=2, help="executor.eval_every of every run (curves)")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs again a job that lost a worker it was not told to lose (default 2 more times)")
    ap.add_argument("--wait", type=float, default=900,
                    help="before each job, wait up to this many seconds for other ftmpi jobs/tests/benchmarks to end "
                    "(a job that shared the cores anyway is run again, up to 10 times)")
    ap.add_argument("--keep", default=None, help="folder for the runs' summary/metrics/config (default: a temp dir)")
    ap.add_argument("--out", default="handoff_value", help="result name in benchmarks/results")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="run nothing: rebuild the tables (and the plot, if its kept runs still exist) from a study's "
                    "results JSON, written under --out")
    args = ap.parse_args()
    if args.render:
        import json

        render(json.loads(Path(args.render).read_text()), args.out)
        return 0
    from ftmpi.kernels import SELECTORS

    from ftmpi.config import load_config

    rules = args.rules.split(",") if args.rules else list(SELECTORS)
    sizes = args.sizes.split(",")
    models, parts, seeds = args.models.split(","), args.partitions.split(","), list(range(args.seeds))
    regimes = args.regimes.split(",")
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        ap.error(f"--regimes: unknown {unknown}; expected some of {list(REGIMES)}")
    if args.quick:
        models, seeds = ["logreg"], list(range(min(args.seeds, 2)))
        rules = [r for r in rules if r in ("loss", "random")] if not args.rules else rules
        sizes = ["0.05"] if args.sizes == "100,0.05" else sizes
    weighted = [r for r in args.weighted.split(",") if r]
    grid = rows_of_grid(rules, sizes, weighted)
    keep_dir = Path(args.keep or tempfile.mkdtemp(prefix="ftmpi-handoff-"))
    scratch = Path(tempfile.mkdtemp(prefix="ftmpi-handoff-run-"))
    plan = []
    settings: dict[str, dict] = {}  # "logreg", "logreg-sync", ...: model, regime, rounds, partitions
    for model in models:
        for regime in regimes:
            setting = model if regime == "local" else f"{model}-{regime}"
            overrides = ([f"model.n_iterations={args.mlp_iterations}"] if model == "mlp" else []) + REGIMES[regime]
            cfg = load_config(ROOT / CONFIGS[model], overrides, env={})
            rounds = math.ceil(cfg.model.n_iterations / cfg.executor.comm_period)
            every = args.eval_every if regime == "local" else args.sync_eval_every
            settings[setting] = {"model": model, "regime": regime, "rounds": rounds, "eval_every": every,
                                 "partitions": parts if regime == "local" else args.sync_partitions.split(",")}
    for setting, st in settings.items():
        model, rounds = st["model"], st["rounds"]
        at = rounds * 2 // 5
        overrides = ([f"model.n_iterations={args.mlp_iterations}"] if model == "mlp" else []) + REGIMES[st["regime"]]
        for part in st["partitions"]:
            for seed in seeds:
                for g in grid:
                    sets = overrides + [f"data.partition={part}", f"model.seed={seed}",
                                        f"executor.eval_every={st['eval_every']}"]
                    if g["remap"]:
                        sets.append(f"executor.remap={g['remap']}")
                    if g["remap"] == "representative":
                        sets += [f"optimizer.rep_selection={g['rule']}", f"optimizer.n_most_rep={g['size']}",
                                 f"optimizer.rep_weight={g['weight']}"]
                    name = f"{setting}-{part}-s{seed}-{g['row'].replace(' ', '-')}"
                    plan.append({"setting": setting, "model": model, "regime": st["regime"], "partition": part,
                                 "seed": seed, "row": g["row"], "name": name,
                                 "sets": sets, "inject": [] if g["remap"] is None else [f"kill:{DEAD_RANK}@{at}"],
                                 "rounds": rounds, "fault_round": at})
    print(f"handoff_value: {len(plan)} jobs, kept in {keep_dir}", file=sys.stderr)
    records = []
    code_at_start = code_version()
    t0 = time.monotonic()
    for i, p in enumerate(plan):
        rd = scratch / p["name"]
        args_ = [a for s in p["sets"] for a in ("--set", s)] + [a for f in p["inject"] for a in ("--inject", f)]
        rejected: list[dict] = []
        contended: list[list[str]] = []
        waited = 0.0
        while True:
            waited += wait_alone(scratch, args.wait)
            with Watch(scratch) as w:
                s = run(WORKERS, CONFIGS[p["model"]], rd, *args_, limit=300)
            if w.seen and len(contended) < 10:  # timings shared the cores with another job: measure again
                contended.append(w.seen)
                print(f"handoff_value: {p['name']}: other jobs ran meanwhile ({w.seen[0]}); again", file=sys.stderr)
                continue
            why = unclean(s, bool(p["inject"]))
            if not why or len(rejected) >= args.retries:
                break
            rejected.append({"why": why, "failures": s.get("failures"), "final_acc": s.get("final_test_acc")})
            print(f"handoff_value: {p['name']}: {why}; again", file=sys.stderr)
        rec = {k: p[k] for k in ("setting", "model", "regime", "partition", "seed", "row", "name", "rounds",
                                 "fault_round")}
        rec |= record(s, rd, 784)
        rec["rejected_attempts"] = rejected
        rec["clean"] = not why
        rec["contended_attempts"], rec["waited_for_others"] = len(contended), waited
        rec["shared_cores"] = bool(w.seen)
        keep(rd, keep_dir / p["name"])
        records.append(rec)
        el = time.monotonic() - t0
        print(f"[{i + 1}/{len(plan)} {el:6.0f}s, ~{el / (i + 1) * (len(plan) - i - 1):4.0f}s left] {p['name']}: "
              f"{rec['status']} acc {rec['final_acc']} dead {rec['dead_acc']} handed {rec['rows_handed']} "
              f"handoff {rec['handoff_time']}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - t0
    res = {"machine": machine(), "workers": WORKERS, "dead_rank": DEAD_RANK, "share": SHARE, "seeds": seeds,
           "rules": rules, "weighted": weighted, "sizes": sizes, "models": models, "partitions": parts,
           "regimes": regimes,
           "settings": settings,
           "mlp_iterations": args.mlp_iterations, "eval_every": args.eval_every, "quick": args.quick,
           "retries": args.retries, "n_jobs": len(plan),
           "study_wall_seconds": wall, "kept_runs": str(keep_dir),
           "code": {"start": code_at_start, "end": code_version()}, "runs": records}
    render(res, args.out)
    return 0


def render(res: dict, out: str) -> None:
    """Tables, the plot and the markdown of a study, from its records (also ``--render`` of a saved JSON)."""
    records, settings, seeds = res["runs"], res["settings"], res["seeds"]
    n_jobs = res.get("n_jobs", len(records))
    rules, sizes, regimes, weighted = res["rules"], res["sizes"], res["regimes"], res.get("weighted", [])
    grid = rows_of_grid(rules, sizes, weighted)
    keep_dir = Path(res["kept_runs"])
    wall, code_at_start, code_at_end = res["study_wall_seconds"], res["code"]["start"], res["code"]["end"]
    cells = summarize(records, grid)
    res["summary"] = cells

    png = None
    best: dict[str, str | None] = {}
    for model in settings:
        if "label-skew" in cells.get(model, {}):
            best[model] = best_rule(cells[model]["label-skew"], rules, sizes)
    if best and any(best.values()) and keep_dir.is_dir():
        from ftmpi.plot import plot_held_class_accuracy

        panels = []
        for model in settings:
            if not best.get(model):
                continue
            lines = []
            for row, label in (("fault-free", "fault-free"), ("none", "remap none (its rows dropped)"),
                               (best[model], f"remap representative, best: {size_words(best[model])}"),
                               ("full", "remap full (whole shard handed over)")):
                lines.append((label, [keep_dir / f"{model}-label-skew-s{s}-{row.replace(' ', '-')}" for s in seeds]))
            panels.append((f"{settings[model]['model']}, label-skew, {settings[model]['regime']}", lines))
        png = plot_held_class_accuracy(panels, RESULTS / ("handoff_classes.png" if out == "handoff_value"
                                                          else f"{out}_classes.png"),
                                       rank=DEAD_RANK, share=SHARE).path
    res["plot"] = str(png) if png else None
    res["best"] = best

    mk = [f"# What handing over a dead worker's points is worth (Fashion-MNIST, {WORKERS} workers)", "",
          f"{res['machine']}", "",
          f"Command: `python benchmarks/handoff_value.py{' --quick' if res['quick'] else ''}` — {n_jobs} jobs "
          f"one at a time, {wall / 60:.1f} min on this machine. Code: commit {code_at_start['commit']}"
          + (" with uncommitted changes" if code_at_start["uncommitted"] else "")
          + f", source digest {code_at_start['digest']}"
          + (", unchanged during the study." if code_at_end["digest"] == code_at_start["digest"] else
             f"; **the code changed during the study** (digest {code_at_end['digest']} at the end): the runs "
             "mix versions."), "",
          "**Setup.** " + "; ".join(
              f"{st['model']} {st['regime']}: `{CONFIGS[st['model']]}`"
              + (f" with `model.n_iterations={res['mlp_iterations']}` (config: 1500)" if st["model"] == "mlp" else "")
              + "".join(f", `{o}`" for o in REGIMES[st["regime"]])
              + f", {st['rounds']} rounds, killed at round {st['rounds'] * 2 // 5}, `executor.eval_every="
              f"{st['eval_every']}`, partitions {', '.join(st['partitions'])}" for st in settings.values()) +
          ". Regimes: " + "; ".join(f"*{k}* = {v}" for k, v in REGIME_WORDS.items() if k in regimes) +
          f". World rank {DEAD_RANK} (one of {WORKERS} workers) is SIGKILLed at 40% of the rounds (ULFM detects "
          f"it); everything not named here is the config's. Seeds "
          f"{seeds} (`model.seed` seeds the partition, the initial model and the minibatches: a seed's rows share "
          "one partition, so the Δ columns are per-seed paired differences). `label-skew` is Dirichlet(0.3) "
          "over 4 workers; `iid` an even shuffle.", "",
          f"**Dead classes.** For each seed, the classes of which rank {DEAD_RANK} held more than "
          f"{int(SHARE * 100)}% of the class's training rows in the initial partition (`class_histogram` and "
          "`initial_shards` of summary.json). *dead classes acc* is the mean final test accuracy over those "
          "classes (Fashion-MNIST's test set has 1000 rows per class), *other classes acc* the mean over the rest. "
          "Under `iid` no class qualifies (rank 2 holds about 25% of each), so those columns are empty.", "",
          "**Columns.** Mean ± std over seeds (sample std). *rows handed*: rows of the dead shard given to the "
          "survivors (`failures[].rows_handed`); *MB moved*: what the survivors read, rows × (784·4 + 4 + 8) B "
          "(X float32, y, ids); *MB written at the loss*: the HDF5 handoff files rank 0 wrote after detecting it "
          "(0 for `random`, whose rows rank 0 staged in standby files before any failure); "
          "*handoff s*: from rank 0's detection of the loss until the last survivor handed rows was training on "
          "them (`failures[].handoff_time`: rank 0 selects and writes the files and sends each survivor a message at "
          "once; a survivor still in the middle of its round takes the rows between two steps and draws the rest "
          "of the round's minibatches from its grown shard); *round s*: median round time of the run (rank 0's "
          "wall time per round, the failure round excluded). Rows `rep RULE SIZE`: `remap: representative`, "
          "`optimizer.rep_selection: RULE`, `optimizer.n_most_rep: SIZE` (a count, or a fraction of the dead "
          "shard); `rep RULE-w SIZE` the same with `optimizer.rep_weight: shard` (each handed row weighs "
          "|dead shard| / |rows handed| in the survivors' minibatches and replies).", ""]
    mk += verdict(cells, settings) + [""]
    for model, st in settings.items():
        for part in st["partitions"]:
            if part not in cells.get(model, {}):
                continue
            c0 = cells[model][part]
            mk += [f"## {st['model']}, {part}, {st['regime']}", "", f"{REGIME_WORDS[st['regime']]}.", ""]
            mk += table(c0, grid) + [""]
            comp = comparisons(records, rules, sizes, model, part, weighted)
            if comp:
                mk += [f"Selection rules against `random` at the same size ({model}, {part}; per-seed paired "
                       "differences in points; wins = seeds where the rule is better):", "",
                       "| size | rules | accuracy | mean ± std | wins | per seed |", "|---|---|---|---|---|---|"]
                mk += comp + [""]
    n_cont = sum(r["contended_attempts"] for r in records)
    n_shared = [r["name"] for r in records if r["shared_cores"]]
    waited = sum(r["waited_for_others"] for r in records)
    mk += [f"**Alone on the machine.** Before each job the study waited for other ftmpi jobs, tests and benchmarks "
           f"to end ({waited:.0f} s in all); {n_cont} job(s) that shared the cores anyway were run again"
           + (f"; still shared after 10 tries, timings inflated: {n_shared}." if n_shared else
              "; every timing in the tables comes from a job that ran alone."), ""]
    redo = [(r["name"], a["why"]) for r in records for a in r["rejected_attempts"]]
    bad = [r["name"] for r in records if not r["clean"]]
    mk += [f"**Repeated runs.** {len(redo)} attempt(s) of {n_jobs} jobs lost a worker they were not told to "
           f"lose (or did not complete) and were run again (up to {res.get('retries', 2)} more times)"
           + (": " + "; ".join(f"`{n}`: {w}" for n, w in redo) if redo else "")
           + (f". Still unclean after the retries, left out of the tables: {bad}." if bad else "."), ""]
    if png:
        mk += [f"Plot: `benchmarks/results/{Path(png).name}`: label-skew, fault-free vs `none` vs the best "
               "representative row (highest mean dead-class accuracy: "
               + ", ".join(f"{m} `{b}`" for m, b in best.items() if b)
               + ") vs `full`; each line the mean over the seeds of a trailing mean over 5 rounds.", ""]
    write(out, res, "\n".join(mk))


if __name__ == "__main__":
    raise SystemExit(main())
