"""A training job on one rank: from the stop handlers and ``MPI_Init`` to the rank's exit code.

Every rank of ``mpirun ... python -m ftmpi train CONFIG`` runs :func:`train`: it checks the config, decides
what to do with the run dir (rank 0 holds its lock), runs the coordinator (rank 0) or a worker (the others;
a worker whose coordinator is lost and that is its deputy goes on as the coordinator), and turns every
error into one line and an exit code. Rank 0 reads the dataset in a thread while MPI starts.

A rank ends with ``os._exit`` after its files are flushed, never ``MPI_Finalize``: ranks that finalize after
a peer left with ``os._exit(1)`` wait forever (docs/FAILURES.md), ranks that skip it end the job at once.

Imports: the MPI boundary (``mpi4py`` here and in ``comm``), then the coordinator or the worker, each only on
the ranks that run it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ftmpi.errors import EXIT_COORDINATOR_LOST, EXIT_CRASH, FtmpiError
from ftmpi.launch.args import overrides
from ftmpi.observe.timeline import mark
from ftmpi.procs import hostname


def _say(rank: int, text: str) -> None:
    sys.stderr.write(f"ftmpi: rank {rank}: {text}\n")
    sys.stderr.flush()


_LOCKED: list[Path] = []  # the run dir whose lock this process holds (rank 0, or a deputy that took it over)


def _end(code: int, rank: int = -1, coordinator: int = 0) -> None:
    """Leave without MPI_Finalize (see module docstring); the coordinator (rank 0, or the deputy that took
    over) leaves its verdict for the launcher and releases the run dir's lock."""
    if rank == coordinator:
        from ftmpi.launch.rundir import release
        from ftmpi.observe.metrics import write_status

        write_status(code)
        for d in _LOCKED:
            release(d)
    mark("exit")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Prefetch:
    """Rank 0 reads the dataset in a thread while MPI starts and the heavy modules import (zlib and numpy
    release the GIL), so the read overlaps the start-up instead of following it. The rank is read from the
    launcher's environment; any error is kept and raised where the coordinator asks for the data."""

    def __init__(self, args: argparse.Namespace, overrides: list[str]) -> None:
        import threading

        self.data: Any = None
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, args=(args.config, overrides), daemon=True)
        self._t.start()

    def _run(self, path: str, overrides: list[str]) -> None:
        try:
            from ftmpi.config import load_config
            from ftmpi.storage.data import load_dataset

            cfg = load_config(path, overrides)
            self.data = load_dataset(cfg.data, cfg.model.seed)
        except BaseException as exc:  # re-raised by get() in the main thread
            self.error = exc

    def get(self):
        self._t.join()
        if self.error is not None:
            raise self.error
        return self.data


def _launcher_rank() -> str | None:
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var]
    return None


def train(args: argparse.Namespace) -> int:
    """Run this rank's part of a training job (under mpirun: every rank runs it) and leave the process with
    the rank's exit code; never returns normally."""
    t_start = time.monotonic()
    from ftmpi.signals import install

    install()  # SIGTERM/SIGUSR1: checkpoint and stop at the next round boundary (see ftmpi/signals.py)
    prefetch = _Prefetch(args, overrides(args)) if _launcher_rank() == "0" else None
    import mpi4py

    mpi4py.rc.finalize = False
    from mpi4py import MPI

    mark("mpi-init")
    rank = MPI.COMM_WORLD.Get_rank()
    size = MPI.COMM_WORLD.Get_size()
    if rank == 0 and os.environ.get("FTMPI_STATUS_FILE"):
        # every rank installed its stop handlers before MPI_Init (a fence): the launcher may now pass on a stop
        # signal (before that, SIGUSR1 would kill a rank that is still starting)
        try:
            Path(os.environ["FTMPI_STATUS_FILE"]).write_text("running\n")
        except OSError:
            pass
    try:
        from ftmpi.config import load_config
        from ftmpi.launch.environ import check_rank_env

        check_rank_env(os.environ)
        cfg = load_config(args.config, overrides(args))
        if size < 2:
            from ftmpi.errors import ConfigError

            raise ConfigError(f"{args.config}: need at least 2 MPI ranks (1 coordinator + workers), got {size}; "
                              "launch with jobs/local.sh W CONFIG or mpirun -n 1+W")
        _check_faults(cfg, size)
        from ftmpi.launch.rundir import resolve

        run_dir, mode = resolve(args.resume, args.run_dir, cfg.run_dir, args.overwrite)
        from ftmpi.comm import Channel, resolve_detector

        detector = resolve_detector(cfg.executor.failure_detector)
    except FtmpiError as exc:
        if rank == 0:
            _say(rank, f"error: {exc}")
        _end(exc.exit_code, rank)
    ch = Channel(MPI.COMM_WORLD, detector)
    mark("config")
    code = EXIT_CRASH
    try:
        if rank == 0:
            code = _run_rank0(ch, cfg, run_dir, t_start, mode, prefetch)
        else:
            from ftmpi.core.failover import Promoted
            from ftmpi.launch.rundir import worker_resuming
            from ftmpi.worker.loop import run_worker

            mark("imports")
            try:
                code = run_worker(ch, cfg, run_dir, worker_resuming(run_dir, mode))
            except Promoted as p:  # the coordinator was lost and this rank is its deputy: it coordinates now
                from ftmpi.coordinator.driver import take_over

                _take_lock_over(ch, run_dir, p.change.lost_id)
                code = take_over(ch, cfg, run_dir, p.replica, p.change, p.data,
                                 p.worker if cfg.executor.deputy_keeps_rows else None)
    except FtmpiError as exc:
        code = exc.exit_code
        if not getattr(exc, "quiet", False):
            _say(rank, f"error: {exc}")
        if rank == ch.coordinator:
            _tell_workers_to_leave(ch, str(exc), code)
            _failed_summary(run_dir, str(exc), code)
        elif code == EXIT_COORDINATOR_LOST and os.environ.get("FTMPI_LAUNCH_ID"):  # for ftmpi launch: see note_left
            from ftmpi.launch.record import note_left

            note_left(run_dir, rank, code, str(exc), os.environ["FTMPI_LAUNCH_ID"])
    except BaseException as exc:  # a real crash: tell rank 0 who, where and why, then leave
        tb = traceback.format_exc()
        _say(rank, f"crashed on {hostname()}: {type(exc).__name__}: {exc}\n{tb}")
        code = EXIT_CRASH
        if getattr(exc, "handed_over", None) is not None:  # its deputy takes over: no verdict from this rank
            _say(rank, f"the deputy (rank {exc.handed_over}) takes over")  # type: ignore[attr-defined]
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if rank == ch.coordinator:
            _tell_workers_to_leave(ch, f"coordinator crashed: {type(exc).__name__}: {exc}", EXIT_CRASH)
            _failed_summary(run_dir, f"{type(exc).__name__}: {exc}", EXIT_CRASH)
        else:
            from ftmpi.comm import TAG_REPLY

            ch.send(ch.coordinator, TAG_REPLY, {"t": "error", "rank": rank, "host": hostname(),
                                   "error": f"{type(exc).__name__}: {exc}"})
            ch.flush(time.monotonic() + 2.0)
    _end(code, rank, ch.coordinator)
    return code


def _take_lock_over(ch, run_dir: Path, lost: tuple[str, int, int]) -> None:
    """A deputy about to coordinate takes the run dir's lock over from the coordinator it replaces (``lost``:
    host, pid, start time), so that the lock names the live coordinator and :func:`_end` releases it.

    Raises:
        ConfigError: the lock names another job (it took the run dir meanwhile); this rank is then the one
            that gives the verdict and tells the workers to leave.
    """
    from ftmpi.launch.rundir import take_from

    try:
        take_from(run_dir, lost)
    except FtmpiError:
        ch.coordinator = ch.rank
        raise
    except OSError as exc:  # the takeover goes on; the lock keeps naming the lost coordinator
        _say(ch.rank, f"warning: could not take the run dir's lock over ({exc})")
        return
    _LOCKED.append(run_dir)


def _tell_workers_to_leave(ch, reason: str, code: int) -> None:
    """Rank 0 failed: every worker leaves at once with the same exit code, silently (rank 0 said why)."""
    from ftmpi.comm import TAG_CTRL

    for r in range(ch.size):
        if r == ch.rank:
            continue
        ch.send(r, TAG_CTRL, {"t": "exit", "reason": reason, "code": int(code), "quiet": True})
    ch.flush(time.monotonic() + 2.0)


def _failed_summary(run_dir: Path, error: str, code: int) -> None:
    """Record rank 0's failure in summary.json (metrics and checkpoints already written stay as they are)."""
    import json

    from ftmpi.observe.metrics import write_json_atomic

    path = run_dir / "summary.json"
    try:
        mine = json.loads(path.read_text()).get("pid") == os.getpid()  # the "running" marker of this launch
    except (OSError, ValueError, AttributeError):
        mine = False
    if mine:  # never overwrite the summary of an earlier launch (e.g. a bad --resume of a finished run)
        try:
            write_json_atomic(path, {"status": "failed", "exit_code": code, "error": error})
        except OSError:
            pass


def _check_faults(cfg, size: int) -> None:
    """An injected fault must name a rank of this job (else it would silently never fire)."""
    from ftmpi.errors import ConfigError

    for f in cfg.faults:
        if not 0 <= f.rank < size:
            raise ConfigError(f"fault {f} names rank {f.rank}, but this job has ranks 0..{size - 1} "
                              f"(1 coordinator + {size - 1} workers)")


def _check_resumable(snap, cfg, prefetch) -> None:
    """Refuse a checkpoint that this config cannot continue, before anything in the run dir changes."""
    from ftmpi.errors import CheckpointError
    from ftmpi.model.models import Model

    old = snap.config if isinstance(snap.config, dict) else {}
    for section, key in (("model", "type"), ("model", "options"), ("model", "hidden"), ("data", "dataset")):
        was, now = old.get(section, {}).get(key), getattr(getattr(cfg, section), key)
        if was is not None and (list(was) if isinstance(was, (list, tuple)) else was) != \
                (list(now) if isinstance(now, (list, tuple)) else now):
            raise CheckpointError(f"the checkpoint was written with {section}.{key}={was}, the config says "
                                  f"{now}; resume with the run's own config ({section}.{key}={was})")
    if prefetch is not None:
        d = prefetch.get()
        sizes = Model.build(cfg.model.type, cfg.model.hidden, d.X_train.shape[1], d.n_classes).sizes
        if list(snap.sizes) != list(sizes):
            raise CheckpointError(f"checkpoint model {list(map(int, snap.sizes))} does not match the config's "
                                  f"{list(map(int, sizes))}")
        if len(snap.owner) != len(d.y_train):
            raise CheckpointError(f"checkpoint holds ownership of {len(snap.owner)} samples but the dataset "
                                  f"{d.name} has {len(d.y_train)} training rows")
        from ftmpi.storage.userdata import check_labels

        check_labels(getattr(snap, "labels", None), d.labels, str(cfg.data.path))  # a user file's label mapping


def _run_rank0(ch, cfg, run_dir: Path, t_start: float, mode: str = "fresh", prefetch=None) -> int:
    """Take the run dir's lock, decide what to do with it and check the checkpoint against the config, all
    before the first byte is written into it (a refused launch changes nothing); then train."""
    from ftmpi.config import dump_config
    from ftmpi.coordinator.driver import run_coordinator
    from ftmpi.launch.rundir import acquire, clear_for, decide
    from ftmpi.observe.metrics import Progress, write_json_atomic

    acquire(run_dir)
    _LOCKED.append(run_dir)
    mode = decide(run_dir, mode)
    resume = None
    progress = Progress(cfg.executor.progress)
    if mode == "resume":
        from ftmpi.storage.checkpoint import newest_valid

        path, resume, skipped = newest_valid(run_dir)
        _check_resumable(resume, cfg, prefetch)
        for w in skipped:
            _say(0, f"warning: {w}")
        progress.event(f"resuming from {path}")
    clear_for(run_dir, mode)
    write_json_atomic(run_dir / "summary.json", {"status": "running", "name": cfg.name, "pid": os.getpid()})
    dump_config(cfg, run_dir / "config.yaml")
    for w in cfg.warnings:
        progress.event(f"warning: {w}")
    return run_coordinator(ch, cfg, run_dir, progress, t_start, resume, prefetch)
