"""Start-up lateness and the end of a run (issue 22, items 4 and 5), in real mpirun jobs.

A worker that says hello late but within ``executor.startup_timeout`` is not lost; one that never does is
dropped and its rows dealt to the others, and the run goes on (it used to end with exit 3, every worker lost:
the others' deadlines ran out while rank 0 waited for the late one). A rank that hangs once the verdict is
final does not keep the job alive, and a stalled filesystem is a reported write error, not a frozen job.
Every job here has a hard limit (``FTMPI_JOB_TIMEOUT``); a hang fails the test instead of stalling the suite.
"""
from __future__ import annotations

import pytest

from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ("--set", "executor.timeout=2", "--set", "executor.startup_timeout=6")


def test_a_worker_late_within_the_startup_timeout_is_not_lost(tmp_path):
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "slow:2@start:4", *FAST, limit=90)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["failures"] == [] and s["coverage"] == 1.0, s
    assert s["alive_workers"] == 3


def test_a_worker_that_never_says_hello_is_dropped_and_the_others_train_its_rows(tmp_path):
    """Worker 2 stops itself before its hello. The others said hello at once; rank 0 keeps their deadline
    alive with pings while it waits the start-up timeout, deals every row to them, and the run completes.
    The stopped process keeps mpirun alive: the launcher ends the job a grace period after the verdict."""
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "hang:2@start", *FAST, limit=90,
                  env={"FTMPI_FINISH_GRACE": "3"})
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["exit_code"] == 0, s
    assert [(f["rank"], f["how"]) for f in s["failures"]] == [(2, "never-joined")], s["failures"]
    assert s["coverage"] == 1.0 and s["alive_workers"] == 2
    assert sorted(map(int, s["initial_shards"])) == [1, 3], "the rows were dealt to the workers that joined"
    assert "ending the job" in job.err


def test_a_worker_that_says_hello_after_the_deadline_is_told_to_leave(tmp_path):
    """Its hello comes after it was dropped: rank 0 (mid-run, or at the end) tells it to leave, and the job
    ends by itself (the grace period is longer than the job's limit here, so it cannot be what ends it)."""
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "slow:2@start:5", "--set", "executor.timeout=2",
                  "--set", "executor.startup_timeout=3", limit=60, env={"FTMPI_FINISH_GRACE": "300"})
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert [(f["rank"], f["how"]) for f in s["failures"]] == [(2, "never-joined")]
    assert s["coverage"] == 1.0
    assert "rank 2: error: worker 2: declared dead at round 0 (never-joined" in job.err \
        or "after this rank was declared lost" in job.err, job.err[-2000:]


def test_a_worker_that_hangs_when_told_to_stop_does_not_keep_the_job_alive(tmp_path):
    """Worker 3 stops itself on the final Stop, before its goodbye: rank 0 ends it (same host, the process
    that said hello); the verdict stands."""
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "hang:3@finish", *FAST, limit=60,
                  env={"FTMPI_FINISH_GRACE": "300"})
    assert job.rc == 0, job.err[-3000:]
    assert job.summary["status"] == "completed" and job.summary["failures"] == []


def test_a_stalled_checkpoint_write_is_a_reported_error_not_a_frozen_job(tmp_path):
    """Every checkpoint write stalls (FTMPI_TEST_SLOW sleeps 1000 s in the writer): the first one is given up
    after the timeout; with nothing valid on disk that is exit 7 (DISK) with one line, within the job's
    limit."""
    job = run_job(3, SMOKE, tmp_path / "run", *FAST, "--set", "executor.checkpoint_every=5", limit=60,
                  env={"FTMPI_TEST_SLOW": "checkpoint:1000"})
    assert job.rc == 7, (job.rc, job.err[-3000:])
    assert "not done after" in job.err and "stalled filesystem" in job.err, job.err[-2000:]
    assert job.summary["exit_code"] == 7


def test_a_stalled_handoff_write_drops_its_rows_and_the_run_goes_on(tmp_path):
    """Worker 2 is killed; the handoff file of its rows never finishes writing (a stalled disk): after the
    timeout the rows are reported dropped and the run completes with the rest."""
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "kill:2@5", *FAST, "--set", "executor.remap=full",
                  limit=60, env={"FTMPI_TEST_SLOW": "handoff:1000"})
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and [f["rank"] for f in s["failures"]] == [2]
    assert s["coverage"] < 1.0, "the rows of the handoff that never finished are not counted as covered"
    assert "handoff write not done after" in job.err, job.err[-2000:]
