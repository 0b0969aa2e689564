"""``ftmpi launch``: restarts follow the run dir the first launch used, the launcher's own outcome in
summary.json, stop signals become a checkpoint and exit 6 (real mpirun, real signals)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ftmpi import signals
from tests.mpirun import ROOT, ended, launched, metrics_rows, needs_mpi, run_launch

SMOKE = ROOT / "configs" / "smoke.yaml"


def launch(*args: str, cwd: Path = ROOT, limit: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_launch(*args, cwd=cwd, limit=limit, env=env)


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def test_repeated_stop_signal_within_the_window_is_one_request():
    signals.clear()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        signals.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # before: the default action (this process would be gone)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.stop_requested() == "SIGUSR1"
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signals.clear()


def test_bad_launcher_arguments_are_one_line_exit_2(tmp_path):
    for args, words in ((["-n", "x", str(SMOKE)], "--workers needs a whole number"),
                        (["-n", "2", str(tmp_path / "nope.yaml")], "not found"),
                        (["-n", "2", str(SMOKE), "--hostfile", str(tmp_path / "h")], "hostfile"),
                        (["-n", "2", str(SMOKE), "--resume", "auto", "--overwrite"], "contradict")):
        p = launch(*args, limit=30)
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@needs_mpi
def test_max_restarts_resumes_the_shared_folder_of_the_override_and_no_other(tmp_path):
    # the config's own run dir holds an older finished run: the restart must not touch it
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMOKE.read_text().replace("scenario: smoke", f"scenario: smoke\n  shared_folder: {tmp_path}/old"))
    first = launch("-n", "2", str(cfg), "--quiet", limit=60)
    assert first.returncode == 0, first.stderr
    old = _files(tmp_path / "old")
    job = launch("-n", "2", str(cfg), "--quiet", "--set", "executor.shared_folder=new", "--inject", "kill:0@12",
                 "--max-restarts", "1", "--set", "executor.deputy=false", cwd=tmp_path)  # no in-job takeover
    assert job.returncode == 0, job.stderr
    s = _summary(tmp_path / "new")  # relative to the launch directory, resolved once
    assert s["status"] == "completed" and s["resumed_from"]["round"] in (5, 10), s
    assert s["relaunches"][0]["reason"].startswith("rank 0 left no verdict") and s["relaunches"][0]["restart"] == 1
    assert _files(tmp_path / "old") == old


@needs_mpi
def test_every_worker_lost_is_relaunched_from_the_newest_checkpoint(tmp_path):
    """Both workers SIGKILLed in the same round: the coordinator checkpoints and exits 3; with
    --max-restarts the launcher resumes the run (before, exit 3 ended it)."""
    run_dir = tmp_path / "r"
    job = launch("-n", "2", str(SMOKE), "--quiet", "--run-dir", str(run_dir), "--inject", "kill:1@12",
                 "--inject", "kill:2@12", "--max-restarts", "1", "--set", "executor.timeout=2", limit=90)
    assert job.returncode == 0, job.stderr
    s = _summary(run_dir)
    assert s["status"] == "completed" and s["rounds"] == 20 and s["resumed_from"]["round"] >= 10, s
    (rel,) = s["relaunches"]
    assert rel["reason"] == "every worker was lost" and rel["exit_code"] == 3
    assert "rank 0: error: every worker is lost" in job.stderr


@needs_mpi
def test_no_verdict_is_written_into_summary_by_the_launcher(tmp_path):
    job = launch("-n", "2", str(SMOKE), "--quiet", "--run-dir", str(tmp_path / "r"), "--inject", "kill:0@4",
                 "--set", "executor.deputy=false", limit=60)  # nobody takes over: the job ends without a verdict
    s = _summary(tmp_path / "r")
    assert job.returncode not in (0, 2) and s["status"] == "failed" and s["written_by"] == "ftmpi launch", s
    assert "rank 0 left no verdict" in s["error"] and s["exit_code"] == job.returncode


@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_to_the_launcher_checkpoints_the_round_and_resume_completes(tmp_path, sig):
    run_dir = tmp_path / "r"
    long = ("--set", "model.n_iterations=3000", "--set", "executor.checkpoint_every=1000")
    with launched("-n", "2", str(SMOKE), "--quiet", "--run-dir", str(run_dir), *long, limit=120) as p:
        deadline = time.monotonic() + 90
        while metrics_rows(run_dir) < 5 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, f"the run ended before it could be signalled:\n{p.communicate()[1][-3000:]}"
        err = ended(p, sig)
    assert p.returncode == 6, err
    s = _summary(run_dir)
    assert s["status"] == "preempted" and s["preempted"]["signal"] == "SIGUSR1", s
    stopped = s["rounds"]
    ckpts = sorted(run_dir.glob("ckpt/round-*.h5"))
    assert ckpts and ckpts[-1].name == f"round-{stopped:06d}.h5"  # no periodic checkpoint would be there
    assert stopped < 300
    res = launch("-n", "2", str(SMOKE), "--quiet", "--run-dir", str(run_dir), "--resume", "auto", *long)
    assert res.returncode == 0, res.stderr
    s = _summary(run_dir)
    assert s["status"] == "completed" and s["resumed_from"]["round"] == stopped and s["rounds"] == 300, s


@needs_mpi
def test_stop_signal_while_the_ranks_start_waits_for_them_then_checkpoints(tmp_path):
    # SIGUSR1 kills a Python process that has not installed its handler yet: the launcher holds the request
    # until rank 0 says every rank is up, then the run stops at its first round boundary
    run_dir = tmp_path / "r"
    with launched("-n", "2", str(SMOKE), "--quiet", "--run-dir", str(run_dir), limit=60) as p:
        deadline = time.monotonic() + 30
        while p.poll() is None and time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True).stdout.split():
                break  # mpirun is up; the ranks are still starting
            time.sleep(0.01)
        err = ended(p, signal.SIGTERM)
    assert p.returncode == 6, err
    s = _summary(run_dir)
    assert s["status"] == "preempted" and s["preempted"]["signal"] == "SIGUSR1", s


def test_without_a_status_file_rank0s_summary_of_this_launch_is_the_verdict(tmp_path):
    from ftmpi.launch.launcher import _summary_verdict

    since = time.time() - 1
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "pid": 1}))
    assert _summary_verdict(tmp_path, since) is None
    (tmp_path / "summary.json").write_text(json.dumps({"status": "preempted", "exit_code": 6}))
    assert _summary_verdict(tmp_path, since) == 6
    assert _summary_verdict(tmp_path, time.time() + 5) is None  # an earlier launch's summary
    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "exit_code": 4, "written_by": "x"}))
    assert _summary_verdict(tmp_path, since) is None  # the launcher's own words are no verdict of rank 0


@needs_mpi
def test_an_mpi_start_up_failure_before_rank_0_ran_is_launched_again(tmp_path):
    """Seen under load: mpirun exits 213 ("The PMIx server's listener thread failed to start") before any rank
    ran. Nothing of the run happened, so the launcher starts it again instead of giving up with no verdict."""
    import shutil

    real = shutil.which(os.environ.get("MPIRUN", "mpirun"))
    fake = tmp_path / "mpirun"
    fake.write_text(f"""#!/bin/sh
if [ ! -e {tmp_path}/failed-once ]; then
  touch {tmp_path}/failed-once
  echo "The PMIx server's listener thread failed to start. We cannot continue." >&2
  exit 213
fi
exec {real} "$@"
""")
    fake.chmod(0o755)
    run_dir = tmp_path / "r"
    p = launch("-n", "2", str(SMOKE), "--quiet", "--mpi", "openmpi", "--run-dir", str(run_dir),
               "--set", "model.n_iterations=100", limit=90, env={"FTMPI_MPIRUN": str(fake)})
    assert p.returncode == 0, p.stderr
    assert "mpirun failed before rank 0 started (exit 213); launching again" in p.stderr
    assert _summary(run_dir)["status"] == "completed"
