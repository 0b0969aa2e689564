"""What the launcher writes into a run dir: its relaunches and requeues (``relaunches.json``, kept across
launches and merged into ``summary.json``), and the outcome when rank 0 left none (a run dir's summary is
never left ``"running"`` by a launch that ended). No MPI.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ftmpi.errors import EXIT_PREEMPTED, ExitCode

EXIT_OVERRAN = ExitCode.OVERRAN  # the job overran FTMPI_JOB_TIMEOUT and was killed (the code of timeout(1))
RELAUNCHES = "relaunches.json"


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else default
    except (OSError, ValueError):
        return default


def _write_json(path: Path, obj: Any) -> None:
    from ftmpi.observe.metrics import write_json_atomic

    try:
        write_json_atomic(path, obj)
    except OSError as exc:
        sys.stderr.write(f"ftmpi launch: warning: could not write {path}: {exc}\n")


def read_summary(run_dir: Path) -> dict[str, Any]:
    d = _read(run_dir / "summary.json", {})
    return d if isinstance(d, dict) else {}


def note_relaunch(run_dir: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Append one relaunch or requeue record (stamped with the time) to ``RUN_DIR/relaunches.json``."""
    rec["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    old = _read(run_dir / RELAUNCHES, [])
    _write_json(run_dir / RELAUNCHES, [*old, rec] if isinstance(old, list) else [rec])
    return rec


def write_outcome(run_dir: Path, code: int, reason: str) -> None:
    """The outcome into summary.json when it still says ``running`` (rank 0 left no verdict), and the
    relaunch history merged into it."""
    s = read_summary(run_dir)
    history = _read(run_dir / RELAUNCHES, [])
    changed = False
    if s.get("status") == "running":
        status = "preempted" if code == EXIT_PREEMPTED else "overran" if code == EXIT_OVERRAN else "failed"
        s.update({"status": status, "exit_code": code, "error": reason, "written_by": "ftmpi launch"})
        s.pop("pid", None)
        changed = True
    if history and s and s.get("relaunches") != history:
        s["relaunches"] = history
        changed = True
    if changed:
        _write_json(run_dir / "summary.json", s)


# ------------------------------------------------------------------ workers that left without a coordinator
LEFT = "left"  # run_dir/left/rank-NNNN.json: a worker that left because its coordinator was lost


def note_left(run_dir: Path, rank: int, code: int, reason: str, launch: str) -> None:
    """A worker leaves with ``code`` because its coordinator was lost and nobody took over: say so in the run
    dir, so that the launcher can end a job whose rank 0 hangs (stopped before any replica: it would keep
    mpirun alive) instead of waiting for FTMPI_JOB_TIMEOUT. Each rank writes its own file; best effort."""
    from ftmpi.observe.metrics import write_json_atomic

    try:
        (run_dir / LEFT).mkdir(exist_ok=True)
        write_json_atomic(run_dir / LEFT / f"rank-{rank:04d}.json",
                          {"rank": rank, "code": int(code), "reason": reason, "launch": launch, "time": time.time()})
    except OSError:
        pass


def workers_left(run_dir: Path, launch: str) -> dict[int, int]:
    """Rank -> exit code of the workers of launch ``launch`` that left without a coordinator (:func:`note_left`)."""
    out: dict[int, int] = {}
    folder = run_dir / LEFT
    if not folder.is_dir():
        return out
    for p in folder.glob("rank-*.json"):
        d = _read(p, {})
        if isinstance(d, dict) and d.get("launch") == launch and isinstance(d.get("rank"), int):
            out[d["rank"]] = int(d.get("code", 0))
    return out
