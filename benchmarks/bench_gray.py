"""Gray failures: stalls shorter than the timeout, alone and in overlapping pairs, on real Fashion-MNIST.

    python benchmarks/bench_gray.py

4 workers, logistic regression (configs/fashion_mnist.yaml, 80 rounds), ``executor.timeout=2`` and the timeout
detector (the harder case: no MPI report ever helps). Each schedule injects ``slow:R@N:S`` stalls (S up to
0.95 x the timeout) on rank 0, its deputy (rank 1) and other workers; a fault-free run and a rank 0 stopped
for longer than the timeout (``pause:0@20:4``, which must be replaced) are the references. Writes
benchmarks/results/gray.{json,md}: per schedule the exit code, status, ranks declared lost, coordinator
changes, coverage and final accuracy.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import machine, run, write  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
ARGS = ("--set", "executor.timeout=2", "--set", "executor.failure_detector=timeout")
SCHEDULES = [
    ("fault-free", []),
    ("rank 0 alone, 1.9 s", ["slow:0@20:1.9"]),
    ("deputy alone, 1.9 s", ["slow:1@20:1.9"]),
    ("worker alone, 1.9 s", ["slow:3@20:1.9"]),
    ("deputy 1.5 s, then rank 0 1.9 s (the issue's reproduction)", ["slow:1@19:1.5", "slow:0@20:1.9"]),
    ("worker 1.7 s, then rank 0 1.9 s", ["slow:2@30:1.7", "slow:0@31:1.9"]),
    ("rank 0 1.9 s, then the deputy 1.9 s", ["slow:0@20:1.9", "slow:1@21:1.9"]),
    ("two workers in one round, 1.9 s each", ["slow:2@20:1.9", "slow:3@20:1.9"]),
    ("rank 0 at round 0, 1.9 s", ["slow:0@0:1.9"]),
    ("rank 0 stopped 4 s (longer than the timeout: replaced)", ["pause:0@20:4"]),
]


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-gray-"))
    rows = []
    for i, (name, stalls) in enumerate(SCHEDULES):
        inject = [a for s in stalls for a in ("--inject", s)]
        s = run(4, CONFIG, tmp / f"s{i}", *ARGS, *inject)
        rows.append({"schedule": name, "inject": stalls, "exit_code": s.get("exit_code"), "status": s.get("status"),
                     "lost": [f["rank"] for f in s.get("failures", []) if f.get("how") != "promoted"],
                     "coordinator_changes": len(s.get("coordinator_changes") or []), "term": s.get("term"),
                     "coverage": s.get("coverage"), "final_test_acc": s.get("final_test_acc"),
                     "wall": s.get("outer_wall")})
        print(rows[-1], flush=True)
    md = ["| schedule (timeout 2 s, timeout detector) | exit | status | ranks lost | coordinator changes | coverage "
          "| final accuracy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['schedule']} | {r['exit_code']} | {r['status']} | {r['lost'] or 'none'} | "
                  f"{r['coordinator_changes']} | {r['coverage']} | {r['final_test_acc']:.4f} |")
    write("gray", {"machine": machine(), "args": list(ARGS), "rows": rows}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
