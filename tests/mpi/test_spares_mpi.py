"""Hot spares in real mpirun jobs (issue 24): ``jobs/local.sh 3 ... --set executor.spares=1`` runs 1 + 3 + 1
ranks; a SIGKILLed worker's whole shard goes to the spare (its shard file holds exactly the lost worker's
rows), the survivors are handed nothing and coverage stays 1.0; a spare lost before it is needed leaves the
handoff as it was; when the coordinator is killed, the deputy takes over and trains on (the spare waits on),
or, with deputy_keeps_rows false, the spare takes the deputy's rows. Each job runs under a hard time limit."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ftmpi.storage.checkpoint import newest_valid
from ftmpi.storage.shards import list_handoffs, read_shard, shard_path
from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
ARGS = ("--set", "executor.timeout=2", "--set", "executor.spares=1")


def test_a_spare_takes_a_killed_workers_whole_shard(tmp_path):
    run = tmp_path / "s"
    job = run_job(3, SMOKE, run, "--inject", "kill:2@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coverage"] == 1.0 and s["ranks"] == 5
    (f,) = s["failures"]
    assert (f["rank"], f["spare"], f["rows_handed"], f["recovered_round"]) == (2, 4, 0, 8)
    assert s["spares"]["used"] == [{"spare": 4, "took": 2, "round": 8, "epoch": 1, "rows": f["rows_to_spare"]}]
    assert not list_handoffs(run), "nothing handed to the survivors"
    took, lost = read_shard(shard_path(run, 4)), read_shard(shard_path(run, 2))
    assert np.array_equal(np.sort(took.ids), np.sort(lost.ids)) and len(took.ids) == f["rows_to_spare"]
    rows = job.metrics()
    assert [int(r["alive_workers"]) for r in rows][9:] == [3] * (len(rows) - 9)
    # the spare trained round 8 in worker 2's place (sent to it as soon as the loss was known), starting from
    # worker 2's state as of its reply to round 7 (workers send it every round when there are spares), not
    # from its checkpoint's (round 5: it would end 3 rounds, 30 steps, behind) nor from zeros
    _, snap, _ = newest_valid(run)
    assert snap.round == 20 and snap.workers[1]["step"] == 200, snap.workers[1]["step"]
    assert snap.workers[4]["step"] == 200, snap.workers[4]["step"]


def _verify(a, b):
    return subprocess.run([sys.executable, "-m", "ftmpi", "verify", str(a), str(b)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("extra", [(), ("--set", "executor.quantize=8")], ids=["adam", "adam-q8"])
def test_a_kill_with_a_spare_changes_nothing_in_the_run(tmp_path, extra):
    """The spare trains as the lost worker would have: its state of the round in flight, its minibatches and
    rounding (seeded by the lost worker's rank), its update summed in its place and screened against its
    record. The run with the kill is the fault-free run, bit for bit (``ftmpi verify``)."""
    adam = ("--set", "optimizer.name=adam", "--set", "optimizer.learning_rate=0.01", *extra)
    ref = run_job(3, SMOKE, tmp_path / "ref", *ARGS, *adam, limit=120)
    job = run_job(3, SMOKE, tmp_path / "kill", "--inject", "kill:2@8", *ARGS, *adam, limit=120)
    assert ref.rc == 0 and job.rc == 0, job.err[-3000:]
    assert [(d["spare"], d["took"], d["round"]) for d in job.summary["spares"]["used"]] == [(4, 2, 8)]
    v = _verify(tmp_path / "ref", tmp_path / "kill")
    assert v.returncode == 0 and "20 rounds identical" in v.stdout and "final params" in v.stdout, v.stdout


def test_a_spare_lost_before_it_is_needed_leaves_the_handoff_as_it_was(tmp_path):
    job = run_job(3, SMOKE, tmp_path / "l", "--inject", "kill:4@start", "--inject", "kill:2@8", *ARGS,
                  "--set", "executor.remap=full", limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coverage"] == 1.0 and not s["spares"]["used"]
    assert [d["spare"] for d in s["spares"]["lost"]] == [4]
    (f,) = s["failures"]
    assert f["rank"] == 2 and f["spare"] is None and f["rows_handed"] > 0


def test_the_coordinator_killed_the_deputy_takes_over_training_its_rows_and_the_spare_waits_on(tmp_path):
    """executor.deputy_keeps_rows (the default): the deputy coordinates and trains its own rows; no worker is
    lost, so the spare stays idle until the end and leaves when told to."""
    job = run_job(3, SMOKE, tmp_path / "k", "--inject", "kill:0@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1 and s["coverage"] == 1.0
    assert s["failures"] == [] and s["alive_workers"] == 3
    assert s["spares"]["used"] == [] and s["spares"]["idle"] == [4] and s["spares"]["lost"] == []


def test_the_coordinator_killed_a_deputy_that_gives_its_rows_up_hands_them_to_the_spare(tmp_path):
    """deputy_keeps_rows false: the new coordinator's own rows go, whole, to the spare."""
    run = tmp_path / "c"
    job = run_job(3, SMOKE, run, "--inject", "kill:0@8", *ARGS, "--set", "executor.deputy_keeps_rows=false",
                  limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1 and s["coverage"] == 1.0
    assert [(d["spare"], d["took"]) for d in s["spares"]["used"]] == [(4, 1)]
    assert np.array_equal(np.sort(read_shard(shard_path(run, 4)).ids), np.sort(read_shard(shard_path(run, 1)).ids))
    assert not list_handoffs(run), "nothing handed to the survivors"


def test_a_worker_lost_by_silence_mid_round_is_replaced_by_a_spare_that_is_not_taken_for_silent_too(tmp_path):
    """hang:2@8: worker 2 is declared lost by silence, a silence limit into round 8; the spare is sent round 8
    then, and its own silence counts from then, not from the round's start (else it was declared lost at once
    and its rows handed to the survivors)."""
    run = tmp_path / "h"
    job = run_job(3, SMOKE, run, "--inject", "hang:2@8", *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coverage"] == 1.0
    assert [(f["rank"], f["how"], f["spare"], f["rows_handed"]) for f in s["failures"]] == [(2, "timeout", 4, 0)]
    assert [(d["spare"], d["took"]) for d in s["spares"]["used"]] == [(4, 2)] and s["spares"]["lost"] == []
    assert s["failures"][0]["recovered_round"] == 8, "the spare trained round 8 in worker 2's place"
