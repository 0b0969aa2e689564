"""End-to-end: ftmpi on real Fashion-MNIST against scikit-learn's LogisticRegression and a one-process numpy
minibatch SGD of the same model, cold and warm, in one run.

    python benchmarks/bench_e2e.py [--quick] [--repeats 3]

Measures (issue 16's targets), every ftmpi time from outside `jobs/local.sh 4 configs/fashion_mnist.yaml`
(bash, the launcher's interpreter, mpirun, five ranks' interpreters, imports, MPI_Init, data, shards, rounds,
final checkpoint, teardown; warm: the prepared data copy in place):

- the full run (80 rounds) against the time `LogisticRegression()` takes to `fit` the same rows (same loader,
  same scaling; the faster of two fits; data already in memory);
- time to 84 % test accuracy: the same command with `--set executor.target_accuracy=0.84`, against the numpy
  Adam minibatch SGD of benchmarks/numpy_sgd.py run as its own process to 84 % (interpreter, imports, data,
  training; the best of three learning rates and of numpy's default BLAS threads or one; then the two
  alternating, each run right after a process touched and freed 400 MB: see prime_memory), and for information
  against that SGD timed inside this benchmark's running Python (data loading and training only);
- the floor: `mpirun -n 5` / `-n 2 python -c "from mpi4py import MPI"` with ftmpi's mpirun flags, and with
  numpy, h5py and yaml imported too (what ftmpi's ranks import at the least);
- where a warm run's time goes (FTMPI_TIMELINE: when each phase ended, CPU per process);
- the cold first run (numba's cache and ftmpi's bytecode emptied, then compiled as jobs/setup.sh does, no prepared
  copy of the data) against a warm one, and for information a cold run without the set-up step; the MLP
  config's accuracy; 8-bit and 4-bit quantization and comm_period 10 against their baselines, with bytes;
  the same seed three times.

Writes benchmarks/results/e2e.{json,md}. Every time is a median of ``--repeats`` runs unless said otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _e2e_parts import mpi_floor, numpy_fresh, prime_memory, scratch, timeline, timeline_markdown  # noqa: E402
from _runs import ROOT, machine, run, write  # noqa: E402
from numpy_sgd import numpy_sgd  # noqa: E402

LOGREG = "configs/fashion_mnist.yaml"
MLP = "configs/fashion_mnist_mlp.yaml"
TARGET = 0.84


def sklearn_fit(tries: int = 2) -> dict:
    from sklearn.linear_model import LogisticRegression

    from ftmpi.config import load_config
    from ftmpi.storage.data import load_dataset

    d = load_dataset(load_config(LOGREG).data, 0, lazy=False)
    fits, acc = [], 0.0
    for _ in range(tries):
        t0 = time.monotonic()
        clf = LogisticRegression().fit(d.X_train, d.y_train)
        fits.append(time.monotonic() - t0)
        acc = float(clf.score(d.X_test, d.y_test))
    return {"fit_seconds": min(fits), "fits": fits, "test_acc": acc}


def clear_caches() -> int:
    """Empty numba's cache of the kernels (and the warm-up's marker) and ftmpi's bytecode, as on a fresh
    checkout; returns how many files went."""
    gone = 0
    for folder in (ROOT / "kernels" / "__pycache__", ROOT / "ftmpi" / "__pycache__"):
        for p in folder.glob("*"):
            if p.suffix in (".nbi", ".nbc", ".pyc") or p.name.startswith("ftmpi-warmup.ok"):
                p.unlink()
                gone += 1
    return gone


def setup_step() -> None:
    """What jobs/setup.sh does after installing: byte-compile ftmpi, compile the numba kernels."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "ftmpi", "kernels"], cwd=ROOT, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "ftmpi.model.models"], cwd=ROOT, check=True, capture_output=True)


def cold_runs(tmp: Path, repeats: int) -> dict:
    """The first run after jobs/setup.sh (cache emptied, kernels compiled by `python -m ftmpi.model.models` once, the
    data's prepared copy not made yet: a fresh one for each run), and a first run with no set-up step at all
    (numba's cache and ftmpi's bytecode emptied before each); medians of ``repeats`` runs."""
    out: dict = {}
    saved = os.environ.get("FTMPI_PREPARED")
    try:
        clear_caches()
        t0 = time.monotonic()
        setup_step()
        out["setup_compile_seconds"] = time.monotonic() - t0
        for key, clear in (("after_setup", False), ("no_setup", True)):
            walls, accs = [], []
            for i in range(repeats):
                if clear:
                    clear_caches()
                os.environ["FTMPI_PREPARED"] = str(tmp / f"prepared-{key}-{i}")
                r = run(4, LOGREG, tmp / f"cold-{key}-{i}")
                walls.append(r["outer_wall"])
                accs.append(r.get("final_test_acc"))
            out[key] = {"outer_wall": statistics.median(walls), "walls": walls, "test_acc": accs}
    finally:
        if saved is None:
            os.environ.pop("FTMPI_PREPARED", None)
        else:
            os.environ["FTMPI_PREPARED"] = saved
        setup_step()  # warm again
    return out


def loadavg() -> float:
    return os.getloadavg()[0]


def baselines() -> dict:
    """The numpy SGD: in this Python for three learning rates, then the best one as its own process."""
    inproc = [numpy_sgd(lr) for lr in (0.02, 0.005, 0.001)]
    reached = [r for r in inproc if r["reached"]]
    best = min(reached, key=lambda r: r["seconds"]) if reached else None
    fresh = [numpy_fresh(best["lr"], t) for t in (None, "1")] if best else []
    return {"in_process": {"best": best, "all": inproc},
            "fresh": {"best": min(fresh, key=lambda r: r["median"]) if fresh else None, "all": fresh}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the MLP and comm_period 1 runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=7, help="alternations of ftmpi and numpy SGD runs for B")
    args = ap.parse_args()
    tmp = scratch()
    res: dict = {"machine": machine(), "load_at_start": loadavg()}
    sk = res["sklearn"] = sklearn_fit()
    cold = res["cold"] = cold_runs(tmp, args.repeats)
    sgd = res["numpy_sgd"] = baselines()
    floor = res["floor"] = {"mpi5": mpi_floor(5, "from mpi4py import MPI"),
                            "mpi2": mpi_floor(2, "from mpi4py import MPI"),
                            "imports5": mpi_floor(5, "import numpy, h5py, yaml; from mpi4py import MPI")}
    base = [run(4, LOGREG, tmp / f"base{i}") for i in range(args.repeats)]
    # B: ftmpi to the target and the numpy SGD process, alternating, each timed right after prime_memory()
    ttt, paired = [], []
    best = sgd["fresh"]["best"]
    threads = None if best is None or best["blas_threads"] == "default" else best["blas_threads"]
    for i in range(args.pairs):
        prime_memory()
        ttt.append(run(4, LOGREG, tmp / f"target{i}", "--set", f"executor.target_accuracy={TARGET}"))
        if best is not None:  # primed by numpy_fresh
            paired.append(numpy_fresh(best["lr"], threads, repeats=1)["median"])
    if paired:
        best["primed_walls"] = paired
        best["median"] = statistics.median(paired)
    walls, twalls = [b["outer_wall"] for b in base], [t["outer_wall"] for t in ttt]
    b0, t0 = base[0], ttt[0]
    res["logreg"] = {"outer_wall": walls, "median_wall": statistics.median(walls),
                     "test_acc": [b["final_test_acc"] for b in base], "bytes_total": b0["bytes_total"],
                     "rounds": b0["rounds"]}
    res["time_to_target"] = {"target": TARGET, "outer_wall": twalls, "median_wall": statistics.median(twalls),
                             "rounds": [t["rounds"] for t in ttt], "stopped_by": [t.get("stopped_by") for t in ttt],
                             "reached": [t.get("target_reached") for t in ttt],
                             "final_test_acc": [t["final_test_acc"] for t in ttt]}
    res["deterministic"] = len({b["final_test_acc"] for b in base}) == 1
    res["timeline"] = timeline(tmp)
    q8 = run(4, LOGREG, tmp / "q8", "--set", "executor.quantize=8")
    q4 = run(4, LOGREG, tmp / "q4", "--set", "executor.quantize=4")
    res["quantize"] = {str(k): {"test_acc": q["final_test_acc"], "bytes_total": q["bytes_total"],
                                "delta_points": 100 * (q["final_test_acc"] - b0["final_test_acc"])}
                       for k, q in ((8, q8), (4, q4))}
    rows = []
    warm, tt = res["logreg"]["median_wall"], res["time_to_target"]["median_wall"]
    rows.append(("logreg, 4 workers, 80 rounds: test accuracy", f"{b0['final_test_acc']:.4f}", ">= 0.8400",
                 b0["final_test_acc"] >= 0.84))
    ratio = warm / sk["fit_seconds"]
    rows.append(("**A.** full run (80 rounds), outer wall / sklearn `LogisticRegression().fit` (fit alone)",
                 f"{warm:.2f} s / {sk['fit_seconds']:.2f} s = **{ratio:.2f}**", "<= 0.30", ratio <= 0.3))
    fresh, inproc = sgd["fresh"]["best"], sgd["in_process"]["best"]
    reached = all(t.get("stopped_by") == "target_accuracy" for t in ttt)
    t_round = t0.get("target_reached") or {}
    if fresh is not None:
        r2 = tt / fresh["median"]
        rows.append(("**B.** time to 84 % (`--set executor.target_accuracy=0.84`), outer wall / numpy Adam SGD to "
                     "84 % as its own process (interpreter, imports, data, training)",
                     f"{tt:.2f} s / {fresh['median']:.2f} s (lr {fresh['lr']}, BLAS threads "
                     f"{fresh['blas_threads']}) = **{r2:.2f}**; ftmpi reached {t_round.get('test_acc', 0):.4f} at "
                     f"round {t_round.get('round')}, stopped after {t0['rounds']} rounds", "<= 2.0",
                     r2 <= 2.0 and reached))
        fastest = min(w for f in sgd["fresh"]["all"] for w in f["walls"] + f.get("primed_walls", []))
        rows.append(("B against the fastest numpy SGD process seen in this run (pessimistic: its page faults at "
                     "their cheapest)", f"{tt:.2f} s / {fastest:.2f} s = {tt / fastest:.2f}", "(information)", None))
        rows.append(("full run (80 rounds) / numpy SGD to 84 % as its own process", f"{warm:.2f} s / "
                     f"{fresh['median']:.2f} s = {warm / fresh['median']:.2f}", "(information)", None))
        rows.append(("time to 84 % / numpy SGD to 84 % inside this benchmark's Python (data loading and training "
                     "only: the baseline of earlier versions of this table)",
                     f"{tt:.2f} s / {inproc['seconds']:.2f} s = {tt / inproc['seconds']:.2f}", "(information)", None))
    else:
        rows.append(("one-process numpy Adam SGD to 84 %", "did not reach 84 % in 5 epochs", "(reference)", None))
    for key, label in (("mpi2", "`mpirun -n 2 python -c \"from mpi4py import MPI\"`"),
                       ("mpi5", "`mpirun -n 5 python -c \"from mpi4py import MPI\"`"),
                       ("imports5", "`mpirun -n 5 python -c \"import numpy, h5py, yaml; from mpi4py import MPI\"`")):
        rows.append((f"floor: {label}, ftmpi's mpirun flags", f"{floor[key]['median']:.2f} s", "(information)", None))
    c1 = cold["after_setup"]["outer_wall"]
    rows.append(("cold first run after jobs/setup.sh / warm run",
                 f"{c1:.2f} s / {warm:.2f} s = {c1 / warm:.2f} (set-up's compile: "
                 f"{cold['setup_compile_seconds']:.1f} s, once)", "<= 1.5", c1 / warm <= 1.5))
    c2 = cold["no_setup"]["outer_wall"]
    rows.append(("cold first run without the set-up step / warm run", f"{c2:.2f} s / {warm:.2f} s = {c2 / warm:.2f}",
                 "(information)", None))
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
    res["load_at_end"] = loadavg()
    mk = ["# End-to-end on Fashion-MNIST (4 workers, this machine)", "",
          f"{res['machine']}; load average {res['load_at_start']:.2f} at the start, {res['load_at_end']:.2f} at "
          "the end", "", "| measure | result | target | pass |", "|---|---|---|---|"]
    for name, val, target, ok in rows:
        mk.append(f"| {name} | {val} | {target} | {'—' if ok is None else ('PASS' if ok else 'FAIL')} |")
    mk += ["", "What each number includes. ftmpi: the outer wall of `bash jobs/local.sh 4 configs/fashion_mnist.yaml "
           "--run-dir DIR --quiet` from this benchmark (bash, the launcher's Python start and config check, mpirun "
           "starting five ranks on 2 cores, every rank's interpreter, imports and MPI_Init, rank 0 reading the "
           "data, the join, shard files, the rounds, the final evaluation and checkpoint, summary.json, teardown), "
           f"median of {args.repeats}; warm (the prepared data copy exists; the page cache is warm). **A** runs "
           "all 80 rounds; **B** stops after the round in which rank 0 evaluated (every 4 rounds, while the next "
           "round trained) a model at or above 84 % (`executor.target_accuracy`; `stopped_by` in summary.json). "
           "sklearn: `fit` alone on the arrays already in memory, the faster of two fits (its own BLAS "
           "threads). numpy SGD (benchmarks/numpy_sgd.py): the same softmax regression, Adam, batch 128, "
           "accuracy checked every 200 steps; as its own process timed from outside like ftmpi, the best of "
           "three learning rates and of numpy's default BLAS threads or one (median of 3 each) chosen first. **B** "
           f"is then measured in {args.pairs} alternations of an ftmpi run to 84 % and a numpy SGD run, each run "
           "right after a separate process touched and freed 400 MB (on this VM, memory the host took back after "
           "another program freed it costs up to 6x more system time to fault in again: the numpy SGD, which "
           "faults in 188 MB, took 0.53 s or 1.06 s depending on it; primed, both run as on a machine without a "
           "hypervisor, within 2-5 %), the median of each side; alternating makes both see the same drift of "
           "the machine's speed. Floors: no work at all, only what the line "
           "says, median of 3. Cold: "
           "numba's cache and ftmpi's bytecode emptied "
           f"and no prepared copy of the data (the OS page cache is not dropped), median of {args.repeats}; after "
           "set-up means after what jobs/setup.sh does (byte-compile ftmpi, compile the numba kernels); a "
           "softmax regression that "
           "quantizes nothing loads no numba kernel at all (kernels/softmax.py). Command: "
           "`python benchmarks/bench_e2e.py`.", "",
           "## Where a warm full run's time goes (`FTMPI_TIMELINE`)", "",
           "Seconds after the launcher's interpreter started (the last process to reach the phase):", "",
           *timeline_markdown(res["timeline"]), ""]
    write("e2e", res, "\n".join(mk))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
