"""MPICH (hydra's mpiexec, no ULFM): a SIGKILLed worker ends the job, `ftmpi launch` relaunches it from the
newest checkpoint and it completes; SIGTERM to the launcher still checkpoints and ends with exit 6.

Needs a second venv with the `mpich` wheel (.ci/mpich-venv.sh makes ROOT/.venv-mpich; or set
FTMPI_MPICH_PYTHON to such an interpreter); skipped otherwise."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.mpirun import ROOT, ended, launched, metrics_rows, run_launch

PY = Path(os.environ.get("FTMPI_MPICH_PYTHON", ROOT / ".venv-mpich" / "bin" / "python"))
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = pytest.mark.skipif(not (PY.parent / "mpiexec").exists(),
                                reason=f"no MPICH venv at {PY.parent.parent} (run .ci/mpich-venv.sh)")


def _env() -> dict:
    return dict(os.environ, PATH=f"{PY.parent}:{os.environ['PATH']}", FTMPI_JOB_TIMEOUT="120",
                FTMPI_MPIRUN=str(PY.parent / "mpiexec"), PYTHON=str(PY))


def test_worker_killed_under_mpich_is_survived_by_relaunch(tmp_path):
    p = run_launch("-n", "3", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--quiet", "--inject", "kill:2@12",
                   "--max-restarts", "2", env=_env(), python=str(PY), limit=120)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and s["detector"] == "timeout", s
    assert s["resumed_from"]["round"] in (5, 10), s  # round 10's checkpoint may be unfinished at the kill
    assert s["relaunches"][0]["reason"] == "rank 0 left no verdict (mpirun exit 9)", s["relaunches"]


def test_sigterm_to_the_launcher_under_mpich_checkpoints_and_exits_6(tmp_path):
    run_dir = tmp_path / "r"
    with launched("-n", "2", str(SMOKE), "--run-dir", str(run_dir), "--quiet", "--set", "model.n_iterations=40000",
                  env=_env(), python=str(PY), limit=120) as p:
        deadline = time.monotonic() + 90
        while metrics_rows(run_dir) < 50 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        err = ended(p, signal.SIGTERM)
    assert p.returncode == 6, err
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "preempted" and (run_dir / "ckpt" / f"round-{s['rounds']:06d}.h5").exists()
