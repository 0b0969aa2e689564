"""Parts of benchmarks/bench_e2e.py: the baselines run as their own processes, the MPI floor, and the
start-up timeline of one ftmpi run (``FTMPI_TIMELINE``)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import ROOT, run

from ftmpi.observe.timeline import read

LOGREG = "configs/fashion_mnist.yaml"


PRIME = "import numpy as np; a = np.ones(400_000_000 // 8); a += 1"


def prime_memory() -> None:
    """Touch and free 400 MB in a process of its own, so that the next program gets freshly freed pages. On
    this VM, memory the host has taken back after another program freed it costs up to 6x more system time
    to fault in again (the numpy SGD, which faults in 188 MB of float32 rows, ran in 0.53 s or 1.06 s
    depending on it); primed, programs run in the state a machine without a hypervisor is always in, and
    their times spread by 2-5 % instead of 2x."""
    subprocess.run([sys.executable, "-c", PRIME], check=True, capture_output=True)


def numpy_fresh(lr: float, threads: str | None, repeats: int = 3) -> dict:
    """benchmarks/numpy_sgd.py as its own process, timed from outside (interpreter start, imports, data
    loading, training and the accuracy checks until 84 %), each run right after :func:`prime_memory`;
    ``threads``: OPENBLAS_NUM_THREADS (None: numpy's default, every core)."""
    env = dict(os.environ)
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(v, None)
        if threads is not None:
            env[v] = threads
    walls, last = [], {}
    for _ in range(repeats):
        prime_memory()
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "numpy_sgd.py"), "--lr", str(lr)], cwd=ROOT,
                           env=env, capture_output=True, text=True, check=True)
        walls.append(time.monotonic() - t0)
        last = json.loads(p.stdout.strip().splitlines()[-1])
    return {"lr": lr, "blas_threads": threads or "default", "walls": walls, "median": statistics.median(walls),
            "reached": last["reached"], "test_acc": last["test_acc"], "steps": last["steps"],
            "in_process_seconds": last["seconds"]}


def mpi_floor(ranks: int, code: str, repeats: int = 3) -> dict:
    """``mpirun -n ranks python -c code`` with the flags ftmpi's launcher uses (ULFM, ob1 over sm/tcp,
    oversubscribe): what any Python trainer under mpirun pays here before its first line of work."""
    cmd = ["mpirun", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + [
        "--mca", "pml", "ob1", "--mca", "btl", "self,sm,tcp", "--with-ft", "ulfm", "-n", str(ranks),
        sys.executable, "-c", code]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    walls = []
    for _ in range(repeats):
        t0 = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
        walls.append(time.monotonic() - t0)
    return {"ranks": ranks, "code": code, "walls": walls, "median": statistics.median(walls)}


PHASES = [  # (who, phase, what it marks)
    ("L", "mpirun", "the launcher (python -m ftmpi launch) has checked the config and starts mpirun"),
    ("ranks", "start", "every rank's interpreter reached ftmpi"),
    ("ranks", "mpi-init", "MPI_Init returned on every rank"),
    ("ranks", "config", "config loaded and run dir resolved on every rank"),
    ("workers", "kernels", "workers imported their modules (and any numba kernels they need)"),
    ("0", "data", "rank 0 holds the dataset (read in a thread since its start)"),
    ("0", "joined", "every worker said hello"),
    ("0", "dealt", "rows dealt, shard files written"),
    ("workers", "shard", "workers read their shards"),
    ("0", "round-0", "round 0's replies are in"),
    ("0", "rounds-done", "the last round's replies are in"),
    ("0", "finished", "final evaluation, checkpoint and summary.json written, workers stopped"),
    ("L", "mpirun-exit", "mpirun has exited"),
]


def timeline(tmp: Path, *args: str) -> dict:
    """One warm run with FTMPI_TIMELINE: when each phase ended (the last process to reach it), in seconds after
    the launcher's interpreter started, and the CPU seconds each process used."""
    path = tmp / "timeline.txt"
    old = os.environ.get("FTMPI_TIMELINE")
    os.environ["FTMPI_TIMELINE"] = str(path)
    try:
        r = run(4, LOGREG, tmp / "timeline", *args)
    finally:
        if old is None:
            os.environ.pop("FTMPI_TIMELINE")
        else:
            os.environ["FTMPI_TIMELINE"] = old
    rows = read(path)
    t0 = min(t for t, who, ph, _ in rows if who == "L" and ph == "start")
    out = []
    for who, phase, what in PHASES:
        ts = [t for t, w, ph, _ in rows if ph == phase and (w == who or (who == "ranks" and w != "L")
                                                            or (who == "workers" and w not in ("L", "0")))]
        if ts:
            out.append({"phase": phase, "who": who, "at": max(ts) - t0, "what": what})
    cpu = {w: max(c for _, ww, _, c in rows if ww == w) for w in {w for _, w, _, _ in rows}}
    return {"phases": out, "cpu": cpu, "outer_wall": r["outer_wall"], "rounds": r.get("rounds")}


def timeline_markdown(tl: dict) -> list[str]:
    lines = ["| phase ends | at (s) | what |", "|---|---|---|"]
    for p in tl["phases"]:
        lines.append(f"| {p['phase']} ({p['who']}) | {p['at']:.2f} | {p['what']} |")
    cpu = tl["cpu"]
    workers = [v for k, v in cpu.items() if k not in ("L", "0")]
    lines += ["", f"CPU seconds used: launcher {cpu.get('L', 0):.2f}, rank 0 {cpu.get('0', 0):.2f}, workers "
              f"{', '.join(f'{v:.2f}' for v in sorted(workers))} (mpirun's own not counted); outer wall of this "
              f"run {tl['outer_wall']:.2f} s."]
    return lines


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="ftmpi-bench-"))
