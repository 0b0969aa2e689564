"""The example CNN plug-in against the built-in MLP on Fashion-MNIST: accuracy and time, 4 workers.

    nice python benchmarks/bench_cnn.py [--kill] [--set key=value ...]

Runs configs/fashion_mnist_cnn.yaml (examples/cnn.py:SmallCNN, a plug-in model) and
configs/fashion_mnist_mlp.yaml through jobs/local.sh with 4 workers on this machine, one after the other, and
with ``--kill`` the CNN once more with worker 2 SIGKILLed at 40 % of the rounds. ``--set`` overrides go to the
CNN runs only. Writes benchmarks/results/cnn.{json,md}: per run the final test accuracy, the wall time
(rank 0's, and from outside: mpirun start-up included), the rounds, the parameters, and when the run first
evaluated at or above 85 %, 88 % and 90 %. The machine's load average is recorded before and after each run:
on a shared machine the times are only as good as it was quiet.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import machine, run, write  # noqa: E402

CNN = "configs/fashion_mnist_cnn.yaml"
MLP = "configs/fashion_mnist_mlp.yaml"
MARKS = (0.85, 0.88, 0.90)


def _reached(run_dir: Path) -> dict[str, float | None]:
    """Rank 0's wall time at the first evaluated round at or above each mark (None if never)."""
    out: dict[str, float | None] = {f"{m:.2f}": None for m in MARKS}
    try:
        with open(run_dir / "metrics.csv") as fh:
            for row in csv.DictReader(fh):
                acc = float(row["test_acc"] or "nan")
                for m in MARKS:
                    if out[f"{m:.2f}"] is None and acc >= m:
                        out[f"{m:.2f}"] = float(row["wall"])
    except OSError:
        pass
    return out


def _one(label: str, config: str, run_dir: Path, *args: str) -> dict:
    load_before = os.getloadavg()[0]
    s = run(4, config, run_dir, *args, limit=1800)
    row = {"run": label, "config": config, "args": list(args), "status": s.get("status"), "rc": s.get("rc"),
           "final_test_acc": s.get("final_test_acc"), "wall_seconds": s.get("wall_seconds"),
           "outer_wall": s.get("outer_wall"), "rounds": s.get("rounds"), "failures": len(s.get("failures") or []),
           "reached": _reached(run_dir), "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(row, flush=True)
    return row


def _fmt(x: float | None, spec: str) -> str:
    return "never" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kill", action="store_true", help="also a CNN run with worker 2 killed at 40 %% of the rounds")
    ap.add_argument("--set", action="append", default=[], help="override for the CNN runs (section.key=value)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-cnn-"))
    sets = [x for s in a.set for x in ("--set", s)]
    rows = [_one("CNN (examples/cnn.py:SmallCNN, plug-in)", CNN, tmp / "cnn", *sets),
            _one("MLP 784-256-128-10 (built-in)", MLP, tmp / "mlp")]
    if a.kill:
        rounds = rows[0]["rounds"] or 100
        rows.append(_one("CNN, worker 2 SIGKILLed at 40 %", CNN, tmp / "cnn-kill", *sets,
                         "--inject", f"kill:2@{int(0.4 * rounds)}"))
    md = ["| model (4 workers, Fashion-MNIST) | parameters | final test accuracy | wall s (rank 0) | wall s (outside) "
          "| s to 85 % | s to 88 % | s to 90 % | load avg before / after |",
          "|---|---|---|---|---|---|---|---|---|"]
    params = {CNN: "108 874", MLP: "235 146"}
    for r in rows:
        t = r["reached"]
        md.append(f"| {r['run']} | {params[r['config']]} | {_fmt(r['final_test_acc'], '.4f')} | "
                  f"{_fmt(r['wall_seconds'], '.1f')} | {_fmt(r['outer_wall'], '.1f')} | {_fmt(t['0.85'], '.1f')} | "
                  f"{_fmt(t['0.88'], '.1f')} | {_fmt(t['0.90'], '.1f')} | "
                  f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    md.append("")
    md.append(f"`nice python benchmarks/bench_cnn.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    write("cnn", {"machine": machine(), "rows": rows}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
