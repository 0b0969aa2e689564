"""Rank 0 busy, rank 0 out of workers: real mpirun jobs (issue 14, items 2 and 6)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ftmpi.storage.checkpoint import list_checkpoints, load
from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_slow_checkpoints_and_a_slow_handoff_write_lose_no_worker(tmp_path):
    """Every checkpoint write and the handoff write sleep 1.6 s, longer than ``executor.timeout`` (1 s) and than
    a round: rank 0 pings the workers while it waits, so only the killed worker is lost and none gives up."""
    job = run_job(3, SMOKE, tmp_path / "slow", "--inject", "kill:2@5", "--set", "executor.timeout=1",
                  "--set", "executor.checkpoint_every=3", "--set", "executor.remap=full", limit=150,
                  env={"FTMPI_TEST_SLOW": "checkpoint:1.6,handoff:1.6"})
    assert job.rc == 0, job.err
    s = job.summary
    assert [f["rank"] for f in s["failures"]] == [2], s["failures"]
    assert s["alive_workers"] == 2 and s["coverage"] == 1.0 and "lost the coordinator" not in job.err
    assert s["checkpoint_write_seconds"] >= 1.6 * 6  # the writes were slow indeed
    assert s["failures"][0]["recovered_round"] is not None, "the survivors trained on the rows in the end"


def test_a_run_that_lost_every_worker_can_be_resumed(tmp_path):
    """The last worker's rows are kept unowned (not dropped) in the final checkpoint; a resume deals them
    again and trains to the end."""
    run = tmp_path / "all"
    job = run_job(2, SMOKE, run, "--inject", "kill:1@3", "--inject", "kill:2@5", "--set", "executor.timeout=1.5")
    assert job.rc == 3, job.err
    final = load(list_checkpoints(run)[-1])
    orphaned = (final.owner < 0) & ~final.dropped
    assert final.coverage == 0.0 and orphaned.sum() == job.summary["rows_orphaned"] > 1600
    again = run_job(2, SMOKE, tmp_path / "unused", "--resume", str(run), "--set", "executor.timeout=1.5")
    assert again.rc == 0, again.err
    s = json.loads((run / "summary.json").read_text())  # a resume writes into the run it resumes
    assert s["status"] == "completed" and s["iterations"] == 200 and s["alive_workers"] == 2
    assert s["coverage"] == pytest.approx(orphaned.sum() / 3200)
    assert "Traceback" not in again.err
    last = load(list_checkpoints(run)[-1])
    assert np.array_equal(np.flatnonzero(last.owner >= 0), np.flatnonzero(orphaned))


def test_a_handoff_write_on_a_full_disk_drops_its_rows_and_the_run_goes_on(tmp_path):
    """Issue 14, item 10: the handoff file write fails with OSError(ENOSPC) (injected by a test hook in
    ftmpi/coordinator/files.py); rank 0 drops the rows with one warning, the survivors train on, the run completes."""
    job = run_job(3, SMOKE, tmp_path / "full", "--inject", "kill:2@5", "--set", "executor.remap=full",
                  limit=150, env={"FTMPI_TEST_ENOSPC": "handoff"})
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and [f["rank"] for f in s["failures"]] == [2]
    assert s["rows_unwritten"] == s["failures"][0]["rows_handed"] > 0 and s["coverage"] < 0.7
    assert "could not be written" in job.err and "No space left" in job.err and "Traceback" not in job.err
    assert len(job.metrics()) == s["rounds"] == 20
