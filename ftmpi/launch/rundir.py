"""What a launch may do with its run dir: resume it, start over in it, or refuse. No MPI.

A run dir that holds an earlier run's checkpoints is never wiped implicitly: ``--resume DIR`` continues it,
``--resume auto`` continues it when it holds checkpoints and starts fresh when it holds none (batch scripts
that may be requeued), ``--overwrite`` starts over (and only then are the old checkpoints deleted); anything
else is refused with one line before a single file is touched. A lock file (pid, host, start time) keeps two
jobs out of one run dir; the lock of a process that no longer exists on this host is taken over, and so is
the lock of an earlier attempt of the same launch (``FTMPI_LAUNCH_ID``, set by ``ftmpi launch``: its
restarts, or a requeued SLURM job, whose first rank 0 may have been on a host that is gone).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftmpi.errors import ConfigError
from ftmpi.procs import hostname, running, start_time

AUTO = "auto"
LOCK = "ftmpi.lock"


@dataclass(frozen=True)
class Plan:
    """The resolved run dir (absolute) and what the launch does with it: ``fresh``, ``resume`` or
    ``overwrite``."""

    run_dir: Path
    mode: str


def resolve(resume: str | None, run_dir: str | None, cfg_run_dir: Path, overwrite: bool = False) -> tuple[Path, str]:
    """The absolute run dir of a launch (``--resume DIR``, else ``--run-dir``, else the config's) and the
    mode it asks for: ``resume``, ``auto``, ``overwrite`` or ``fresh``.

    Raises:
        ConfigError: for contradictory flags or a run dir that is not a directory.
    """
    explicit = resume not in (None, AUTO)  # --resume DIR wins over --run-dir (as it always did)
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume a run, or start over")
    path = Path(str(resume) if explicit else (run_dir or cfg_run_dir)).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run dir {path} exists and is not a directory")
    mode = "resume" if explicit else AUTO if resume == AUTO else "overwrite" if overwrite else "fresh"
    return path, mode


def has_checkpoints(run_dir: Path) -> bool:
    from ftmpi.storage.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir))


def worker_resuming(run_dir: Path, mode: str) -> bool:
    """Whether a worker joins a resumed run. Rank 0 decides ``auto`` by the same test before it writes
    anything, and writes no checkpoint before every worker has joined."""
    return mode == "resume" or (mode == AUTO and has_checkpoints(run_dir))


def decide(run_dir: Path, mode: str) -> str:
    """Rank 0: ``fresh``, ``resume`` or ``overwrite`` for this run dir, or refuse.

    Raises:
        ConfigError: a fresh start into a run dir with checkpoints (names the dir and the ways out), or a
            resume of a run dir without checkpoints.
    """
    found = has_checkpoints(run_dir)
    if mode == AUTO:
        return "resume" if found else "fresh"
    if mode == "resume" and not found:
        raise ConfigError(f"--resume {run_dir}: no checkpoint in {run_dir / 'ckpt'} to resume from")
    if mode == "fresh" and found:
        raise ConfigError(f"run dir {run_dir} holds an earlier run's checkpoints; nothing was changed. "
                          "Continue it with --resume (or --resume auto), or start over with --overwrite")
    return mode


def clear_for(run_dir: Path, mode: str) -> None:
    """Delete what the new launch replaces: only ``--overwrite`` deletes checkpoints, fault records and the
    launcher's relaunch records. Otherwise the workers' shard files and the test set for a takeover stay (rank 0
    rewrites only those whose rows changed: ``shards.ensure_shard``; a resume with unchanged ownership writes
    none) and the epoch's handoff and standby files go."""
    for name in ("faults", "shards", "ckpt") if mode == "overwrite" else ():
        shutil.rmtree(run_dir / name, ignore_errors=True)
    if mode != "overwrite" and (run_dir / "shards").is_dir():
        for p in (run_dir / "shards").iterdir():
            if not ((p.name.startswith("worker-") and p.suffix == ".h5") or p.name == "test.h5") and p.is_file():
                p.unlink(missing_ok=True)
    if mode == "overwrite":  # the launcher's record of relaunches and requeues of the old run
        (run_dir / "relaunches.json").unlink(missing_ok=True)


def acquire(run_dir: Path) -> Path:
    """Take the run dir's lock for this process (creates the run dir).

    Raises:
        ConfigError: when another live job holds it (names its pid, host and start time).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": hostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "launch": os.environ.get("FTMPI_LAUNCH_ID", ""), "start_time": start_time(os.getpid())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = read_lock(path)
            if other is None:  # half-written by a starting job, or garbage: give it a moment
                time.sleep(0.2)
                other = read_lock(path)
            ours = bool(me["launch"]) and other is not None and other.get("launch") == me["launch"]
            live = other is not None and running(int(other.get("pid", 0)), int(other.get("start_time", 0)))
            if other is not None and not ours and (other.get("host") != me["host"] or live):
                who = f"pid {other.get('pid')} on {other.get('host')} since {other.get('started')}"
                raise ConfigError(f"run dir {run_dir} is in use by {who} (lock {path}; delete it if that job "
                                  "is gone)") from None
            try:  # a dead job's lock on this host, our own launch's earlier attempt, or garbage: take it over
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return path
    raise ConfigError(f"run dir {run_dir}: could not take the lock {path}")


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and "pid" in d else None


def release(run_dir: Path) -> None:
    """Drop the lock if this process holds it."""
    path = run_dir / LOCK
    d = read_lock(path)
    if d is not None and d.get("pid") == os.getpid() and d.get("host") == hostname():
        try:
            path.unlink()
        except OSError:
            pass
