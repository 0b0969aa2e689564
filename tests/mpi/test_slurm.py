"""Real SLURM (one node on this machine, started by .ci/slurm-up.sh): jobs submitted with sbatch survive a
SIGKILLed worker, `scontrol requeue` and `scancel --signal=USR1`, and the requeued job resumes (issue 13).

Skipped, with the reason, when SLURM cannot be started here (not root, slurm-wlm/munge not installed).
A requeued job waits ~120 s (EligibleTime) before it runs again; the tests make it eligible 3 s after the
requeue (measured: it then starts at once)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mpirun import ROOT, metrics_rows, needs_mpi

SBATCH = ROOT / "jobs" / "slurm.sbatch"
SMOKE = ROOT / "configs" / "smoke.yaml"
LONG = ("--set", "model.n_iterations=40000", "--set", "executor.checkpoint_every=200")  # 4000 rounds


def _slurm_up() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (apt-get install slurm-wlm munge; .ci/run does it)"
    if os.geteuid() != 0:
        return "starting a one-node SLURM cluster needs root"
    p = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=120)
    return None if p.returncode == 0 else f"SLURM did not come up: {p.stderr.strip()[-300:]}"


pytestmark = needs_mpi


@pytest.fixture(scope="module")
def slurm():
    why = _slurm_up()
    if why:
        pytest.skip(why)


def submit(cwd: Path, run_dir: str, *args: str, ntasks: int = 3, extra: tuple[str, ...] = ("--time=5",),
           job_timeout: int = 150) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "smoke.yaml").write_text(SMOKE.read_text())  # submitted from elsewhere, with a relative config
    env = dict(os.environ, PYTHON=sys.executable, FTMPI_JOB_TIMEOUT=str(job_timeout))
    p = subprocess.run(["sbatch", "--parsable", "--overcommit", f"--ntasks={ntasks}", *extra,
                        f"--output={cwd}/slurm-%j.out", str(SBATCH), "smoke.yaml", "--run-dir", run_dir, "--quiet",
                        *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def wait(job: str, until, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if until():
            return
        time.sleep(0.2)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job}: {what} not within {limit:.0f}s (state {state(job)!r})")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def requeued_runs_again(job: str) -> None:
    """Wait until the requeued job pends, then make it eligible in 3 s instead of ~120 s. Measured: started
    in the same second as the requeue, slurmd refuses it ("Job credential revoked") and the job fails."""
    wait(job, lambda: state(job) == "PENDING", 60, "pending after the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], check=True, capture_output=True)


def test_worker_sigkilled_under_sbatch_completes(slurm, tmp_path):
    job = submit(tmp_path / "sub", "runs/k", "--inject", "kill:2@5", ntasks=4)
    wait(job, lambda: state(job) == "", 120, "done")
    s = summary(tmp_path / "sub" / "runs" / "k")  # relative to the submit directory
    assert s["status"] == "completed" and [f["rank"] for f in s["failures"]] == [2], s


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> float:
    """The uninterrupted run's accuracy (same config, same workers), launched directly."""
    run_dir = tmp_path_factory.mktemp("ref") / "r"
    p = subprocess.run([sys.executable, "-m", "ftmpi", "launch", "-n", "2", str(SMOKE), "--run-dir", str(run_dir),
                        "--quiet", *LONG], capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, FTMPI_JOB_TIMEOUT="150"))
    assert p.returncode == 0, p.stderr
    return summary(run_dir)["final_test_acc"]


def test_scontrol_requeue_resumes_from_its_checkpoints(slurm, reference, tmp_path):
    run_dir = tmp_path / "sub" / "runs" / "q"
    job = submit(tmp_path / "sub", "runs/q", *LONG)
    wait(job, lambda: metrics_rows(run_dir) > 1000, 120, "1000 rounds")
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    requeued_runs_again(job)
    # the requeued job waits ~120 s (EligibleTime) before it runs the rest: a generous bound, not a timing claim
    wait(job, lambda: state(job) == "", 420, "done after the requeue")
    s = summary(run_dir)
    assert s["status"] == "completed" and s["rounds"] == 4000, s
    # SIGTERM reaches every process: rank 0 checkpoints if it can before mpirun ends it, else the job resumes
    # from the newest periodic checkpoint (every 200 rounds)
    assert s["resumed_from"]["round"] >= 1000 - 200, s["resumed_from"]
    assert abs(s["final_test_acc"] - reference) <= 0.003, (s["final_test_acc"], reference)  # 0.3 points


def test_scancel_usr1_checkpoints_requeues_and_completes(slurm, reference, tmp_path):
    run_dir = tmp_path / "sub" / "runs" / "u"
    job = submit(tmp_path / "sub", "runs/u", *LONG)
    wait(job, lambda: metrics_rows(run_dir) > 1000, 120, "1000 rounds")
    subprocess.run(["scancel", "--full", "--signal=USR1", job], check=True, capture_output=True)
    wait(job, lambda: summary(run_dir).get("status") == "preempted", 60, "preempted")
    stopped = summary(run_dir)["preempted"]["round"]
    assert (run_dir / "ckpt" / f"round-{stopped:06d}.h5").exists()  # the round it stopped at, not a periodic one
    requeued_runs_again(job)
    # the requeued job waits ~120 s (EligibleTime) before it runs the rest: a generous bound, not a timing claim
    wait(job, lambda: state(job) == "", 420, "done after the requeue")
    s = summary(run_dir)
    assert s["status"] == "completed" and s["resumed_from"]["round"] == stopped, s  # work lost: none
    assert s["relaunches"][0]["requeue"] == job and "SIGUSR1" in s["relaunches"][0]["reason"]
    assert abs(s["final_test_acc"] - reference) <= 0.003, (s["final_test_acc"], reference)  # 0.3 points


def test_time_limit_warning_signal_checkpoints_requeues_and_completes(slurm, tmp_path):
    # --signal=B:USR1@110 with a 2-minute limit: SLURM signals the batch shell only (the launcher), ~10 s in,
    # but slurmctld looks at time limits only every ~30 s, so the warning may come ~40 s in. 400 000
    # iterations take ~65 s on an idle 2-core machine (200 000, 33 s since session 5's faster rounds,
    # finished before a late warning once)
    run_dir = tmp_path / "sub" / "runs" / "t"
    job = submit(tmp_path / "sub", "runs/t", "--set", "model.n_iterations=400000", "--set",
                 "executor.checkpoint_every=1000", extra=("--time=2", "--signal=B:USR1@110"),
                 job_timeout=280)  # a liveness bound: the requeued launch trains the rest (~30 000 rounds)
    wait(job, lambda: summary(run_dir).get("status") == "preempted" if (run_dir / "summary.json").exists() else False,
         120, "preempted by the time-limit warning")
    stopped = summary(run_dir)["preempted"]["round"]
    assert (run_dir / "ckpt" / f"round-{stopped:06d}.h5").exists()
    # the requeued job gets a longer limit (else it would be warned and requeued again, 10 s in); 5 minutes was
    # too short on a loaded machine (a CI run: warned again at 190 s, resumed a second time from round 26081)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True, capture_output=True)
    requeued_runs_again(job)
    # the requeued job waits ~120 s (EligibleTime) before it runs the rest: a generous bound, not a timing claim
    wait(job, lambda: state(job) == "", 420, "done after the requeue")
    s = summary(run_dir)
    assert s["status"] == "completed" and s["resumed_from"]["round"] == stopped and s["rounds"] == 40000, s


MPICH_PY = Path(os.environ.get("FTMPI_MPICH_PYTHON", ROOT / ".venv-mpich" / "bin" / "python"))


@pytest.mark.skipif(not (MPICH_PY.parent / "mpiexec").exists(), reason="no MPICH venv (run .ci/mpich-venv.sh)")
def test_srun_direct_launch_with_mpich_survives_a_sigkilled_worker(slurm, tmp_path):
    # no ULFM: srun --kill-on-bad-exit=0 keeps the step, the timeout detector finds the dead worker
    env = dict(os.environ, PYTHON=str(MPICH_PY), FTMPI_LAUNCHER="srun", FTMPI_MPIRUN_ARGS="--mpi=pmi2")
    cwd = tmp_path / "sub"
    cwd.mkdir()
    (cwd / "smoke.yaml").write_text(SMOKE.read_text())
    p = subprocess.run(["sbatch", "--parsable", "--overcommit", "--ntasks=4", "--time=5", f"--output={cwd}/o-%j.out",
                        str(SBATCH), "smoke.yaml", "--run-dir", "runs/s", "--quiet", "--inject", "kill:2@12"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    job = p.stdout.strip()
    wait(job, lambda: state(job) == "", 120, "done")
    s = summary(cwd / "runs" / "s")
    assert s["status"] == "completed" and s["detector"] == "timeout" and s["failures"][0]["rank"] == 2, s
