"""Checkpoints on real Fashion-MNIST (issue 4's targets).

    python benchmarks/bench_checkpoint.py

4 workers, logistic regression, `checkpoint_every: 10`. Measures: the time the round loop stands still for
a checkpoint (rank 0 copies its state; a background thread writes it) against the round time, and the
median round time of the same run with and without checkpoints (3 runs each); a run whose every rank is
SIGKILLed (the whole process group, mpirun included) right after its round-40 checkpoint (50%) and resumed
with 4 workers, against the uninterrupted run; the same resumed with 2 workers (coverage must stay 1.0).
Writes benchmarks/results/checkpoint.{json,md}.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import ROOT, machine, run, write  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
CK = ("--set", "executor.checkpoint_every=10")


def killed_at(run_dir: Path, round_: int) -> float:
    """Start a run and SIGKILL every process of it once the checkpoint of ``round_`` exists."""
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.Popen(["bash", str(ROOT / "jobs" / "local.sh"), "4", CONFIG, "--run-dir", str(run_dir), "--quiet",
                          *CK], cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    target = run_dir / "ckpt" / f"round-{round_:06d}.h5"
    t0 = time.monotonic()
    while not target.exists():
        if p.poll() is not None or time.monotonic() - t0 > 300:
            raise SystemExit(f"the run ended before writing {target}")
        time.sleep(0.01)
    # every process of the session: bash, timeout (which runs in a process group of its own), mpirun, ranks
    subprocess.run(["pkill", "-KILL", "-s", str(p.pid)], check=False)
    p.wait()
    return time.monotonic() - t0


def median_round(run_dir: Path, args: tuple[str, ...] = ()) -> float:
    """Median round time (rank 0's, ``metrics.csv``) of a run; runs it first when ``args`` are given."""
    if args:
        run(4, CONFIG, run_dir, *args)
    with open(run_dir / "metrics.csv") as fh:
        return statistics.median(float(r["round_time"]) for r in csv.DictReader(fh))


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-ckpt-"))
    ref = run(4, CONFIG, tmp / "ref", *CK)
    round_time = median_round(tmp / "ref")
    # the same run without checkpoints, three times each way: the background writes must not slow the rounds
    with_ck = [round_time] + [median_round(tmp / f"ck{i}", CK) for i in range(2)]
    without = [median_round(tmp / f"no{i}", ("--set", "executor.checkpoint_every=0")) for i in range(3)]
    n_ckpt = ref["rounds"] // 10 + 1
    per_ckpt = ref["checkpoint_seconds"] / n_ckpt
    per_write = ref["checkpoint_write_seconds"] / n_ckpt
    cost = ref["checkpoint_seconds"] / ref["rounds"] / round_time  # amortised over the rounds
    slow = statistics.median(with_ck) / statistics.median(without) - 1
    half = ref["rounds"] // 2
    res = {"machine": machine(), "uninterrupted": {"test_acc": ref["final_test_acc"], "rounds": ref["rounds"]},
           "checkpoint": {"seconds_total": ref["checkpoint_seconds"], "per_checkpoint": per_ckpt,
                          "write_seconds_total": ref["checkpoint_write_seconds"], "per_write": per_write,
                          "median_round_time": round_time, "cost_fraction": cost,
                          "median_round_with": with_ck, "median_round_without": without, "slowdown": slow,
                          "file_bytes": (tmp / "ref" / "ckpt").stat().st_size}}
    rows_md = [("checkpoint cost at checkpoint_every 10: time the round loop stands still",
                f"{per_ckpt * 1e3:.1f} ms per checkpoint (the copy of the state; the write itself, "
                f"{per_write * 1e3:.1f} ms, runs in a background thread), median round {round_time * 1e3:.1f} ms: "
                f"{cost:.1%} of round time", "< 5%", cost < 0.05),
               ("median round time with / without checkpoints (3 runs each, medians)",
                f"{statistics.median(with_ck) * 1e3:.1f} / {statistics.median(without) * 1e3:.1f} ms "
                f"({slow:+.1%})", "< 5%", slow < 0.05)]
    for workers in (4, 2):
        d = tmp / f"killed-{workers}"
        killed_at(d, half)
        s = run(workers, CONFIG, tmp / "unused", "--resume", str(d), *CK)
        summ = json.loads((d / "summary.json").read_text())
        delta = 100 * (summ["final_test_acc"] - ref["final_test_acc"])
        res[f"resumed_{workers}"] = {"test_acc": summ["final_test_acc"], "delta_points": delta,
                                     "coverage": summ["coverage"], "resumed_from": summ["resumed_from"],
                                     "rc": s["rc"]}
        if workers == 4:
            rows_md.append((f"all ranks SIGKILLed at round {half} of {ref['rounds']}, resumed with 4 workers",
                            f"{summ['final_test_acc']:.4f} vs {ref['final_test_acc']:.4f} ({delta:+.2f} pts)",
                            "within 0.3 pts", abs(delta) <= 0.3))
        else:
            rows_md.append(("same, resumed with 2 workers", f"{summ['final_test_acc']:.4f} ({delta:+.2f} pts), "
                            f"coverage {summ['coverage']}", "coverage 1.0", summ["coverage"] == 1.0))
    mk = ["# Checkpoints on Fashion-MNIST (4 workers, logreg, this machine)", "", f"{res['machine']}", "",
          "| measure | result | target | pass |", "|---|---|---|---|"]
    mk += [f"| {a} | {b} | {c} | {'PASS' if ok else 'FAIL'} |" for a, b, c, ok in rows_md]
    mk += ["", "Command: `python benchmarks/bench_checkpoint.py`.", ""]
    write("checkpoint", res, "\n".join(mk))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
