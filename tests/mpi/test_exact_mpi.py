"""Recoveries that change nothing (issue 23): a resume with the same workers and a takeover by a standby
coordinator continue bit for bit as the run that had neither; ``ftmpi verify`` says so."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ftmpi.storage.checkpoint import ckpt_path, list_checkpoints, load
from tests.mpirun import ROOT, ended, launched, metrics_rows, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
# Adam keeps a state on every worker (what a resume used to start over); checkpoints every 5 rounds
ADAM = ("--set", "optimizer.name=adam", "--set", "optimizer.learning_rate=0.01", "--set", "executor.timeout=2",
        "--set", "executor.checkpoint_every=5", "--set", "executor.keep=100")
QUANT = ("--set", "executor.quantize=8")
MLP = ("--set", "model.type=mlp", "--set", "model.hidden=[16]")


def _rows(job, start=0):
    return [(r["round"], r["train_loss"], r["test_acc"]) for r in job.metrics() if int(r["round"]) >= start]


def _final(run_dir):
    return load(list_checkpoints(run_dir)[-1])


def _verify(a, b):
    return subprocess.run([sys.executable, "-m", "ftmpi", "verify", str(a), str(b)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _resume_copy(src, dst, at, *args):
    """Copy run dir ``src`` to ``dst`` as it was at the checkpoint of round ``at`` and resume it there."""
    shutil.copytree(src, dst)
    for p in list_checkpoints(dst):
        if int(p.stem.split("-")[1]) > at:
            p.unlink()
    return run_job(3, SMOKE, dst, "--resume", str(dst), *args)


@pytest.mark.parametrize("extra", [(), QUANT, MLP, (*MLP, *QUANT)], ids=["adam", "adam-q8", "mlp", "mlp-q8"])
def test_resume_with_the_same_workers_continues_bit_for_bit(tmp_path, extra):
    ref = run_job(3, SMOKE, tmp_path / "ref", *ADAM, *extra)
    assert ref.rc == 0, ref.err
    ck = load(ckpt_path(tmp_path / "ref", 10))
    assert sorted(ck.workers) == [1, 2, 3] and all(w["round"] == 10 for w in ck.workers.values())
    job = _resume_copy(tmp_path / "ref", tmp_path / "res", 10, *ADAM, *extra)
    assert job.rc == 0, job.err
    assert job.summary["exact"]["resume"] == {"round": 10, "exact": True, "why": ""}
    assert _rows(job, 10) == _rows(ref, 10) and len(_rows(job)) == 20
    assert np.array_equal(_final(tmp_path / "res").params, _final(tmp_path / "ref").params)
    v = _verify(tmp_path / "ref", tmp_path / "res")
    assert v.returncode == 0 and v.stdout.strip().endswith("identical"), v.stdout + v.stderr


def test_resume_with_other_workers_is_said_not_exact(tmp_path):
    ref = run_job(3, SMOKE, tmp_path / "ref", *ADAM)
    assert ref.rc == 0, ref.err
    shutil.copytree(tmp_path / "ref", tmp_path / "two")
    for p in list_checkpoints(tmp_path / "two"):
        if int(p.stem.split("-")[1]) > 10:
            p.unlink()
    job = run_job(2, SMOKE, tmp_path / "two", "--resume", str(tmp_path / "two"), *ADAM)
    assert job.rc == 0, job.err
    ex = job.summary["exact"]["resume"]
    assert ex["exact"] is False and "workers [1, 2] resume a checkpoint of workers [1, 2, 3]" in ex["why"], ex
    v = _verify(tmp_path / "ref", tmp_path / "two")
    assert v.returncode == 1 and "first differ at round 10" in v.stdout, v.stdout + v.stderr


def test_a_stop_signal_checkpoints_the_workers_state_and_the_resume_is_exact(tmp_path):
    ref = run_job(3, SMOKE, tmp_path / "ref", *ADAM, "--set", "model.n_iterations=600")
    assert ref.rc == 0, ref.err
    run_dir = tmp_path / "r"
    args = ("-n", "3", str(SMOKE), "--quiet", "--run-dir", str(run_dir), *ADAM, "--set", "model.n_iterations=600")
    with launched(*args, limit=120) as p:
        deadline = time.monotonic() + 90
        while metrics_rows(run_dir) < 8 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, f"the run ended before it could be signalled:\n{p.communicate()[1][-3000:]}"
        err = ended(p, signal.SIGTERM)
    assert p.returncode == 6, err
    stopped = json.loads((run_dir / "summary.json").read_text())["rounds"]
    assert 8 <= stopped < 60
    assert sorted(load(ckpt_path(run_dir, stopped)).workers) == [1, 2, 3]
    job = run_job(3, SMOKE, run_dir, "--resume", "auto", *ADAM, "--set", "model.n_iterations=600")
    assert job.rc == 0, job.err
    assert job.summary["exact"]["resume"]["exact"] is True, job.summary["exact"]
    assert _rows(job) == _rows(ref)
    assert np.array_equal(_final(run_dir).params, _final(tmp_path / "ref").params)


def test_a_resume_after_a_spare_took_a_shard_gives_the_place_back_and_is_exact(tmp_path):
    """A spare took worker 2's shard at round 7; the job is resumed from round 10's checkpoint with every rank
    again: rank 2 takes its shard back with the spare's state and seeds (its own), the spare waits again, and
    the run continues bit for bit as the fault-free one (which the kill run itself matches)."""
    spare = ("--set", "executor.spares=1")
    ref = run_job(3, SMOKE, tmp_path / "ref", *ADAM, *spare)
    assert ref.rc == 0, ref.err
    kill = run_job(3, SMOKE, tmp_path / "kill", *ADAM, *spare, "--inject", "kill:2@7")
    assert kill.rc == 0, kill.err
    assert [u["spare"] for u in kill.summary["spares"]["used"]] == [4] and _rows(kill) == _rows(ref)
    assert load(ckpt_path(tmp_path / "kill", 10)).rng.get("ident") == {"4": 2}
    job = _resume_copy(tmp_path / "kill", tmp_path / "res", 10, *ADAM, *spare)
    assert job.rc == 0, job.err
    assert job.summary["spares"]["given_back"] == [{"spare": 4, "to": 2, "round": 10}], job.summary["spares"]
    assert job.summary["exact"]["resume"] == {"round": 10, "exact": True, "why": ""}, job.summary["exact"]
    assert job.summary["spares"]["idle"] == [4] and job.summary["failures"][-1]["rank"] == 2
    assert _rows(job, 10) == _rows(ref, 10)
    assert np.array_equal(_final(tmp_path / "res").params, _final(tmp_path / "ref").params)
    v = _verify(tmp_path / "ref", tmp_path / "res")
    assert v.returncode == 0 and v.stdout.strip().endswith("identical"), v.stdout + v.stderr


STANDBY = ("--set", "executor.standby_coordinator=true")


@pytest.mark.parametrize("fault,extra", [("kill:0@8", ()), ("kill:0@8", QUANT), ("hang:0@8", ())],
                         ids=["kill", "kill-q8", "hang"])
def test_a_standby_coordinators_takeover_changes_nothing(tmp_path, fault, extra):
    ref = run_job(4, SMOKE, tmp_path / "ref", *ADAM, *STANDBY, *extra)
    assert ref.rc == 0, ref.err
    job = run_job(4, SMOKE, tmp_path / "f", *ADAM, *STANDBY, *extra, "--inject", fault)
    assert job.rc == 0, job.err
    s = job.summary
    assert len(s["coordinator_changes"]) == 1 and s["coordinator_changes"][0]["new"] == 1
    assert s["exact"]["takeovers"][0]["exact"] is True, s["exact"]
    assert _rows(job) == _rows(ref)
    assert np.array_equal(_final(tmp_path / "f").params, _final(tmp_path / "ref").params)
    v = _verify(tmp_path / "ref", tmp_path / "f")
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.parametrize("fault,extra", [("kill:0@8", ()), ("kill:0@8", QUANT), ("hang:0@8", ()),
                                         ("kill:0@8", (*MLP, *QUANT)), ("hang:0@8", MLP)],
                         ids=["kill", "kill-q8", "hang", "kill-mlp-q8", "hang-mlp"])
def test_a_training_deputys_takeover_changes_nothing(tmp_path, fault, extra):
    """The default deputy trains; once it takes over it goes on training its rows in the coordinator's process
    (executor.deputy_keeps_rows), and redoes the round in flight from the state it started it with."""
    ref = run_job(3, SMOKE, tmp_path / "ref", *ADAM, *extra)
    assert ref.rc == 0, ref.err
    job = run_job(3, SMOKE, tmp_path / "f", *ADAM, *extra, "--inject", fault)
    assert job.rc == 0, job.err
    s = job.summary
    assert [(c["lost"], c["new"]) for c in s["coordinator_changes"]] == [(0, 1)] and s["coordinator"] == 1
    assert s["exact"]["takeovers"][0]["exact"] is True, s["exact"]
    assert s["failures"] == [] and s["alive_workers"] == 3, "the deputy's rows stay where they were"
    assert _rows(job) == _rows(ref)
    assert np.array_equal(_final(tmp_path / "f").params, _final(tmp_path / "ref").params)
    v = _verify(tmp_path / "ref", tmp_path / "f")
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_deputy_that_hands_its_rows_over_is_said_not_exact(tmp_path):
    job = run_job(3, SMOKE, tmp_path / "f", *ADAM, "--inject", "kill:0@8", "--set", "executor.deputy_keeps_rows=false")
    assert job.rc == 0, job.err
    t = job.summary["exact"]["takeovers"]
    assert len(t) == 1 and t[0]["exact"] is False and "was a training worker" in t[0]["why"], t
    assert [(f["rank"], f["how"]) for f in job.summary["failures"]] == [(1, "promoted")]


def test_a_coordinator_that_trains_its_rows_is_lost_like_a_worker(tmp_path):
    """Rank 1 took over and trains its rows; when it is killed too, rank 2 takes over and rank 1's rows are
    handed over as a lost worker's (remap full: nothing lost)."""
    job = run_job(3, SMOKE, tmp_path / "f", *ADAM, "--set", "executor.remap=full", "--inject", "kill:0@8",
                  "--inject", "kill:1@14")
    assert job.rc == 0, job.err
    s = job.summary
    assert [(c["lost"], c["new"]) for c in s["coordinator_changes"]] == [(0, 1), (1, 2)] and s["coordinator"] == 2
    (f,) = s["failures"]
    assert f["rank"] == 1 and f["how"] == "ulfm" and f["rows_handed"] > 0 and f["rows_dropped"] == 0
    assert s["coverage"] == 1.0 and s["alive_workers"] == 2 and s["rounds"] == 20
    assert [t["exact"] for t in s["exact"]["takeovers"]] == [True, False]
