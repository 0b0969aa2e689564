"""Rank 0 lost in a real mpirun job (issue 12): killed (SIGKILL, ULFM reports it), exited without
MPI_Finalize, or stopped (SIGSTOP, only the deadline sees it). The announced deputy (rank 1) takes over in
its own process and the run completes in the same job: exit 0, one metrics row per round, the change
recorded in summary.json. A coordinator that raises tells its workers (``Abdicate``) and the deputy takes
over at once. Each job runs under a hard time limit (tests/mpirun.py)."""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.mpirun import ROOT, launched, metrics_rows, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
ARGS = ("--set", "executor.timeout=2", "--set", "executor.remap=full")
# a worker killed on the coordinator's host: seen ending there (executor.watch_exits), or reported by ULFM first
KILLED_HERE = ("exited", "ulfm")


@pytest.mark.parametrize("kind,how", [("kill", "ulfm"), ("exit", "timeout"), ("hang", "timeout"), ("raise", "error")])
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
    assert s["failures"] == [] and s["alive_workers"] == 3, "the deputy trains its rows in the coordinator's process"
    assert s["coverage"] == 1.0 and s["exact"]["takeovers"][0]["exact"] is True
    assert "coordinator rank 0 lost" in job.err
    assert job.err.count("Traceback") == (1 if kind == "raise" else 0), "only rank 0's own crash report"
    assert s["iterations"] == 200


def test_rank_0_lost_at_round_1_is_taken_over(tmp_path):
    """Rank 0 killed right after the start (a deputy that trains reads the run dir at the takeover, and the
    test set and shards are there from round 0 on)."""
    job = run_job(3, SMOKE, tmp_path / "early", "--inject", "kill:0@1", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1 and s["coverage"] == 1.0
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]


def test_takeover_trains_to_the_fault_free_accuracy(tmp_path):
    ref = run_job(3, SMOKE, tmp_path / "ref", *ARGS, limit=120)
    job = run_job(3, SMOKE, tmp_path / "kill", "--inject", "kill:0@10", *ARGS, limit=120)
    assert ref.rc == 0 and job.rc == 0, job.err[-3000:]
    assert abs(job.summary["final_test_acc"] - ref.summary["final_test_acc"]) < 0.01
    assert job.summary["coordinator"] == 1


def test_the_coordinator_lost_twice_the_second_deputy_takes_over(tmp_path):
    """Rank 0 killed at round 5; rank 1 coordinates and names rank 2 its deputy; rank 1 killed at round 12."""
    job = run_job(3, SMOKE, tmp_path / "twice", "--inject", "kill:0@5", "--inject", "kill:1@12", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 2 and s["alive_workers"] == 2
    assert [(c["lost"], c["new"], c["how"]) for c in s["coordinator_changes"]] == [(0, 1, "ulfm"), (1, 2, "ulfm")]
    assert [(f["rank"], f["how"]) for f in s["failures"]] == [(1, "ulfm")], "rank 1 trained rows: lost like a worker"
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]
    assert s["coverage"] == 1.0 and s["iterations"] == 200


def test_the_deputy_lost_then_rank_0_the_next_deputy_takes_over(tmp_path):
    """The deputy (rank 1) is killed at round 7; rank 0 names rank 2 at once (pings) and sends it the state
    after the handoff; rank 0 is killed at the start of round 8: rank 2 takes over, with rank 1's loss known."""
    job = run_job(3, SMOKE, tmp_path / "both", "--inject", "kill:1@7", "--inject", "kill:0@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 2
    assert [(c["lost"], c["new"]) for c in s["coordinator_changes"]] == [(0, 2)]
    assert [(f["rank"], f["how"] in KILLED_HERE) for f in s["failures"]] == [(1, True)]
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]
    assert s["coverage"] == 1.0 and s["alive_workers"] == 2


def test_a_worker_lost_then_rank_0_every_row_is_handed_once(tmp_path):
    """Worker 3 killed at round 7 (rank 0 hands its rows to 1 and 2 and replicates that state at once), rank 0
    killed at the start of round 8: the new coordinator knows the handoff; no row is handed twice."""
    job = run_job(3, SMOKE, tmp_path / "w3", "--inject", "kill:3@7", "--inject", "kill:0@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    # rank 1 keeps training its rows only if they are those the replica says it owns: the replica knew the handoff
    assert [(f["rank"], f["how"] in KILLED_HERE) for f in s["failures"]] == [(3, True)]
    (f3,) = s["failures"]
    assert f3["rows_handed"] == s["initial_shards"]["3"] and s["points_handed"] == f3["rows_handed"]
    assert s["exact"]["takeovers"][0]["why"] == "" or "lost in the rounds redone" in s["exact"]["takeovers"][0]["why"]
    assert s["coverage"] == 1.0 and s["coordinator"] == 1
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]


@pytest.mark.parametrize("fault", [None, "kill:0@8", "hang:0@8"])
def test_a_standby_coordinator_takes_over_without_handing_anything(tmp_path, fault):
    """executor.standby_coordinator: rank 1 trains nothing and holds the replicas; it takes over with no rows
    to hand over (no failure, coverage 1, the two workers keep their shards); without a fault it just stops."""
    inject = ("--inject", fault) if fault else ()
    job = run_job(3, SMOKE, tmp_path / "sb", *inject, *ARGS, "--set", "executor.standby_coordinator=true",
                  limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["workers"] == 2 and s["alive_workers"] == 2
    assert s["failures"] == [] and s["coverage"] == 1.0 and s["iterations"] == 200
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]
    if fault is None:
        assert s["coordinator"] == 0 and s["coordinator_changes"] == [] and s["deputy"]["rank"] == 1
        assert sorted(s["initial_shards"]) == ["2", "3"]
    else:
        (c,) = s["coordinator_changes"]
        assert (c["lost"], c["new"], c["rounds_redone"]) == (0, 1, 1) and s["coordinator"] == 1
        assert s["deputy"]["rank"] == 2, "the new coordinator names a worker its deputy"


def test_without_ulfm_a_hung_rank_0_is_taken_over_by_deadline(tmp_path):
    """No ULFM (the timeout detector alone): the deputy takes over after executor.timeout and ends the
    stopped rank 0 only at the very end (a rank that dies ends the whole job without ULFM)."""
    job = run_job(3, SMOKE, tmp_path / "noulfm", "--inject", "hang:0@8", *ARGS, ulfm=False, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["detector"] == "timeout" and s["coordinator"] == 1
    (c,) = s["coordinator_changes"]
    assert (c["how"], c["kind"], c["killed"]) == ("timeout", "hang", False)
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]


def test_a_second_crash_is_not_handed_over_again(tmp_path):
    """Rank 0 raises at round 5 (the deputy takes over at once), then the new coordinator raises too: a crash
    hands over once per run (the same bug would go round every worker), so the run ends as a crash."""
    job = run_job(3, SMOKE, tmp_path / "crash2", "--inject", "raise:0@5", "--inject", "raise:1@10", *ARGS,
                  limit=120)
    assert job.rc == 1, job.err[-3000:]
    s = job.summary
    assert s["status"] == "failed" and s["exit_code"] == 1 and "raise:1@10" in s["error"]
    assert "the deputy (rank 1) takes over" in job.err and "the deputy (rank 2) takes over" not in job.err


def test_a_stopped_rank_0_that_wakes_up_after_the_takeover_writes_nothing(tmp_path):
    """No ULFM (so the stopped rank 0 is not killed at the takeover): rank 0 is stopped for 3 s at round 8, the
    deputy takes over after executor.timeout (1 s); when rank 0 wakes it finds it was replaced (TAG_DEPOSED)
    and writes no metrics row, checkpoint, summary or verdict (a split brain would write round 8's row
    twice and end with "every worker lost"); it waits to be told the run is over."""
    # the run must outlast the pause: 5000 rounds of ~1.8 ms here (1200 ended before rank 0 woke once the polls'
    # backoff cap went from 1 ms to 0.25 ms)
    job = run_job(3, SMOKE, tmp_path / "wake", "--inject", "pause:0@8:3", "--set", "executor.timeout=1",
                  "--set", "model.n_iterations=25000", "--set", "executor.comm_period=5", "--set",
                  "executor.checkpoint_every=0", ulfm=False, limit=150)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1 and s["iterations"] == 25000
    assert "this coordinator (rank 0) hung and was replaced by rank 1" in job.err, job.err[-3000:]
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(5000)], "every row once"
    assert "every worker is lost" not in job.err


def test_rank_0_and_a_worker_lost_in_the_same_round(tmp_path):
    """Rank 0 and worker 3 both SIGKILLed at round 8: the deputy takes over, and the worker's loss is handled
    by the new coordinator (ULFM reports it to the deputy's receives too); every row still has an owner."""
    job = run_job(3, SMOKE, tmp_path / "same", "--inject", "kill:3@8", "--inject", "kill:0@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1
    assert sorted((f["rank"], f["how"] in KILLED_HERE) for f in s["failures"]) == [(3, True)]
    assert s["coverage"] == 1.0 and s["alive_workers"] == 2
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]


def _rank_pids(run_dir) -> dict[int, int]:
    """The pids of a running job's ranks (by OMPI_COMM_WORLD_RANK in their environment), found through /proc."""
    pids: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            if b"train" not in cmd or str(run_dir).encode() not in cmd:
                continue
            env = dict(kv.split(b"=", 1) for kv in (p / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"OMPI_COMM_WORLD_RANK" in env:
            pids[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(p.name)
    assert os.getpid() not in pids.values()
    return pids


def test_rank_0_and_its_deputy_killed_at_once_a_relaunch_resumes(tmp_path):
    """Rank 0 and the deputy (rank 1) SIGKILLed at the same instant, from outside: nobody else holds a replica,
    so the run ends without a verdict (the other workers do not wait for a deputy that is gone) and
    ``--max-restarts`` relaunches it from the newest checkpoint, in the run dir the first launch used."""
    run_dir = tmp_path / "r"
    args = ("-n", "3", str(SMOKE), "--quiet", "--run-dir", str(run_dir), "--max-restarts", "1",
            "--set", "model.n_iterations=600", *ARGS)
    with launched(*args, limit=150) as p:
        deadline = time.monotonic() + 90
        while metrics_rows(run_dir) < 12 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = _rank_pids(run_dir)
        assert p.poll() is None and {0, 1} <= set(pids), f"not running as expected: {pids}"
        killed_at = metrics_rows(run_dir)
        os.kill(pids[0], signal.SIGKILL)
        os.kill(pids[1], signal.SIGKILL)
        err = p.communicate(timeout=140)[1]
    assert p.returncode == 0, err[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and len(s["relaunches"]) == 1, s.get("relaunches")
    assert s["resumed_from"] is not None and s["resumed_from"]["round"] <= killed_at
    assert [r["round"] for r in csv.DictReader(open(run_dir / "metrics.csv"))] == [str(r) for r in range(60)]
    assert s["iterations"] == 600 and s["coverage"] == 1.0
