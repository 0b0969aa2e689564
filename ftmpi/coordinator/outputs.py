"""Rank 0's outputs: the metrics row of each round (evaluated while the next round trains), progress lines,
tensorboard, and the summary dict of ``summary.json``. No MPI.

A round's row is written one round late (:meth:`Outputs.write_row`), after the next round's broadcast, so
that evaluating the global model on the test set overlaps the workers' training.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftmpi.config import Config
from ftmpi.core.cluster import ClusterState, Log
from ftmpi.errors import EXIT_DIVERGED, EXIT_NO_WORKERS, EXIT_OK, EXIT_PREEMPTED
from ftmpi.observe.metrics import MetricsCSV, Progress

if TYPE_CHECKING:
    from ftmpi.observe.tb import TBWriter

Evaluate = Callable[[], tuple[float, np.ndarray]]  # -> test accuracy, per-class accuracy


class Outputs:
    """The metrics table, the progress stream and (optionally) tensorboard of one run."""

    def __init__(self, run_dir: Path, cfg: Config, progress: Progress, n_classes: int, append: bool,
                 tb: TBWriter | None = None) -> None:
        self.cfg, self.progress, self.tb = cfg, progress, tb
        self.metrics = MetricsCSV(Path(run_dir) / "metrics.csv", [f"acc_class{c}" for c in range(n_classes)],
                                  append=append, warn=progress.warn)
        self.pending: dict[str, Any] | None = None
        self.last_loss = float("nan")
        self.last_acc = float("nan")
        self.last_per_class = np.zeros(0)
        # executor.target_accuracy: the first evaluated row that reached it (round, test_acc, wall), else None
        self.reached: dict[str, Any] | None = None

    def log(self, e: Log, rnd: int) -> None:
        (self.progress.warn if e.text.startswith("warning:") else self.progress.event)(e.text)
        if self.tb is not None and e.tb is not None:
            self.tb.event(rnd, e.tb, kind=e.kind)

    def write_row(self, evaluate: Evaluate, last: bool = False) -> None:
        """Evaluate the global model (as of the end of the pending round) and write that round's row."""
        row, self.pending = self.pending, None
        if row is None:
            return
        rnd = row["round"]
        if rnd % self.cfg.executor.eval_every == 0 or last:
            self.last_acc, self.last_per_class = evaluate()
            target = self.cfg.executor.target_accuracy
            if target is not None and self.reached is None and self.last_acc >= target:
                self.reached = {"round": rnd, "test_acc": self.last_acc, "wall_seconds": row["wall"]}
        event = row.pop("_event")
        row["test_acc"] = self.last_acc
        row.update({f"acc_class{c}": float(v) for c, v in enumerate(self.last_per_class)})
        self.metrics.row(row)
        if self.tb is not None:
            from ftmpi.observe.tb import row_scalars

            self.tb.scalars(rnd, row_scalars(row))
        self.progress.update(rnd, f"loss {row['train_loss']:.4f} acc {self.last_acc:.4f} workers "
                             f"{row['alive_workers']} epoch {row['epoch']} failures {row['failures']} "
                             f"{(row['bytes_sent'] + row['bytes_recv']) / 1e6:.1f} MB", force=event or last)

    def target_note(self, last_round: int) -> str:
        r = self.reached or {}
        return (f"test accuracy {r.get('test_acc', float('nan')):.4f} reached executor.target_accuracy="
                f"{self.cfg.executor.target_accuracy} at round {r.get('round')}; stopping after round {last_round}")

    def close(self) -> None:
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        self.progress.close()


def summary(code: int, cfg: Config, state: ClusterState, out: Outputs, run: dict[str, Any]) -> dict[str, Any]:
    """The content of ``summary.json``; ``run``: the driver's counters (wall, bytes, rounds...)."""
    status = {EXIT_OK: "completed", EXIT_NO_WORKERS: "no-workers", EXIT_PREEMPTED: "preempted",
              EXIT_DIVERGED: "diverged"}.get(code, "failed")
    rec = [f.recovery_time for f in state.failures if f.recovery_time is not None]
    ex = cfg.executor
    return {
        "status": status, "exit_code": code, "name": cfg.name, "scenario": ex.scenario, "term": state.term,
        "final_test_acc": out.last_acc, "per_class_acc": [float(v) for v in out.last_per_class],
        "wall_seconds": run["wall_seconds"], "rounds": state.round, "iterations": run["iterations"],
        "bytes_sent": run["bytes_sent"], "bytes_recv": run["bytes_recv"], "bytes_total": run["bytes_total"],
        "ranks": run["ranks"], "workers": run["ranks"] - 1, "resumed_from": run["resumed_from"],
        "checkpoint_seconds": run["checkpoint_seconds"], "checkpoint_write_seconds": run["checkpoint_write_seconds"],
        "staging": run["staging"], "alive_comm": run["alive_comm"], "preempted": run["preempted"],
        "alive_workers": len(state.alive), "detector": run["detector"], "comm_period": ex.comm_period,
        "switched_to_every_iteration_at": run["switched_at"], "quantize": ex.quantize, "remap": ex.remap,
        "partition": cfg.data.partition, "rep_selection": cfg.optimizer.rep_selection,
        "rep_weight": cfg.optimizer.rep_weight, "dataset": run["dataset"],
        "failures": [f.record() for f in state.failures], "max_recovery_time": max(rec, default=None),
        "coverage": state.ownership.coverage() if run["dealt"] else None,
        "rows_orphaned": int(len(state.orphaned())), "rows_unreadable": state.rows_unreadable,
        "rows_unwritten": state.rows_unwritten,
        "points_handed": state.rows_handed, "stale_dropped": state.stale,
        "class_histogram": run["class_histogram"], "initial_shards": run["initial_shards"],
        "shard_bytes_written": run["shard_bytes"],
        "stopped_by": _stopped_by(code, run), "target_accuracy": ex.target_accuracy,
        "target_reached": out.reached,
    }


def _stopped_by(code: int, run: dict[str, Any]) -> str:
    """Why the rounds ended: ``rounds`` (model.n_iterations done), ``target_accuracy``, ``preempted``,
    ``diverged`` (the global model would have held NaN/Inf), or ``error`` (exit code ``code``: no worker left, a
    disk that failed, ...)."""
    if code == EXIT_PREEMPTED:
        return "preempted"
    if code == EXIT_DIVERGED:
        return "diverged"
    if code != EXIT_OK:
        return "error"
    return "target_accuracy" if run.get("target_stop") else "rounds"
