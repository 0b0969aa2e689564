"""Checkpoints on real Fashion-MNIST (issue 4's targets).

    python benchmarks/bench_checkpoint.py

4 workers, logistic regression, `checkpoint_every: 10`. Measures: the cost of writing checkpoints against
the round time; a run whose every rank is SIGKILLed (the whole process group, mpirun included) right after
its round-40 checkpoint (50%) and resumed with 4 workers, against the uninterrupted run; the same resumed
with 2 workers (coverage must stay 1.0). Writes benchmarks/results/checkpoint.{json,md}.
"""
from __future__ import annotations

import csv
import json
import os
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


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-ckpt-"))
    ref = run(4, CONFIG, tmp / "ref", *CK)
    with open(tmp / "ref" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    round_time = sum(float(r["round_time"]) for r in rows) / len(rows)
    n_ckpt = ref["rounds"] // 10 + 1
    per_ckpt = ref["checkpoint_seconds"] / n_ckpt
    cost = ref["checkpoint_seconds"] / ref["rounds"] / round_time  # amortised over the rounds
    half = ref["rounds"] // 2
    res = {"machine": machine(), "uninterrupted": {"test_acc": ref["final_test_acc"], "rounds": ref["rounds"]},
           "checkpoint": {"seconds_total": ref["checkpoint_seconds"], "per_checkpoint": per_ckpt,
                          "mean_round_time": round_time, "cost_fraction": cost,
                          "file_bytes": (tmp / "ref" / "ckpt").stat().st_size}}
    rows_md = [("checkpoint cost at checkpoint_every 10",
                f"{per_ckpt * 1e3:.1f} ms per checkpoint, mean round {round_time * 1e3:.1f} ms: "
                f"{cost:.1%} of round time", "< 5%", cost < 0.05)]
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
