"""End-to-end: ftmpi on real Fashion-MNIST against scikit-learn's LogisticRegression, in one run.

    python benchmarks/bench_e2e.py [--quick] [--repeats 3]

Measures (issue 2's targets): wall time of `jobs/local.sh 4 configs/fashion_mnist.yaml`, start-up included,
against the time `LogisticRegression()` takes to fit the same rows (same loader, same scaling); the MLP
config's accuracy; 8-bit and 4-bit quantization and comm_period 10 against their baselines, with bytes;
and the same seed twice. Writes benchmarks/results/e2e.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import machine, run, write  # noqa: E402

LOGREG = "configs/fashion_mnist.yaml"
MLP = "configs/fashion_mnist_mlp.yaml"


def sklearn_fit() -> dict:
    from sklearn.linear_model import LogisticRegression

    from ftmpi.config import load_config
    from ftmpi.data import load_dataset

    d = load_dataset(load_config(LOGREG).data, 0)
    t0 = time.monotonic()
    clf = LogisticRegression().fit(d.X_train, d.y_train)
    fit = time.monotonic() - t0
    return {"fit_seconds": fit, "test_acc": float(clf.score(d.X_test, d.y_test))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the MLP and comm_period 1 runs")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-bench-"))
    sk = sklearn_fit()
    base = [run(4, LOGREG, tmp / f"base{i}") for i in range(args.repeats)]
    walls = [b["outer_wall"] for b in base]
    b0 = base[0]
    res: dict = {"machine": machine(), "sklearn": sk,
                 "logreg": {"outer_wall": walls, "median_wall": statistics.median(walls),
                            "test_acc": [b["final_test_acc"] for b in base], "bytes_total": b0["bytes_total"],
                            "rounds": b0["rounds"]}}
    res["deterministic"] = len({b["final_test_acc"] for b in base}) == 1
    q8 = run(4, LOGREG, tmp / "q8", "--set", "executor.quantize=8")
    q4 = run(4, LOGREG, tmp / "q4", "--set", "executor.quantize=4")
    res["quantize"] = {str(k): {"test_acc": q["final_test_acc"], "bytes_total": q["bytes_total"],
                                "delta_points": 100 * (q["final_test_acc"] - b0["final_test_acc"])}
                       for k, q in ((8, q8), (4, q4))}
    rows = []
    ratio = res["logreg"]["median_wall"] / sk["fit_seconds"]
    rows.append(("logreg, 4 workers: test accuracy", f"{b0['final_test_acc']:.4f}", ">= 0.8400",
                 b0["final_test_acc"] >= 0.84))
    rows.append(("logreg wall (start-up included) / sklearn fit",
                 f"{res['logreg']['median_wall']:.2f} s / {sk['fit_seconds']:.2f} s = {ratio:.2f}", "<= 0.50",
                 ratio <= 0.5))
    rows.append(("sklearn LogisticRegression() test accuracy", f"{sk['test_acc']:.4f}", "(reference)", None))
    for k, lim in (("8", 0.3), ("4", 1.0)):
        q = res["quantize"][k]
        rows.append((f"{k}-bit both ways: accuracy change, bytes",
                     f"{q['delta_points']:+.2f} pts, {q['bytes_total'] / 1e6:.1f} MB "
                     f"vs {b0['bytes_total'] / 1e6:.1f} MB",
                     f"within {lim} pts", abs(q["delta_points"]) <= lim))
    rows.append(("same seed, same config: same accuracy", f"{[b['final_test_acc'] for b in base]}", "equal",
                 res["deterministic"]))
    if not args.quick:
        p1 = run(4, LOGREG, tmp / "p1", "--set", "executor.comm_period=1", limit=1200)
        d = 100 * (b0["final_test_acc"] - p1["final_test_acc"])
        res["comm_period"] = {"1": {"test_acc": p1["final_test_acc"], "bytes_total": p1["bytes_total"],
                                    "outer_wall": p1["outer_wall"]},
                              "10": {"test_acc": b0["final_test_acc"], "bytes_total": b0["bytes_total"]}}
        rows.append(("comm_period 10 vs 1: accuracy change, bytes saved",
                     f"{d:+.2f} pts, {p1['bytes_total'] / 1e6:.0f} MB -> {b0['bytes_total'] / 1e6:.1f} MB "
                     f"({1 - b0['bytes_total'] / p1['bytes_total']:.0%} saved)", "within 0.5 pts", abs(d) <= 0.5))
        m = run(4, MLP, tmp / "mlp")
        res["mlp"] = {"test_acc": m["final_test_acc"], "outer_wall": m["outer_wall"]}
        rows.append(("MLP 784-256-128-10, 4 workers: test accuracy",
                     f"{m['final_test_acc']:.4f} in {m['outer_wall']:.1f} s", ">= 0.8750",
                     m["final_test_acc"] >= 0.875))
    mk = ["# End-to-end on Fashion-MNIST (4 workers, this machine)", "",
          f"{res['machine']}", "", "| measure | result | target | pass |", "|---|---|---|---|"]
    for name, val, target, ok in rows:
        mk.append(f"| {name} | {val} | {target} | {'—' if ok is None else ('PASS' if ok else 'FAIL')} |")
    mk += ["", "Wall time is measured outside `jobs/local.sh` (mpirun start-up, imports, data loading, shard "
           "writing included); sklearn's time is `fit` alone on the same arrays. Command: "
           "`python benchmarks/bench_e2e.py`.", ""]
    write("e2e", res, "\n".join(mk))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
