"""The launch scripts' command lines, without launching (SLURM is not on this machine)."""
from __future__ import annotations

import os
import subprocess

from .mpirun import ROOT

SBATCH = ROOT / "jobs" / "slurm.sbatch"


def _dry(env: dict, *args: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, FTMPI_DRY_RUN="1", SLURM_SUBMIT_DIR=str(ROOT), **env)
    return subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, timeout=30, env=e)


def test_sbatch_uses_mpirun_with_ulfm_through_local_sh():
    p = _dry({"SLURM_NTASKS": "9"}, "configs/fashion_mnist.yaml", "--inject", "kill:2@10")
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.strip()
    assert "jobs/local.sh 8 configs/fashion_mnist.yaml --max-restarts 2 --inject kill:2@10" in cmd
    assert "FTMPI_MPIRUN_ARGS=--map-by\\ slot" in cmd


def test_sbatch_srun_mode_is_explicit_about_its_limits():
    p = _dry({"SLURM_NTASKS": "5", "FTMPI_LAUNCHER": "srun", "FTMPI_MAX_RESTARTS": "0"},
             "configs/smoke.yaml")
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.strip()
    assert cmd.startswith("srun --kill-on-bad-exit=0 --ntasks=5")
    assert "-m ftmpi train configs/smoke.yaml --detector timeout" in cmd


def test_sbatch_rejects_too_few_tasks_and_bad_launcher():
    assert _dry({"SLURM_NTASKS": "1"}, "configs/smoke.yaml").returncode == 2
    assert _dry({"SLURM_NTASKS": "3", "FTMPI_LAUNCHER": "pbs"}, "configs/smoke.yaml").returncode == 2


def test_local_sh_rejects_bad_arguments():
    for args in (["x", "configs/smoke.yaml"], ["2", "nope.yaml"], ["2", "configs/smoke.yaml", "--max-restarts", "z"]):
        p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), *args], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 2 and "local.sh" in p.stderr


def _fake_mpirun(tmp_path, body: str) -> dict:
    """An ``mpirun`` stand-in for local.sh: a shell script that plays rank 0's verdict and mpirun's exit."""
    fake = tmp_path / "mpirun"
    fake.write_text("#!/usr/bin/env bash\n" + body + "\n")
    fake.chmod(0o755)
    return dict(os.environ, MPIRUN=str(fake))


def test_local_sh_a_rank_killed_by_signal_is_not_a_timeout(tmp_path):
    # measured: rank 0 SIGKILLs a hung worker it declared dead, and mpirun then sometimes exits 137 by itself
    # (128 + SIGKILL) right after rank 0 wrote its verdict; local.sh once took that for its own limit
    env = _fake_mpirun(tmp_path, 'echo 0 > "$FTMPI_STATUS_FILE"; exit 137')
    p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), "2", "configs/smoke.yaml"], capture_output=True,
                       text=True, timeout=30, env=dict(env, FTMPI_JOB_TIMEOUT="20"), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "overran" not in p.stderr and "mpirun exited 137; ftmpi's outcome: exit 0" in p.stderr


def test_local_sh_reports_a_real_overrun(tmp_path):
    env = _fake_mpirun(tmp_path, "sleep 30")
    p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), "2", "configs/smoke.yaml"], capture_output=True,
                       text=True, timeout=30, env=dict(env, FTMPI_JOB_TIMEOUT="1"), cwd=ROOT)
    assert p.returncode == 124 and "overran FTMPI_JOB_TIMEOUT=1s" in p.stderr
