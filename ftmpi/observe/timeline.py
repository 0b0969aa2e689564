"""Where a run's start-up and end go: ``FTMPI_TIMELINE=FILE`` makes the launcher and every rank append one
line per phase to FILE, ``<wall time> <who> <phase> <cpu seconds>`` (``who``: the world rank, or ``L`` for the
launcher; cpu: this process's CPU time so far). Off (the default), :func:`mark` costs one comparison.

The phases, in order: ``start`` (the interpreter reached ``python -m ftmpi``), ``mpirun`` and ``mpirun-exit``
(the launcher), ``mpi-init`` (MPI_Init returned), ``config`` (config loaded, run dir resolved), ``imports`` (a
worker's modules), ``kernels`` (a worker's numba kernels loaded), ``shard`` (a worker read its shard),
``first-reply`` (a worker's reply to round 0), ``data`` (rank 0 holds the dataset), ``joined`` (every worker
said hello), ``dealt`` (shards written), ``round-0`` (rank 0 has round 0's replies), ``rounds-done``,
``finished`` (outputs written, workers stopped) and ``exit``. A hot spare that takes a shard adds rank 0's
``adopt`` and ``adopt-sent`` (its shard file written, its round sent) and its own ``spare-restore`` (the lost
worker's optimizer state), ``spare-round`` (its first round message) and ``shard``. :func:`read` turns a file
back into rows; benchmarks/bench_e2e.py reports them.
"""
from __future__ import annotations

import os
import time

_FILE = os.environ.get("FTMPI_TIMELINE") or None


def _who() -> str:
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var]
    return "L"


def mark(phase: str) -> None:
    """Append ``phase`` to the timeline file, if one is set (a write that fails is ignored)."""
    if _FILE is None:
        return
    try:
        with open(_FILE, "a") as fh:  # one short append per line: lines of several processes do not mix
            fh.write(f"{time.time():.4f} {_who()} {phase} {time.process_time():.4f}\n")
    except OSError:
        pass


def read(path: str | os.PathLike[str]) -> list[tuple[float, str, str, float]]:
    """The lines of a timeline file as ``(wall, who, phase, cpu)``, in time order."""
    rows = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 4:
                rows.append((float(parts[0]), parts[1], parts[2], float(parts[3])))
    return sorted(rows)
