"""Checkpoints written by real runs: resume after losing rank 0 or the whole job, inspect (issue 4)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from ftmpi.storage.checkpoint import list_checkpoints, load
from tests.mpirun import LOCAL, ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
CK = ("--set", "executor.checkpoint_every=5", "--set", "executor.timeout=2")


def _rounds(job):
    return [int(r["round"]) for r in job.metrics()]


def test_rank0_killed_then_resumed_with_fewer_workers_by_max_restarts(tmp_path):
    # the reference loses worker 3, whose 50 representative rows carry its shard's weight (rep_weight: shard)
    ref = run_job(4, SMOKE, tmp_path / "ref", *CK, "--inject", "kill:3@5", "--set", "optimizer.rep_weight=shard")
    job = run_job(2, SMOKE, tmp_path / "r", *CK, "--inject", "kill:0@12", "--max-restarts", "1",
                  "--set", "executor.deputy=false", limit=120)  # no deputy: the relaunch path
    assert "restart 1 of 1" in job.err and job.rc == 0, job.err
    s = job.summary
    # the round-10 checkpoint is written in the background while rounds go on (~10 ms with its fsyncs): a kill
    # 2 rounds later may come before it is complete, and then the run resumes from round 5's, as it should
    assert s["status"] == "completed" and s["resumed_from"] in ({"round": 10, "epoch": 0}, {"round": 5, "epoch": 0})
    assert s["coverage"] == 1.0 and s["iterations"] == 200
    assert _rounds(job) == list(range(20))  # rounds after the checkpoint, run by the lost launch, rewritten once
    assert abs(s["final_test_acc"] - ref.summary["final_test_acc"]) < 0.03
    # 4 -> 2 workers: resume the 4-worker reference's round-15 checkpoint with 2 workers
    ck = tmp_path / "ref" / "ckpt"
    for p in list_checkpoints(tmp_path / "ref"):
        if not p.name.endswith("15.h5"):
            p.unlink()
    assert [p.name for p in list_checkpoints(tmp_path / "ref")] == ["round-000015.h5"]
    two = run_job(2, SMOKE, tmp_path / "unused", "--resume", str(tmp_path / "ref"), *CK)
    assert two.rc == 0, two.err
    s2 = (tmp_path / "ref" / "summary.json").read_text()
    assert '"workers": 2' in s2
    final = load(ck / "round-000020.h5")
    assert final.members == [1, 2]
    # the weighted rows were spread with the rest, their weights with them: in the shards and the checkpoint
    from ftmpi.storage.shards import read_shard

    shards = [read_shard(tmp_path / "ref" / "shards" / f"worker-{r:04d}.h5") for r in (1, 2)]
    assert sum(sh.w.sum() for sh in shards if sh.w is not None) + sum(len(sh) for sh in shards if sh.w is None) \
        == pytest.approx(final.weight[final.owner >= 0].sum())
    assert final.weight[final.owner >= 0].sum() == pytest.approx(3200)
    assert np.count_nonzero(final.weight != 1.0) == 50


def test_whole_job_sigkilled_then_resumed_with_more_workers(tmp_path):
    run_dir = tmp_path / "k"
    env = dict(os.environ, PYTHON=sys.executable, FTMPI_JOB_TIMEOUT="120")
    p = subprocess.Popen(["bash", str(LOCAL), "2", str(SMOKE), "--run-dir", str(run_dir), "--quiet", *CK,
                          "--set", "model.n_iterations=4000", "--set", "executor.checkpoint_every=50"],
                         cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    try:
        while not (run_dir / "ckpt" / "round-000100.h5").exists():
            assert time.monotonic() < deadline and p.poll() is None, "no checkpoint at round 100"
            time.sleep(0.05)
    finally:
        # every process of the session at once: bash, timeout (in a process group of its own), mpirun, ranks
        subprocess.run(["pkill", "-KILL", "-s", str(p.pid)], check=False)
        p.wait(timeout=30)
    for _ in range(100):  # SIGKILL is delivered asynchronously; orphans are reaped by init
        left = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"processes of the killed job survived: {left}"
    time.sleep(0.5)
    snap = load(list_checkpoints(run_dir)[-1])
    assert snap.round >= 100
    job = run_job(4, SMOKE, tmp_path / "unused", "--resume", str(run_dir), *CK,
                  "--set", "model.n_iterations=4000", "--set", "executor.checkpoint_every=50", limit=120)
    assert job.rc == 0, job.err
    s = (run_dir / "summary.json").read_text()
    assert '"status": "completed"' in s and '"coverage": 1.0' in s
    final = load(list_checkpoints(run_dir)[-1])
    assert final.iters_done == 4000 and final.members == [1, 2, 3, 4]
    counts = final.owner[final.owner >= 0]
    sizes = [int((counts == r).sum()) for r in (1, 2, 3, 4)]
    assert max(sizes) - min(sizes) <= 1  # newcomers: every row spread evenly again


def test_resume_skips_a_corrupt_newest_checkpoint_and_inspect_reads_them(tmp_path):
    job = run_job(2, SMOKE, tmp_path / "c", *CK)
    assert job.rc == 0, job.err
    cks = list_checkpoints(tmp_path / "c")
    assert [p.name for p in cks] == ["round-000010.h5", "round-000015.h5", "round-000020.h5"]  # keep: 3
    for p in cks:
        out = subprocess.run([sys.executable, "-m", "ftmpi", "inspect", str(p), "--json"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and '"round"' in out.stdout
    with h5py.File(cks[-1], "r") as f:  # flip bytes inside the parameters of the newest checkpoint
        off = f["model/layer0/W"].id.get_offset()
    with open(cks[-1], "r+b") as fh:
        fh.seek(off + 8)
        fh.write(b"\xff\xfe\xfd\xfc")
    bad = subprocess.run([sys.executable, "-m", "ftmpi", "inspect", str(cks[-1])], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and cks[-1].name in bad.stderr
    res = run_job(2, SMOKE, tmp_path / "unused", "--resume", str(tmp_path / "c"), *CK)
    assert res.rc == 0, res.err
    assert "skipping" in res.err and "round-000020.h5" in res.err
    assert '"resumed_from": {\n    "round": 15' in (tmp_path / "c" / "summary.json").read_text()


def test_resume_from_nothing_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text('{"status": "completed"}')
    job = run_job(2, SMOKE, tmp_path / "unused", "--resume", str(tmp_path / "empty"), limit=60)
    assert job.rc == 2, job.err
    lines = [ln for ln in job.err.splitlines() if ln.startswith("ftmpi:")]
    assert len(lines) == 1 and "ckpt" in lines[0] and "Traceback" not in job.err
    assert (tmp_path / "empty" / "summary.json").read_text() == '{"status": "completed"}'  # left alone
