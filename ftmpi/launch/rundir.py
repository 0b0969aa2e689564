"""What a launch may do with its run dir: resume it, start over in it, or refuse. No MPI.

A run dir that holds an earlier run's checkpoints is never wiped implicitly: ``--resume DIR`` continues it,
``--resume auto`` continues it when it holds checkpoints and starts fresh when it holds none (batch scripts
that may be requeued), ``--overwrite`` starts over (and only then are the old checkpoints deleted); anything
else is refused with one line before a single file is touched. A lock file (pid, host, start time) keeps two
jobs out of one run dir; the lock of a process that no longer exists on this host is taken over, and so is
the lock of an earlier attempt of the same launch (``FTMPI_LAUNCH_ID``, set by ``ftmpi launch``: its
restarts, or a requeued SLURM job, whose first rank 0 may have been on a host that is gone). Of several
launches that find the same stale lock exactly one takes it over. A deputy that becomes the coordinator takes
the lock over from the coordinator it replaced (:func:`take_from`), and the coordinator that ends the run
releases it.
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
    explicit = resume not in (None, AUTO)  # --resume DIR wins over --run-dir
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


def _holder() -> dict[str, Any]:
    """This process as a lock holder: pid, host, process start time (a reused pid is another process),
    launch id, and a token that makes every lock file's bytes unique."""
    return {"pid": os.getpid(), "host": hostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "launch": os.environ.get("FTMPI_LAUNCH_ID", ""), "start_time": start_time(os.getpid()),
            "token": os.urandom(8).hex()}


def _raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        d = json.loads(raw)
        if isinstance(d, dict) and "pid" in d:
            int(d["pid"]), int(d.get("start_time", 0))
            return d
    except (ValueError, TypeError):
        pass
    return None


def _create(path: Path, content: bytes, token: str) -> bool:
    """Create ``path`` holding ``content`` if it does not exist, whole or not at all: the bytes go to a temp
    file first, which is then hard-linked to ``path`` (a reader never sees a half-written lock). False if
    ``path`` exists."""
    tmp = path.with_name(f"{path.name}.{token}.tmp")
    tmp.write_bytes(content)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if tmp.stat().st_nlink == 2:  # NFS: the link was made, the reply lost
            return True
        try:  # a filesystem without hard links: exclusive create, then write
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _replace(path: Path, seen: bytes, content: bytes, token: str) -> bool:
    """Replace the lock whose bytes are ``seen`` with ``content``, atomically with respect to every process
    that does the same: the right to replace those very bytes is a marker file named after their hash,
    created exclusively, and the lock is checked to still hold them after the marker is taken and before
    ``rename`` puts ``content`` in place. False when another process holds the marker or the lock changed
    meanwhile (the caller judges the lock again)."""
    import hashlib

    marker = path.with_name(f"{path.name}.takeover-{hashlib.sha1(seen).hexdigest()[:16]}")
    if not _create(marker, content, token):
        _clear_dead_marker(marker)
        return False
    try:
        if _raw(path) != seen:
            return False
        tmp = path.with_name(f"{path.name}.{token}.new")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        return True
    finally:
        marker.unlink(missing_ok=True)


def _clear_dead_marker(marker: Path) -> None:
    """Remove a takeover marker left by a process that died between taking and dropping it: its process is
    gone from this host, or (another host's, or unreadable) it is older than a minute."""
    raw = _raw(marker)
    if raw is None:
        return
    d = _parse(raw)
    try:
        old = time.time() - marker.stat().st_mtime > 60
    except OSError:
        return
    if d is not None and d.get("host") == hostname():
        dead = not running(int(d["pid"]), int(d.get("start_time", 0)))
    else:
        dead = old
    if dead:
        marker.unlink(missing_ok=True)


def _who(other: dict[str, Any]) -> str:
    return f"pid {other.get('pid')} on {other.get('host')} since {other.get('started')}"


def acquire(run_dir: Path) -> Path:
    """Take the run dir's lock for this process (creates the run dir).

    A lock is free to take over when it names a process that no longer exists on this host, an earlier
    attempt of this launch, or holds garbage; of several launches that find the same stale lock, exactly one
    takes it over (:func:`_replace`), the others then find it held.

    Raises:
        ConfigError: when another live job holds it (names its pid, host and start time).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = _holder()
    content = json.dumps(me).encode()
    deadline = time.monotonic() + 10.0
    while True:
        if _create(path, content, me["token"]):
            return path
        raw = _raw(path)
        if raw is None:  # released meanwhile
            continue
        other = _parse(raw)
        if other is None:  # garbage, or a lock an older version is still writing: give it a moment
            time.sleep(0.2)
            if _raw(path) != raw:
                continue
        else:
            ours = bool(me["launch"]) and other.get("launch") == me["launch"]
            live = running(int(other["pid"]), int(other.get("start_time", 0)))
            if not ours and (other.get("host") != me["host"] or live):
                raise ConfigError(f"run dir {run_dir} is in use by {_who(other)} (lock {path}; delete it if that "
                                  "job is gone)")
        if _replace(path, raw, content, me["token"]):  # a dead job's lock on this host, our own launch's earlier
            return path                                # attempt, or garbage: taken over
        if time.monotonic() > deadline:
            raise ConfigError(f"run dir {run_dir}: could not take the lock {path}")
        time.sleep(0.02)


def take_from(run_dir: Path, lost: tuple[str, int, int]) -> Path:
    """A coordinator that took over from a lost one (``lost``: its host, pid and process start time) takes
    the run dir's lock over from it, so that the lock names the live coordinator and is released when the
    run ends (:func:`release`). A missing lock is taken afresh.

    Raises:
        ConfigError: the lock names another process than ``lost``: another job has the run dir.
    """
    path = run_dir / LOCK
    me = _holder()
    content = json.dumps(me).encode()
    host, pid, started = str(lost[0]), int(lost[1]), int(lost[2])
    deadline = time.monotonic() + 10.0
    while True:
        raw = _raw(path)
        if raw is None:
            if _create(path, content, me["token"]):
                return path
            continue
        other = _parse(raw)
        if other is not None and (other.get("host"), int(other["pid"])) == (me["host"], me["pid"]):
            return path  # already this process's
        if other is None or (other.get("host"), int(other["pid"])) != (host, pid) or \
                (started and int(other.get("start_time", 0)) not in (0, started)):
            holder = "nothing readable" if other is None else _who(other)
            raise ConfigError(f"run dir {run_dir}: its lock {path} names {holder}, not the lost coordinator (pid "
                              f"{pid} on {host}): another job has the run dir")
        if _replace(path, raw, content, me["token"]):
            return path
        if time.monotonic() > deadline:
            raise ConfigError(f"run dir {run_dir}: could not take the lock {path} over from pid {pid} on {host}")
        time.sleep(0.02)


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
