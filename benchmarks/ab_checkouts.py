"""Two checkouts of ftmpi, the same job, in alternating runs: wall time of each, paired differences, and
the CPU seconds of every process (``FTMPI_TIMELINE``).

    git worktree add /tmp/ftmpi-base <commit>
    python benchmarks/ab_checkouts.py /tmp/ftmpi-base [--pairs 8] [--out FILE] -- [train args...]

The default job is time to 84 % (``jobs/local.sh 4 configs/fashion_mnist.yaml --set
executor.target_accuracy=0.84``); every run's median round time (``metrics.csv``) is compared too, pair by
pair (for the fault-free round time, pass the whole run: ``-- --set model.seed=0``). Each checkout runs from
its own directory: ``python -m ftmpi`` puts the current directory first on ``sys.path``, so pointing
``PYTHONPATH`` at the other checkout while running from this one would run this one's code on both sides.
Both use the active environment's Python and packages
(the numba kernels and ``ftmpi.kernels`` of this checkout's editable install); byte-compile both first
(``python -m compileall -q ftmpi kernels`` in each), as ``jobs/setup.sh`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _runs import round_ms  # noqa: E402

from ftmpi.observe.timeline import read  # noqa: E402

DEFAULT = ["--set", "executor.target_accuracy=0.84"]


def one(checkout: Path, run_dir: Path, timeline: Path, args: list[str]) -> tuple[float, dict[str, float]]:
    """One job from ``checkout``'s own directory: its wall time and each process's CPU seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    timeline.unlink(missing_ok=True)
    env = dict(os.environ, FTMPI_TIMELINE=str(timeline))
    t0 = time.monotonic()
    subprocess.run(["bash", "jobs/local.sh", "4", "configs/fashion_mnist.yaml", "--run-dir", str(run_dir), "--quiet",
                    *args], cwd=checkout, env=env, check=True, capture_output=True, timeout=600)
    wall = time.monotonic() - t0
    cpu: dict[str, float] = {}
    for _, who, _, c in read(timeline):
        cpu[who] = max(cpu.get(who, 0.0), c)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path, help="the other checkout (e.g. a git worktree of an older commit)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    argv = sys.argv[1:]
    train = argv[argv.index("--") + 1:] if "--" in argv else []
    ap.epilog = "train arguments go after --, default: " + " ".join(DEFAULT)
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.args = train
    sides = {"base": a.base.resolve(), "this": ROOT}
    args = a.args or DEFAULT
    res: dict[str, dict[str, list]] = {k: {"wall": [], "cpu_all": [], "cpu_worker": [], "round_ms": []} for k in sides}
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-ab."))
    try:
        for i in range(a.pairs):
            for side in (("base", "this") if i % 2 == 0 else ("this", "base")):
                wall, cpu = one(sides[side], tmp / f"{side}{i}", tmp / f"{side}{i}.tl", args)
                res[side]["wall"].append(wall)
                res[side]["cpu_all"].append(sum(cpu.values()))
                workers = [v for k, v in cpu.items() if k not in ("0", "L")]
                res[side]["cpu_worker"].append(statistics.mean(workers) if workers else 0.0)
                res[side]["round_ms"].append(round_ms(tmp / f"{side}{i}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {s: {k: statistics.median(x for x in v if x is not None) for k, v in r.items()} for s, r in res.items()}
    paired = statistics.median(t - b for b, t in zip(res["base"]["wall"], res["this"]["wall"], strict=True))
    pct = [100 * (t / b - 1) for b, t in zip(res["base"]["round_ms"], res["this"]["round_ms"], strict=True)
           if b and t]
    out = {"base": str(sides["base"]), "args": args, "pairs": a.pairs, "runs": res, "median": med,
           "paired_wall_difference": paired, "round_ms_paired_pct": pct,
           "round_ms_paired_median_pct": statistics.median(pct) if pct else None,
           "round_ms_paired_mean_pct": statistics.mean(pct) if pct else None,
           "round_ms_paired_sd_pct": statistics.stdev(pct) if len(pct) > 1 else None}
    print(f"wall: base {med['base']['wall']:.3f} s, this {med['this']['wall']:.3f} s, paired difference "
          f"{paired * 1000:+.0f} ms; CPU of all processes {med['base']['cpu_all']:.3f} -> "
          f"{med['this']['cpu_all']:.3f} s; per worker {med['base']['cpu_worker']:.3f} -> "
          f"{med['this']['cpu_worker']:.3f} s")
    if pct:
        print(f"median round time: base {med['base']['round_ms']:.2f} ms, this {med['this']['round_ms']:.2f} ms; "
              f"paired {statistics.median(pct):+.1f} % (median), {statistics.mean(pct):+.1f} % (mean)"
              + (f", sd {statistics.stdev(pct):.1f} %" if len(pct) > 1 else ""))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
