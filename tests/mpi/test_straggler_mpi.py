"""Stragglers (issue 25) in real mpirun jobs: world rank 2 four times slower from the first round
(``slowdown:2@0:4``) on Fashion-MNIST. With ``executor.quorum: 0.75`` the run completes with every worker (slow
is not dead), rounds close without it, its late replies are folded (``metrics.csv`` ``late_folded``) and rank 0
logs it as a chronic straggler given fewer local iterations (``rebalanced``). With quorum 1.0 (the default)
the slowdown changes nothing but time: the same losses and accuracies as the fault-free run, no late replies.

Skipped where Fashion-MNIST is not installed (``apt-get install dataset-fashion-mnist``).
"""
from __future__ import annotations

import pytest

from ftmpi.errors import DataError
from ftmpi.storage.data import IDX_FILES, find_dataset_dir
from tests.mpirun import ROOT, needs_mpi, run_job

CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
SHORT = ("--set", "model.n_iterations=300", "--set", "executor.eval_every=5")  # 30 rounds


def _have_fashion() -> bool:
    try:
        find_dataset_dir("fashion-mnist", IDX_FILES)
    except DataError:
        return False
    return True


pytestmark = [pytest.mark.mpi, needs_mpi,
              pytest.mark.skipif(not _have_fashion(), reason="Fashion-MNIST is not installed")]


def _numbers(job) -> list[tuple[str, str]]:
    return [(r["train_loss"], r["test_acc"]) for r in job.metrics()]


def test_quorum_rounds_fold_the_stragglers_replies_and_rebalance_it(tmp_path):
    job = run_job(4, CONFIG, tmp_path / "q", "--inject", "slowdown:2@0:4", "--set", "executor.quorum=0.75", *SHORT,
                  limit=240)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["failures"] == [] and s["alive_workers"] == 4, "slow is not dead"
    rows = job.metrics()
    assert [int(r["round"]) for r in rows] == list(range(30)), "one row per round"
    assert sum(int(r["late_folded"]) for r in rows) >= 1, "the straggler's late replies are folded, not dropped"
    assert int(rows[-1]["late_dropped"]) <= sum(int(r["late_folded"]) for r in rows)
    assert any(int(r["rebalanced"]) == 1 for r in rows), "the straggler is given fewer iterations"
    assert "worker 2 is a chronic straggler" in job.err + job.out, "rank 0 logs the rebalancing"
    assert s["final_test_acc"] > 0.80
    st = s["stragglers"]  # the run's totals in summary.json, as the rows count them
    assert st["quorum"] == 0.75 and st["late_folded"] == sum(int(r["late_folded"]) for r in rows)
    assert st["late_dropped"] == int(rows[-1]["late_dropped"]) and st["rebalances"] >= 1
    marks = list((tmp_path / "q" / "faults").glob("rank-2.json"))
    assert marks, "the slowdown is recorded like any injected fault"


def test_quorum_one_waits_for_the_straggler_and_changes_nothing_else(tmp_path):
    clean = run_job(4, CONFIG, tmp_path / "clean", *SHORT, limit=240)
    slow = run_job(4, CONFIG, tmp_path / "slow", "--inject", "slowdown:2@0:4", *SHORT, limit=240)
    assert clean.rc == 0 and slow.rc == 0, slow.err[-3000:]
    assert slow.summary["failures"] == [] and slow.summary["status"] == "completed"
    assert _numbers(slow) == _numbers(clean), "quorum 1.0: the same losses and accuracies, round by round"
    assert all(int(r["late_folded"]) == 0 and int(r["rebalanced"]) == 0 for r in slow.metrics())
    assert slow.summary["stragglers"] == {"quorum": 1.0, "late_folded": 0, "late_dropped": 0, "rebalances": 0,
                                          "rebalanced_now": []}
