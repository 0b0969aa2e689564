"""The command line of one MPI launch, per MPI: Open MPI (ULFM), MPICH (hydra) or SLURM's srun. No MPI.

Open MPI 5 gets the flags a fault-tolerant run needs (measured on 5.0.11): ``--with-ft ulfm`` (without it
one dead rank takes the job down), ``--runtime-options error-nonzero-status=false`` (a rank that exits
non-zero must not make prterun kill the survivors), ob1 over shared memory and TCP (the default also probes
OFI/UCX, which slows every launch; ``FTMPI_MPI_TRANSPORT=default`` keeps Open MPI's choice, e.g. UCX for
InfiniBand), ``--oversubscribe`` and ``--allow-run-as-root`` when root. ``FTMPI_NO_ULFM=1`` drops ULFM.
MPICH and srun have no ULFM: ranks use the timeout detector, and a dead rank ends the job, which the
launcher then restarts from the newest checkpoint.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_UCX = ("UCX_MEM_EVENTS",)  # see rank_env


@dataclass
class Launch:
    kind: str  # openmpi | mpich | srun
    mpirun: str
    python: str
    ranks: int
    train: list[str]  # the train arguments (config first)
    hostfile: Path | None
    extra: list[str]  # FTMPI_MPIRUN_ARGS
    env: dict[str, str]


def flavour(mpirun: str) -> str:
    """``openmpi``, ``mpich`` or ``srun``, from the launcher's name and ``--version`` (Open MPI if unsure)."""
    if Path(mpirun).name == "srun":
        return "srun"
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "openmpi"
    return "mpich" if ("HYDRA" in out or "MPICH" in out) and "Open MPI" not in out else "openmpi"


def rank_env(kind: str, env: dict[str, str]) -> dict[str, str]:
    """Variables the ranks of a ``kind`` launch get unless ``env`` sets them. Open MPI over ob1 uses no UCX, but
    its libmpi links UCX, whose memory-event hooks are installed when the library loads, at a CPU cost in
    every rank's ``import mpi4py.MPI`` while the ranks start on shared cores: ``UCX_MEM_EVENTS=no`` skips them
    (docs/NOTES.md, "Traps"). With ``FTMPI_MPI_TRANSPORT=default`` (UCX may carry the traffic) or another
    MPI, nothing is set."""
    if kind != "openmpi" or env.get("FTMPI_MPI_TRANSPORT", "ob1") == "default":
        return {}
    return {k: "no" for k in _UCX if k not in env}


def build(s: Launch) -> list[str]:
    train = [s.python, "-m", "ftmpi", "train", *s.train]
    if s.kind == "srun":
        return ["srun", "--kill-on-bad-exit=0", f"--ntasks={s.ranks}", *s.extra, *train, "--detector", "timeout"]
    if s.kind == "mpich":
        cmd = [s.mpirun, "-n", str(s.ranks)]
        if s.hostfile:
            cmd += ["-f", str(s.hostfile)]
        return [*cmd, *s.extra, *train, "--detector", "timeout"]
    cmd = [s.mpirun, "--oversubscribe", "--runtime-options", "error-nonzero-status=false"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if s.env.get("FTMPI_MPI_TRANSPORT", "ob1") != "default":
        cmd += ["--mca", "pml", "ob1", "--mca", "btl", "self,sm,tcp"]
    if s.env.get("FTMPI_NO_ULFM", "0") != "1":
        cmd += ["--with-ft", "ulfm"]
    for v in sorted({*_THREADS, *(k for k in s.env if k.startswith("FTMPI_")), *(k for k in _UCX if k in s.env)}):
        cmd += ["-x", v]
    if s.hostfile:
        cmd += ["--hostfile", str(s.hostfile), "--map-by", "slot"]
    return [*cmd, *s.extra, "-n", str(s.ranks), *train]


def probe(kind: str, mpirun: str, host: str, extra: list[str]) -> list[str]:
    """The cheapest start of a process on ``host`` the way a launch starts its ranks there (the same mpirun,
    ``FTMPI_MPIRUN_ARGS`` and so the same rsh agent, ssh or SLURM daemon start): ``true`` as one rank. Exit 0
    means the host answers (:func:`ftmpi.launch.hosts.answering`)."""
    if kind == "mpich":
        return [mpirun, "-n", "1", "-hosts", host, *extra, "true"]
    cmd = [mpirun]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return [*cmd, "--host", f"{host}:1", *extra, "-n", "1", "true"]
