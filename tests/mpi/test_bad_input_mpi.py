"""Bad input to real launches is one line and exit 2, and changes nothing: a run name that leads out of the run
folder (with --overwrite), partition keys the training set cannot satisfy, a bad FTMPI_* variable given to
ranks started by hand. Each job runs under a hard time limit (tests/mpirun.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.mpirun import ROOT, needs_mpi, run_job, run_launch

pytestmark = needs_mpi
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_a_run_name_leading_out_of_the_run_folder_is_refused_and_overwrite_deletes_nothing(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    victim = tmp_path / "victim" / "ckpt"  # where runs/{name} leads from base with name ../../victim
    victim.mkdir(parents=True)
    (victim / "round-000005.h5").write_bytes(b"someone else's checkpoint")
    p = run_launch("-n", "2", str(SMOKE), "--quiet", "--overwrite", "--set", "name=../../victim",
                   "--set", "model.n_iterations=50", cwd=base, limit=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "--set: name: expected a plain name for the run dir" in p.stderr, p.stderr
    assert (victim / "round-000005.h5").read_bytes() == b"someone else's checkpoint"
    assert list(base.iterdir()) == []


def test_partition_keys_the_training_set_cannot_satisfy_are_one_line_exit_2(tmp_path):
    """Rank 0 deals the rows after the workers joined: an impossible split ends every rank with one line
    naming the key (no traceback) and exit 2, recorded in summary.json."""
    job = run_job(2, SMOKE, tmp_path / "r", "--set", "data.partition=label-skew", "--set",
                  "data.classes_per_worker=5", limit=60)
    assert job.rc == 2, job.err[-3000:]
    assert "Traceback" not in job.err and job.err.count("error") == 1, job.err
    assert "error: data.classes_per_worker: 5, but the training set holds only 4 classes" in job.err
    s = job.summary
    assert s["status"] == "failed" and s["exit_code"] == 2 and s["error"].startswith("data.classes_per_worker")
    assert not (tmp_path / "r" / "ftmpi.lock").exists()


def test_ranks_started_by_hand_refuse_a_bad_variable_in_one_line(tmp_path):
    """Without the launcher (mpirun ... python -m ftmpi train) each rank checks the FTMPI_* variables it reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTMPI_")}
    env["FTMPI_SHARED_DATA"] = "sometimes"
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    cmd = [os.environ.get("MPIRUN", "mpirun"), "--oversubscribe", *root, "-x", "FTMPI_SHARED_DATA", "-n", "3",
           sys.executable, "-m", "ftmpi", "train", str(SMOKE), "--run-dir", str(tmp_path / "r")]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpirun overran its hard limit: {exc.stderr}")
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.count("error") == 1, p.stderr
    assert "error: environment variable FTMPI_SHARED_DATA='sometimes': expected 0 or 1 or auto" in p.stderr
    assert not (tmp_path / "r").exists()
