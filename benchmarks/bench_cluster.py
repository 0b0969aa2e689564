"""What a job loses to cluster events, on real Fashion-MNIST (issue 13).

    python benchmarks/bench_cluster.py [--skip-slurm] [--skip-hosts]

4 workers, logistic regression (configs/fashion_mnist.yaml, checkpoint every 10 rounds), launched with
``python -m ftmpi launch``. For each event at 40 % of the rounds: wall time against the fault-free run,
rounds redone (the rounds the interrupted launch had finished minus the round the run resumed from),
final accuracy.
- worker kill: SIGKILL of worker 2 (ULFM, survived in job);
- rank 0 kill: SIGKILL of rank 0 with the deputy turned off (``executor.deputy=false``), relaunched by
  ``--max-restarts 1`` (with the deputy, the default, it is taken over in the job: bench_failover.py);
- preemption: SIGTERM to the launcher, then a second launch with ``--resume auto``;
- node loss: two simulated hosts (nodeA 3 slots, nodeB 2; root), nodeB's daemon and ranks SIGKILLed;
  relaunched on nodeA with 2 workers;
- requeue: a real one-node SLURM job (``sbatch jobs/slurm.sbatch``), ``scontrol requeue``; the requeued job
  is made eligible 3 s later (SLURM's own wait, ~120 s, is not counted).
Writes benchmarks/results/cluster.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import ROOT, machine, write  # noqa: E402

CONFIG = str(ROOT / "configs" / "fashion_mnist.yaml")
CK = ("--set", "executor.checkpoint_every=10")


def _rounds(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.csv") as fh:
            return len(list(csv.DictReader(fh)))
    except OSError:
        return 0


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {"status": "missing"}


def launch(run_dir: Path, *args: str, workers: int = 4, env: dict | None = None, at: int | None = None,
           event=None) -> tuple[dict, float, int]:
    """One launcher run; ``event(proc)`` is called once the run reaches round ``at``. Returns (summary,
    wall seconds, the round the event hit)."""
    cmd = [sys.executable, "-m", "ftmpi", "launch", "-n", str(workers), CONFIG, "--quiet", "--run-dir", str(run_dir),
           *CK, *args]
    e = dict(os.environ, FTMPI_JOB_TIMEOUT="600", **(env or {}))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hit = -1
    if event is not None and at is not None:
        while _rounds(run_dir) < at and p.poll() is None:
            time.sleep(0.01)
        hit = _rounds(run_dir)
        event(p)
    _, err = p.communicate(timeout=900)
    if p.returncode not in (0, 6):
        sys.stderr.write(f"{' '.join(cmd)} -> rc {p.returncode}\n{err[-2000:]}\n")
    return _summary(run_dir), time.monotonic() - t0, hit


def _row(name: str, s: dict, wall: float, base: dict, hit: int | None) -> dict:
    res = s.get("resumed_from") or {}
    rel = [r for r in s.get("relaunches") or [] if r.get("rounds_written") is not None]
    done = rel[-1]["rounds_written"] if rel else hit  # the rounds the failed launch had finished
    redone = max(0, done - res["round"]) if done is not None and res else 0
    return {"event": name, "status": s.get("status"), "wall": wall, "vs_fault_free": wall / base["wall"],
            "rounds_redone": redone, "resumed_from": res.get("round"), "test_acc": s.get("final_test_acc"),
            "acc_delta_pts": 100 * (s.get("final_test_acc", float("nan")) - base["acc"]),
            "workers_at_end": s.get("alive_workers"), "relaunches": len(s.get("relaunches") or [])}


def node_loss(tmp: Path, base: dict, at: int) -> dict | None:
    sys.path.insert(0, str(ROOT))
    from tests.mpi.test_hosts import AGENT, kill_host, why_no_hosts

    why = why_no_hosts()
    if why:
        print(f"node loss skipped: {why}")
        return None
    hf = tmp / "hosts"
    hf.write_text("nodeA slots=3\nnodeB slots=2\n")
    s, wall, hit = launch(tmp / "node", "--hostfile", str(hf), "--max-restarts", "1", at=at,
                          env={"FTMPI_MPIRUN_ARGS": f"--mca plm_rsh_agent {AGENT}"},
                          event=lambda p: kill_host(p.pid, "nodeB"))
    return _row("node loss (nodeB of 2 hosts)", s, wall, base, hit)


def requeue(tmp: Path, base: dict, at: int) -> dict | None:
    up = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True)
    if up.returncode != 0:
        print(f"requeue skipped: {up.stderr.strip()}")
        return None
    run_dir = tmp / "rq"
    env = dict(os.environ, PYTHON=sys.executable, FTMPI_JOB_TIMEOUT="600")
    t0 = time.monotonic()
    job = subprocess.run(["sbatch", "--parsable", "--overcommit", "--ntasks=5", f"--output={tmp}/rq-%j.out",
                          str(ROOT / "jobs" / "slurm.sbatch"), CONFIG, "--run-dir", str(run_dir), "--quiet", *CK],
                         cwd=tmp, env=env, capture_output=True, text=True, check=True).stdout.strip()

    def state() -> str:
        return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()

    while _rounds(run_dir) < at and state():
        time.sleep(0.01)
    hit = _rounds(run_dir)
    subprocess.run(["scontrol", "requeue", job], check=True)
    while state() != "PENDING":
        time.sleep(0.1)
    waited = time.monotonic()
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], check=True)
    while state() not in ("RUNNING", ""):
        time.sleep(0.1)
    waited = time.monotonic() - waited
    while state():
        time.sleep(0.2)
    wall = time.monotonic() - t0 - waited
    return _row("requeue (SLURM, scontrol requeue)", _summary(run_dir), wall, base, hit) | {"queue_wait": waited}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-slurm", action="store_true")
    ap.add_argument("--skip-hosts", action="store_true")
    args = ap.parse_args()
    from ftmpi.config import load_config

    cfg = load_config(CONFIG)
    rounds = math.ceil(cfg.model.n_iterations / cfg.executor.comm_period)
    at = rounds * 2 // 5
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-cluster-"))
    launch(tmp / "warm-up")  # the first launch loads numba's cache and the dataset into the page cache
    s, wall, _ = launch(tmp / "base")
    base = {"acc": s["final_test_acc"], "wall": wall}
    rows = [_row("none (fault-free)", s, wall, base, None)]
    s, wall, _ = launch(tmp / "wk", "--inject", f"kill:2@{at}")
    rows.append(_row("worker kill (ULFM, in job)", s, wall, base, None))
    s, wall, _ = launch(tmp / "r0", "--inject", f"kill:0@{at}", "--max-restarts", "1", "--set", "executor.deputy=false")
    rows.append(_row("rank 0 kill, no deputy (--max-restarts 1)", s, wall, base, at))
    s1, w1, hit = launch(tmp / "pre", at=at, event=lambda p: p.send_signal(signal.SIGTERM))
    s, w2, _ = launch(tmp / "pre", "--resume", "auto")
    rows.append(_row("preemption (SIGTERM, then --resume auto)", s, w1 + w2, base, s1.get("rounds", hit)))
    if not args.skip_hosts:
        r = node_loss(tmp, base, at)
        rows += [r] if r else []
    if not args.skip_slurm:
        r = requeue(tmp, base, at)
        rows += [r] if r else []
    md = ["# Cluster events on Fashion-MNIST (4 workers, logreg, checkpoint every 10 rounds, this machine)\n",
          f"{machine()}\n", f"Fault-free: test accuracy {base['acc']:.4f} in {base['wall']:.1f} s (launcher's wall "
          f"time, start-up included); events at round {at} of {rounds}.\n",
          "| event | status | wall s | vs fault-free | rounds redone | resumed from | test acc | Δ acc (pts) | "
          "workers at end |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['event']} | {r['status']} | {r['wall']:.1f} | {r['vs_fault_free']:.2f}x | "
                  f"{r['rounds_redone']} | {r['resumed_from'] if r['resumed_from'] is not None else '—'} | "
                  f"{r['test_acc']:.4f} | {r['acc_delta_pts']:+.2f} | {r['workers_at_end']} |")
    if any("queue_wait" in r for r in rows):
        md.append("\nRequeue: wall time excludes the time the requeued job waited in the queue "
                  f"({next(r['queue_wait'] for r in rows if 'queue_wait' in r):.1f} s with StartTime=now+3).")
    write("cluster", {"machine": machine(), "rounds": rounds, "event_round": at, "rows": rows}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
