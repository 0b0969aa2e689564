"""Fault injection with real signals on real mpirun jobs (issue 3).

Every job runs under a hard limit (tests/mpirun.py). The synthetic smoke config trains 4 workers for 20
rounds; ``executor.timeout`` is lowered so that deadline detection is quick.
"""
from __future__ import annotations

import pytest

from ftmpi.storage.checkpoint import list_checkpoints, load
from ftmpi.storage.shards import handoff_slices
from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ("--set", "executor.timeout=1.5")


def _failures(job):
    return {f["rank"]: f for f in job.summary["failures"]}


@pytest.mark.parametrize("watch,how", [(True, "exited"), (False, "ulfm")])
def test_kill_under_ulfm_is_reported_at_once_and_full_remap_keeps_everything(tmp_path, watch, how):
    """Seen ending by rank 0 on its host (``executor.watch_exits``), or else reported by ULFM; either way the
    ULFM communicator of the survivors is rebuilt (once ULFM knows of the loss too)."""
    # the survivors sleep 0.5 s at the start of the failure round: the loss is known long before they train
    job = run_job(4, SMOKE, tmp_path / "r", "--inject", "kill:2@5", "--detector", "ulfm",
                  *(a for r in (1, 3, 4) for a in ("--inject", f"slow:{r}@5:0.5")),
                  "--set", "executor.remap=full", "--set", "executor.alive_comm=true",
                  "--set", f"executor.watch_exits={str(watch).lower()}", *FAST)
    assert job.rc == 0, job.err
    s = job.summary
    f = _failures(job)[2]
    assert s["status"] == "completed" and s["alive_workers"] == 3
    assert f["how"] == how and f["kind"] == "kill" and f["round"] == 5
    assert f["detection_latency"] < 1.0 and f["recovery_time"] < 1.5
    assert s["coverage"] == 1.0 and f["rows_dropped"] == 0
    # ULFM: the survivors rebuilt their communicator (Shrink) and agreed on its members (Agree)
    assert s["alive_comm"]["agreed"] is True and s["alive_comm"]["members"] == [0, 1, 3, 4]
    assert s["points_handed"] == f["rows_handed"] == s["initial_shards"]["2"]
    assert s["final_test_acc"] > 0.75
    rows = job.metrics()
    assert [int(r["alive_workers"]) for r in rows][4:7] == [4, 3, 3]
    assert int(rows[-1]["epoch"]) == 1
    handoff = tmp_path / "r" / "shards" / "handoff-e0001.h5"
    assert sorted(p.name for p in handoff.parent.glob("handoff-*.h5")) == [handoff.name]
    slices = handoff_slices(handoff)  # the dead shard, dealt to the three survivors
    assert sorted(slices) == [1, 3, 4] and sum(b - a for a, b in slices.values()) == f["rows_handed"]
    assert f["epoch"] == 1 and f["handoff_time"] is not None
    # they took the rows between two steps of that same round, not at the next one
    assert f["recovered_round"] == 5


@pytest.mark.parametrize("kind", ["kill", "exit"])
def test_timeout_detector_catches_kill_and_exit(tmp_path, kind):
    job = run_job(4, SMOKE, tmp_path / kind, "--inject", f"{kind}:3@8", "--detector", "timeout",
                  "--set", "executor.watch_exits=false", *FAST)  # the deadline alone
    assert job.rc == 0, job.err  # ftmpi's verdict; mpirun itself may report the dead rank
    f = _failures(job)[3]
    assert f["how"] == "timeout" and f["kind"] == kind
    assert 1.0 < f["detection_latency"] < 1.5 + 1.0
    assert f["recovery_time"] < 1.5 + 1.0
    s = job.summary
    assert s["detector"] == "timeout" and s["alive_workers"] == 3
    # representative remap: the dead worker's 50 top rows are handed over, the rest dropped, exactly
    assert f["rows_handed"] == 50 and f["rows_handed"] + f["rows_dropped"] == s["initial_shards"]["3"]
    assert s["coverage"] == pytest.approx(1 - f["rows_dropped"] / 3200)
    # the survivors had read their slices of its standby file ahead (staged, then hinted, by round 8)
    assert f["rows_prefetched"] == 50


def test_exit_under_auto_falls_back_to_the_deadline(tmp_path):
    job = run_job(4, SMOKE, tmp_path / "x", "--inject", "exit:1@3", "--set", "executor.watch_exits=false", *FAST)
    assert job.rc == 0, job.err
    assert job.summary["detector"] == "ulfm"
    assert _failures(job)[1]["how"] == "timeout"


@pytest.mark.parametrize("kind", ["exit", "kill"])
def test_a_worker_that_ends_on_rank_0s_host_is_lost_at_once_not_at_its_deadline(tmp_path, kind):
    """``os._exit`` without MPI_Finalize is never reported by ULFM: without the watch only the deadline (the
    silence limit, over 10 s here) catches it. Rank 0 sees the process end on its host and goes on within a
    round; under the timeout detector too."""
    job = run_job(4, SMOKE, tmp_path / kind, "--inject", f"{kind}:3@6", "--detector", "timeout",
                  "--set", "executor.timeout=10", "--set", "executor.remap=full")
    assert job.rc == 0, job.err
    s, f = job.summary, _failures(job)[3]
    assert s["status"] == "completed" and s["alive_workers"] == 3 and s["coverage"] == 1.0
    assert f["how"] == "exited" and f["kind"] == kind and f["round"] == 6, f
    assert f["detection_latency"] < 5.0 and f["rows_dropped"] == 0, f  # not the 10 s deadline
    assert f["recovered_round"] in (6, 7)


def test_hung_worker_is_detected_and_the_job_still_ends(tmp_path):
    job = run_job(4, SMOKE, tmp_path / "h", "--inject", "hang:4@6", *FAST, limit=60)
    # the same run dir again, started over: the injected fault fires again (old fault records are not replayed)
    again = run_job(4, SMOKE, tmp_path / "h", "--inject", "hang:4@6", "--overwrite", *FAST, limit=60)
    assert again.rc == 0 and _failures(again)[4]["kind"] == "hang", again.err
    assert job.rc == 0, job.err
    f = _failures(job)[4]
    assert f["how"] == "timeout" and f["kind"] == "hang" and f["detection_latency"] < 1.5 + 1.0
    assert job.wall < 30


def test_slow_worker_within_deadline_is_not_declared_dead(tmp_path):
    job = run_job(4, SMOKE, tmp_path / "s", "--inject", "slow:2@3:0.8", *FAST)
    assert job.rc == 0, job.err
    assert job.summary["failures"] == [] and job.summary["alive_workers"] == 4
    times = [float(r["round_time"]) for r in job.metrics()]
    assert times[3] > 0.7  # the round waited for it


def test_two_in_one_round_then_a_third(tmp_path):
    job = run_job(4, SMOKE, tmp_path / "t", "--inject", "kill:1@4", "--inject", "kill:3@4",
                  "--inject", "exit:2@8", "--set", "executor.remap=full", *FAST)
    assert job.rc == 0, job.err
    s, f = job.summary, _failures(job)
    assert sorted(f) == [1, 2, 3] and f[1]["round"] == f[3]["round"] == 4 and f[2]["round"] == 8
    assert s["alive_workers"] == 1 and s["coverage"] == 1.0 and s["status"] == "completed"
    # worker 2 held rows handed to it in epoch 1; they are passed on with its own in epoch 2
    assert f[2]["rows_handed"] > s["initial_shards"]["2"]


def test_all_workers_dead_saves_and_exits_3(tmp_path):
    job = run_job(2, SMOKE, tmp_path / "a", "--inject", "kill:1@3", "--inject", "kill:2@5", *FAST)
    assert job.rc == 3, job.err
    s = job.summary
    assert s["status"] == "no-workers" and s["exit_code"] == 3 and s["alive_workers"] == 0
    assert len(job.metrics()) == s["rounds"] == 6
    assert "every worker" in job.err or "no workers" in job.err.lower()


def test_worker_dead_before_first_round_and_worker_exception(tmp_path):
    job = run_job(3, SMOKE, tmp_path / "e", "--inject", "kill:1@0", "--inject", "raise:2@2", *FAST,
                  "--set", "optimizer.rep_weight=shard")
    assert job.rc == 0, job.err
    f, s = _failures(job), job.summary
    assert f[1]["round"] == 0 and f[1]["rows_handed"] == 50  # scored by rank 0: it never reported
    assert f[2]["how"] == "error" and "injected fault raise:2@2" in f[2]["reason"]
    assert f[2]["detection_latency"] < 1.0  # reported by the worker itself, no deadline needed
    # rep_weight shard: 50 rows stand for worker 1's whole shard, then worker 2's 50 for all it held by then
    assert f[1]["row_weight"] == pytest.approx(s["initial_shards"]["1"] / 50)
    assert f[2]["row_weight"] > s["initial_shards"]["2"] / 50
    final = load(list_checkpoints(tmp_path / "e")[-1])
    owned = final.owner >= 0
    assert final.weight[owned].sum() == pytest.approx(3200), "the lost shards' weight is carried, not lost"
    assert final.weight[owned].max() == pytest.approx(f[2]["row_weight"])


def test_zombie_that_wakes_up_is_expelled_and_changes_nothing(tmp_path):
    # declared dead 1 s after it stopped, awake 0.6 s later; the run must still be going then: 600 rounds of
    # ~5 ms (measured) leave it ~3 s (with 400 rounds and a 2.5 s pause the margin was 0.6 s, and a fast
    # machine finished first now and then: rank 0 then reaps the sleeper and there is no zombie to expel)
    job = run_job(3, SMOKE, tmp_path / "z", "--inject", "pause:2@3:1.6", "--set", "executor.timeout=1",
                  "--set", "model.n_iterations=3000", "--set", "executor.comm_period=5", limit=90)
    assert job.rc == 0, job.err
    s = job.summary
    assert _failures(job)[2]["how"] == "timeout"
    assert s["stale_dropped"] >= 1 and s["alive_workers"] == 2, (s["failures"], s["wall_seconds"], job.err)
    assert "rank 2" in job.err and "declared dead" in job.err  # the zombie says why it leaves


@pytest.mark.parametrize("detector", ["ulfm", "timeout"])
def test_coordinator_loss_ends_every_rank_nonzero(tmp_path, detector):
    # without a deputy (executor.deputy: false; with one, see tests/mpi/test_failover_mpi.py)
    job = run_job(3, SMOKE, tmp_path / "c", "--inject", "kill:0@4", "--detector", detector, *FAST,
                  "--set", "executor.deputy=false", limit=60)
    assert job.rc != 0
    assert job.err.count("lost the coordinator") == 3, job.err
    s = job.summary  # rank 0 never finished: the launcher says so (never left "running")
    assert s["status"] == "failed" and s["written_by"] == "ftmpi launch" and "no verdict" in s["error"], s
    assert len(job.metrics()) >= 3  # what was written is intact


def test_without_ulfm_a_hang_is_still_survived_and_ulfm_request_is_refused(tmp_path):
    job = run_job(3, SMOKE, tmp_path / "n", "--inject", "hang:1@3", *FAST, ulfm=False, limit=60)
    assert job.rc == 0, job.err
    assert job.summary["detector"] == "timeout" and _failures(job)[1]["how"] == "timeout"
    bad = run_job(2, SMOKE, tmp_path / "u", "--detector", "ulfm", ulfm=False, limit=60)
    assert bad.rc == 2 and "--with-ft ulfm" in bad.err and "Traceback" not in bad.err


def test_tensorboard_events_of_a_run_with_a_failure(tmp_path):
    pytest.importorskip("tensorboardX")
    from tests.unit.test_tb import read_events

    job = run_job(2, SMOKE, tmp_path / "tb", "--tensorboard", "--inject", "kill:1@4", *FAST)
    assert job.rc == 0, job.err
    scalars, texts = read_events(tmp_path / "tb" / "tb")
    assert len(scalars["test/accuracy"]) == job.summary["rounds"]
    assert [v for _, v in scalars["cluster/alive_workers"]][3:6] == [2, 1, 1]
    assert any("worker 1 lost" in t for _, _, t in texts) and any("handed" in t for _, _, t in texts)


def test_two_lost_at_once_fall_back_to_reading_the_standby_files(tmp_path):
    """The survivors read ahead their share of a *single* loss; two workers lost in the same round are dealt
    over fewer survivors, so the slices differ from the plan and are read from the standby files instead.
    Either way every handed row arrives, with the weight of the shard it stands for."""
    # the timeout detector: both are declared dead at the same deadline (ULFM, or rank 0 watching them end on
    # its host, may see them a moment apart)
    job = run_job(4, SMOKE, tmp_path / "two", "--inject", "kill:1@8", "--inject", "kill:2@8", "--detector",
                  "timeout", "--set", "executor.watch_exits=false", *FAST, "--set", "optimizer.rep_weight=shard")
    assert job.rc == 0, job.err
    s, f = job.summary, _failures(job)
    assert sorted(f) == [1, 2] and s["alive_workers"] == 2 and s["rep_weight"] == "shard"
    for r in (1, 2):
        assert f[r]["rows_handed"] == 50 and f[r]["row_weight"] == pytest.approx(s["initial_shards"][str(r)] / 50)
        assert f[r]["epoch"] == 1 and f[r]["rows_prefetched"] == 0, "dealt over 2 survivors, not as planned"
    assert s["points_handed"] == 100
    final = load(list_checkpoints(tmp_path / "two")[-1])
    assert final.weight[final.owner >= 0].sum() == pytest.approx(3200)
    assert not list((tmp_path / "two" / "shards").glob("handoff-*.h5")), "staged rows: nothing written at the loss"


def test_worker_dies_while_its_handoff_is_in_progress(tmp_path):
    """Worker 2 is killed on the very round message that hands it worker 1's rows, before loading them."""
    job = run_job(4, SMOKE, tmp_path / "ho", "--inject", "kill:1@4", "--inject", "kill:2@5",
                  "--set", "executor.remap=full", *FAST)
    assert job.rc == 0, job.err
    s, f = job.summary, _failures(job)
    assert f[1]["round"] == 4 and f[2]["round"] == 5
    assert s["coverage"] == 1.0 and s["alive_workers"] == 2
    # worker 2's own rows plus its share of worker 1's, never loaded, were handed on again
    assert f[2]["rows_handed"] > s["initial_shards"]["2"]
    assert s["points_handed"] == f[1]["rows_handed"] + f[2]["rows_handed"]


def test_coreset_handoff_keeps_every_class_mass_through_two_losses(tmp_path):
    """``rep_selection: coreset``, ``rep_weight: shard`` (rank 0's per-class k-means++ at each loss): worker 2
    is lost, then worker 3, which holds some of 2's rows; in the final checkpoint every class still weighs
    exactly the rows it had."""
    import numpy as np

    from ftmpi.config import load_config
    from ftmpi.storage.data import load_dataset

    sets = ["optimizer.rep_selection=coreset", "optimizer.rep_weight=shard", "optimizer.n_most_rep=0.1",
            "data.partition=label-skew"]
    job = run_job(4, SMOKE, tmp_path / "c", "--inject", "kill:2@5", "--inject", "kill:3@10", *FAST,
                  *(a for s in sets for a in ("--set", s)))
    assert job.rc == 0, job.err
    f = _failures(job)
    assert sorted(f) == [2, 3] and f[3]["rows_handed"] > 0.1 * job.summary["initial_shards"]["3"]
    y = load_dataset(load_config(SMOKE, sets, env={}).data, 0).y_train
    final = load(list_checkpoints(tmp_path / "c")[-1])
    owned = final.owner >= 0
    assert final.weight is not None and set(np.unique(final.owner[owned])) == {1, 4}
    np.testing.assert_allclose(np.bincount(y[owned], weights=final.weight[owned], minlength=4),
                               np.bincount(y, minlength=4), rtol=1e-9)
