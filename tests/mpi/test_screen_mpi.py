"""Bad numbers never reach the model (issue 23), on real mpirun jobs: a worker's NaN or corrupted update is
left out of the round's aggregate; one rejected ``executor.reject_limit`` rounds in a row is treated as failed
(its rows handed over, told why); a model that diverges stops the run with one line, exit 8, and the newest
valid checkpoint is the last finite model.

Every job runs under a hard limit (tests/mpirun.py); the synthetic smoke config trains 4 workers, 20 rounds.
"""
from __future__ import annotations

import numpy as np
import pytest

from ftmpi.storage.checkpoint import list_checkpoints, newest_valid
from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ("--set", "executor.timeout=1.5")
SYNC = ("--set", "executor.send_gradients=true", "--set", "executor.comm_period=1",
        "--set", "model.n_iterations=40")


@pytest.mark.parametrize("regime", ["local", "sync"])
def test_a_nan_update_is_rejected_and_the_run_ends_as_without_it(tmp_path, regime):
    extra = SYNC if regime == "sync" else ()
    clean = run_job(4, SMOKE, tmp_path / "clean", *FAST, *extra)
    job = run_job(4, SMOKE, tmp_path / "nan", "--inject", "nan:2@5", *FAST, *extra)
    assert clean.rc == 0 and job.rc == 0, job.err
    s = job.summary
    assert s["status"] == "completed" and s["failures"] == [] and s["alive_workers"] == 4
    assert s["screen"]["rejected"] == 1 and s["screen"]["rejected_by_rank"] == {"2": 1}
    assert s["screen"]["rejections"][0]["round"] == 5 and "not finite (NaN)" in s["screen"]["rejections"][0]["reason"]
    assert clean.summary["screen"]["rejected"] == 0
    rows = job.metrics()
    assert [int(r["rejected"]) for r in rows] == [int(i == 5) for i in range(len(rows))]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert abs(s["final_test_acc"] - clean.summary["final_test_acc"]) <= 0.01


def test_corrupted_k_rounds_in_a_row_the_worker_is_lost_told_why_and_its_rows_handed(tmp_path):
    # a high exponent bit flipped, a scaling by 1000, a NaN: three rejections in a row (reject_limit 3)
    job = run_job(4, SMOKE, tmp_path / "c", "--inject", "corrupt:2@5", "--inject", "corrupt:2@6:1000",
                  "--inject", "nan:2@7", *FAST)
    assert job.rc == 0, job.err
    s = job.summary
    assert s["status"] == "completed" and s["alive_workers"] == 3
    (f,) = s["failures"]
    assert (f["rank"], f["how"], f["round"]) == (2, "rejected", 7)
    assert "rejected 3 rounds in a row" in f["reason"] and "not finite (NaN)" in f["reason"]
    assert f["kind"] == "nan", "the loss is attributed to the injected fault"
    assert f["rows_handed"] == 50 and f["recovered_round"] is not None
    assert s["screen"]["rejected_by_rank"] == {"2": 3}
    assert [r["round"] for r in s["screen"]["rejections"]] == [5, 6, 7]
    assert "times its reference" in s["screen"]["rejections"][0]["reason"]
    # the worker was told why and left (its own line, exit 5); the others trained on its rows
    assert "worker 2: treated as failed at round 7: its updates were rejected 3 rounds in a row" in job.err
    rows = job.metrics()
    assert [int(r["alive_workers"]) for r in rows][6:9] == [4, 3, 3]
    assert s["final_test_acc"] > 0.8


def test_a_diverging_learning_rate_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    run_dir = tmp_path / "d"
    job = run_job(4, SMOKE, run_dir, "--set", "model.type=mlp", "--set", "model.hidden=32",
                  "--set", "optimizer.learning_rate=10", "--set", "executor.checkpoint_every=2", *FAST)
    assert job.rc == 8, job.err
    lines = [ln for ln in job.err.splitlines() if "rank 0: error:" in ln]
    assert len(lines) == 1 and "the model diverged" in lines[0] and "learning_rate=10" in lines[0], job.err
    s = job.summary
    assert (s["status"], s["exit_code"], s["stopped_by"]) == ("diverged", 8, "diverged")
    assert s["rounds"] < 20 and s["failures"] == [], "divergence is the model's fault, no worker's"
    assert np.isfinite(s["final_test_acc"])
    path, snap, warnings = newest_valid(run_dir)  # read back from HDF5
    assert path == list_checkpoints(run_dir)[-1] and warnings == []
    assert np.isfinite(snap.params).all() and snap.round == s["rounds"]
