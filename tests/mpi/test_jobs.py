"""The launch scripts' command lines and verdicts, without MPI (real SLURM runs: tests/mpi/test_slurm.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ftmpi.launch.mpicmd import Launch, build
from tests.mpirun import ROOT

SBATCH = ROOT / "jobs" / "slurm.sbatch"


def _dry(env: dict, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    e = dict(os.environ, FTMPI_DRY_RUN="1", PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, timeout=30, env=e, cwd=cwd)


def test_sbatch_runs_the_installed_launcher_and_resumes_what_is_there(tmp_path):
    p = _dry({"SLURM_NTASKS": "9"}, "configs/fashion_mnist.yaml", "--inject", "kill:2@10", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.strip()
    assert f"{sys.executable} -m ftmpi launch -n 8 --mpi auto --max-restarts 2 configs/fashion_mnist.yaml " \
           "--resume auto --inject kill:2@10" in cmd
    # a requeued job (SLURM_RESTART_COUNT > 0) never starts over, even when submitted with --overwrite
    p = _dry({"SLURM_NTASKS": "3", "SLURM_RESTART_COUNT": "1"}, "configs/smoke.yaml", "--overwrite")
    assert p.stdout.strip().endswith("configs/smoke.yaml --resume auto"), p.stdout


def test_sbatch_srun_mode_is_explicit_about_its_limits():
    p = _dry({"SLURM_NTASKS": "5", "FTMPI_LAUNCHER": "srun", "FTMPI_MAX_RESTARTS": "0"},
             "configs/smoke.yaml")
    assert p.returncode == 0, p.stderr
    assert "-m ftmpi launch -n 4 --mpi srun --max-restarts 0 configs/smoke.yaml" in p.stdout
    spec = Launch("srun", "mpirun", "py", 5, ["c.yaml"], None, [], {})
    assert build(spec) == ["srun", "--kill-on-bad-exit=0", "--ntasks=5", "py", "-m", "ftmpi", "train", "c.yaml",
                           "--detector", "timeout"]


def test_sbatch_rejects_too_few_tasks_and_bad_launcher():
    assert _dry({"SLURM_NTASKS": "1"}, "configs/smoke.yaml").returncode == 2
    assert _dry({"SLURM_NTASKS": "3", "FTMPI_LAUNCHER": "pbs"}, "configs/smoke.yaml").returncode == 2


def test_local_sh_rejects_bad_arguments():
    for args in (["x", "configs/smoke.yaml"], ["2", "nope.yaml"], ["2", "configs/smoke.yaml", "--max-restarts", "z"]):
        p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), *args], capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, PYTHON=sys.executable), cwd=ROOT)
        assert p.returncode == 2 and "local.sh" in p.stderr


def _fake_mpirun(tmp_path, body: str) -> dict:
    """An ``mpirun`` stand-in for local.sh: a shell script that plays rank 0's verdict and mpirun's exit."""
    fake = tmp_path / "mpirun"
    fake.write_text("#!/usr/bin/env bash\n" + body + "\n")
    fake.chmod(0o755)
    return dict(os.environ, MPIRUN=str(fake), PYTHON=sys.executable)


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


def test_ranks_over_ob1_skip_ucx_memory_hooks_and_get_the_checked_config(tmp_path):
    """Open MPI over ob1 uses no UCX, yet loading its libmpi installs UCX's memory hooks (~40 ms of CPU a rank):
    the launcher sets UCX_MEM_EVENTS=no for the ranks (and forwards it with -x), unless the user set it or
    chose Open MPI's own transport (UCX may then carry the traffic). The ranks also get the config the launcher
    checked (FTMPI_RESOLVED_CONFIG)."""
    body = ('echo "$UCX_MEM_EVENTS|$*|${#FTMPI_RESOLVED_CONFIG}" > "' + str(tmp_path / "seen") + '"; '
            'echo 0 > "$FTMPI_STATUS_FILE"')
    env = _fake_mpirun(tmp_path, body)
    env.pop("UCX_MEM_EVENTS", None)

    def seen(extra: dict) -> list[str]:
        p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), "2", "configs/smoke.yaml"], capture_output=True,
                           text=True, timeout=30, env={**env, "FTMPI_JOB_TIMEOUT": "20", **extra}, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        return (tmp_path / "seen").read_text().strip().split("|")

    value, args, passed = seen({})
    assert value == "no" and "-x UCX_MEM_EVENTS" in args and "--mca pml ob1" in args and int(passed) > 100
    value, args, _ = seen({"UCX_MEM_EVENTS": "yes"})
    assert value == "yes" and "-x UCX_MEM_EVENTS" in args
    value, args, _ = seen({"FTMPI_MPI_TRANSPORT": "default"})
    assert value == "" and "UCX_MEM_EVENTS" not in args


def test_local_sh_launches_again_when_mpirun_hangs_before_rank_0_runs(tmp_path):
    """mpirun that never gets rank 0 through MPI_Init (rank 0 writes "running" to the status file right after
    it) is killed after FTMPI_START_TIMEOUT and launched again, twice at most, then the job ends with 124
    and says why; a launch whose rank 0 did start is never cut short by it."""
    count = tmp_path / "launches"
    version = '[ "$1" = --version ] && { echo "mpirun (Open MPI) 5.0.11"; exit 0; }; '
    env = _fake_mpirun(tmp_path, version + f'echo x >> "{count}"; sleep 30')
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), "2", "configs/smoke.yaml", "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(env, FTMPI_JOB_TIMEOUT="50", FTMPI_START_TIMEOUT="1"))
    assert p.returncode == 124, p.stderr
    assert len(count.read_text().split()) == 3 and time.monotonic() - t0 < 30
    assert "did not start within FTMPI_START_TIMEOUT=1s" in p.stderr and "launching again (2 of 2)" in p.stderr
    assert "3 launches, giving up" in p.stderr and "overran" not in p.stderr
    started = _fake_mpirun(tmp_path, version + 'echo running > "$FTMPI_STATUS_FILE"; sleep 3; '
                           'echo 0 > "$FTMPI_STATUS_FILE"')
    p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh"), "2", "configs/smoke.yaml", "--run-dir",
                        str(tmp_path / "run2")], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(started, FTMPI_JOB_TIMEOUT="50", FTMPI_START_TIMEOUT="1"))
    assert p.returncode == 0 and "did not start" not in p.stderr, p.stderr
