"""Rank 0 lost in a real mpirun job (issue 12): killed (SIGKILL, ULFM reports it), exited without
MPI_Finalize, or stopped (SIGSTOP, only the deadline sees it). The announced deputy (rank 1) takes over in
its own process and the run completes in the same job: exit 0, one metrics row per round, the change
recorded in summary.json. Each job runs under a hard time limit (tests/mpirun.py)."""
from __future__ import annotations

import pytest

from .mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
ARGS = ("--set", "executor.timeout=2", "--set", "executor.remap=full")


@pytest.mark.parametrize("kind,how", [("kill", "ulfm"), ("exit", "timeout"), ("hang", "timeout")])
def test_the_deputy_takes_over_when_rank_0_is_lost(tmp_path, kind, how):
    job = run_job(3, SMOKE, tmp_path / kind, "--inject", f"{kind}:0@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["exit_code"] == 0 and s["coordinator"] == 1
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)], "one row per round, none twice"
    (c,) = s["coordinator_changes"]
    assert (c["lost"], c["new"], c["how"], c["kind"]) == (0, 1, how, kind)
    assert c["round"] == 7 and c["rounds_redone"] == 1, "the round in flight is redone, no more"
    assert c["first_round_at"] >= c["detected_at"] >= c["injected_at"]
    if kind == "hang":
        assert c["killed"] is True, "the stopped rank 0 was ended so that mpirun could return"
    promoted = [f for f in s["failures"] if f["how"] == "promoted"]
    assert [f["rank"] for f in promoted] == [1] and s["alive_workers"] == 2
    assert s["coverage"] == 1.0, "remap full: the deputy's rows went to the other workers"
    assert "coordinator rank 0 lost" in job.err and "Traceback" not in job.err
    assert s["iterations"] == 200


def test_takeover_trains_to_the_fault_free_accuracy(tmp_path):
    ref = run_job(3, SMOKE, tmp_path / "ref", *ARGS, limit=120)
    job = run_job(3, SMOKE, tmp_path / "kill", "--inject", "kill:0@10", *ARGS, limit=120)
    assert ref.rc == 0 and job.rc == 0, job.err[-3000:]
    assert abs(job.summary["final_test_acc"] - ref.summary["final_test_acc"]) < 0.01
    assert job.summary["coordinator"] == 1
