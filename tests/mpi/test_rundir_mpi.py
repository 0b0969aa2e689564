"""Real launches into a run dir that holds an earlier run (issue 13 item 1, issue 14 items 5, 14)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = needs_mpi
SMOKE = ROOT / "configs" / "smoke.yaml"
SHORT = ("--set", "model.n_iterations=100")


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fin") / "r"
    job = run_job(2, SMOKE, run_dir, *SHORT, limit=90)
    assert job.rc == 0 and job.summary["status"] == "completed", job.err
    return run_dir


def test_fresh_run_into_a_run_with_checkpoints_changes_nothing(finished):
    before = _files(finished)
    job = run_job(2, SMOKE, finished, *SHORT, limit=60)
    assert job.rc == 2, job.err
    lines = [ln for ln in job.err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "earlier run's checkpoints" in lines[0] and "--overwrite" in lines[0], job.err
    assert _files(finished) == before


def test_failed_resume_keeps_the_finished_summary(finished):
    before = _files(finished)
    job = run_job(2, SMOKE, finished, "--resume", str(finished), "--set", "model.type=mlp", limit=60)
    assert job.rc == 2 and "model.type=logreg" in job.err, job.err
    assert _files(finished) == before and json.loads((finished / "summary.json").read_text())["status"] == \
        "completed"


def test_a_second_job_in_a_locked_run_dir_is_refused(finished):
    lock = finished / "ftmpi.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "2026-11-29 12:00:00"}))
    try:
        job = run_job(2, SMOKE, finished, "--resume", "auto", *SHORT, limit=60)
    finally:
        lock.unlink()
    assert job.rc == 2 and "in use by pid 1 on another-host" in job.err, job.err


def test_resume_auto_continues_and_overwrite_starts_over(finished, tmp_path):
    job = run_job(2, SMOKE, finished, "--resume", "auto", *SHORT, limit=90)
    assert job.rc == 0 and job.summary["resumed_from"]["round"] == 10, job.err
    assert not (finished / "ftmpi.lock").exists()
    job = run_job(2, SMOKE, finished, "--overwrite", *SHORT, limit=90)
    assert job.rc == 0 and job.summary["resumed_from"] is None, job.err
    fresh = run_job(2, SMOKE, tmp_path / "new", "--resume", "auto", *SHORT, limit=90)
    assert fresh.rc == 0 and fresh.summary["resumed_from"] is None, fresh.err


def test_bad_inject_rank_and_a_file_as_run_dir_are_one_line_exit_2(tmp_path):
    job = run_job(2, SMOKE, tmp_path / "r", "--inject", "kill:7@3", limit=60)
    assert job.rc == 2 and "names rank 7, but this job has ranks 0..2" in job.err, job.err
    assert job.err.count("error") == 1 and "Traceback" not in job.err
    (tmp_path / "f").write_text("keep me")
    job = run_job(2, SMOKE, tmp_path / "f", limit=60)
    assert job.rc == 2 and "is not a directory" in job.err and "Traceback" not in job.err, job.err
    assert (tmp_path / "f").read_text() == "keep me"


def test_resume_with_the_same_workers_writes_no_shard(tmp_path):
    """Issue 16: a resume whose ownership did not change reuses the workers' shard files."""
    run_dir = tmp_path / "r"
    job = run_job(2, SMOKE, run_dir, *SHORT, limit=90)
    assert job.rc == 0 and job.summary["shard_bytes_written"] > 0, job.err
    shards = {p.name: p.stat().st_mtime_ns for p in (run_dir / "shards").glob("worker-*.h5")}
    job = run_job(2, SMOKE, run_dir, "--resume", str(run_dir), "--set", "model.n_iterations=150", limit=90)
    assert job.rc == 0 and job.summary["status"] == "completed", job.err
    assert job.summary["resumed_from"] is not None and job.summary["shard_bytes_written"] == 0
    assert shards == {p.name: p.stat().st_mtime_ns for p in (run_dir / "shards").glob("worker-*.h5")}


def test_the_deputy_that_took_over_releases_the_lock_at_the_end(tmp_path):
    """Rank 0 is killed mid-run: its deputy takes the run dir's lock over with the run and releases it at the
    end, so that the lock does not outlive the job naming rank 0's dead pid (which a launch on any other host
    than rank 0's would take for a job in use)."""
    run_dir = tmp_path / "r"
    job = run_job(2, SMOKE, run_dir, "--inject", "kill:0@5", "--set", "executor.timeout=2", *SHORT, limit=120)
    assert job.rc == 0 and job.summary["coordinator"] == 1, job.err[-3000:]
    lock = run_dir / "ftmpi.lock"
    assert not lock.exists(), f"the lock outlived the run: {lock.read_text()}"
    assert not list(run_dir.glob("ftmpi.lock*")), "no marker or temp file is left behind"
