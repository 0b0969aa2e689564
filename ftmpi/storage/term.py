"""Coordinator terms in the run dir: who may write, and a fence that a deposed coordinator cannot pass.

A coordinator acts under a term, a number that only grows: the first coordinator of a run dir holds term 1,
each takeover and each relaunch claims the next one. A claim is a file ``run_dir/terms/term-NNNNNN.json``
created with ``O_CREAT | O_EXCL``, so two ranks that claim the same term cannot both succeed, and no claim
is ever overwritten (a single file replaced at each takeover could lose one of two racing claims). The
current term is the highest claimed.

Before each write or prune in the run dir the coordinator asks its :class:`Fence`: once a higher term was
claimed, :meth:`Fence.check` raises :class:`~ftmpi.errors.Deposed` and the caller writes nothing. The check
is one listing of a directory that holds one file per term; a write that had
already passed it when the new term was claimed can still land, which is why checkpoints carry their term
and ``--resume`` takes the newest checkpoint of the highest term.

No MPI; files only.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftmpi.errors import Deposed, WriteFailed

TERMS = "terms"
_NAME = re.compile(r"^term-(\d{6,})\.json$")


def _dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / TERMS


def current_term(run_dir: str | os.PathLike) -> int:
    """The highest term claimed in ``run_dir`` (0 when none was)."""
    try:
        names = os.listdir(_dir(run_dir))
    except FileNotFoundError:
        return 0
    best = 0
    for n in names:
        m = _NAME.match(n)
        if m:
            best = max(best, int(m.group(1)))
    return best


def holder(run_dir: str | os.PathLike, term: int) -> dict:
    """What the claim of ``term`` recorded (rank, host, pid, time), or {} when it is absent or unreadable."""
    try:
        return json.loads((_dir(run_dir) / f"term-{term:06d}.json").read_text())
    except (OSError, ValueError):
        return {}


def claim(run_dir: str | os.PathLike, term: int, record: dict) -> None:
    """Claim ``term`` for the caller. Raises :class:`Deposed` when ``term`` or a higher one is claimed already
    (by another coordinator), :class:`WriteFailed` when the claim cannot be written."""
    d = _dir(run_dir)
    now = current_term(run_dir)
    if now >= term:
        raise Deposed(now, f"claim term {term}")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"term-{term:06d}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise Deposed(term, f"claim term {term}") from None
    except OSError as exc:
        raise WriteFailed(f"{d}: cannot claim coordinator term {term}: {exc.strerror or exc}") from None
    try:
        os.write(fd, json.dumps({"term": term, **record}).encode())
        os.fsync(fd)
    except OSError:
        pass  # the claim is the file's name; its record is for people
    finally:
        os.close(fd)
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@dataclass
class Fence:
    """The check a coordinator of ``term`` makes before each write or prune in ``run_dir``."""

    run_dir: Path
    term: int

    def check(self, what: str) -> None:
        """Raise :class:`Deposed` when a term higher than this coordinator's was claimed."""
        now = current_term(self.run_dir)
        if now > self.term:
            raise Deposed(now, what)

    def still_holds(self) -> bool:
        return current_term(self.run_dir) <= self.term


def verdict_written(run_dir: Path, term: int) -> bool:
    """Whether ``run_dir/summary.json`` holds a final verdict (not "running") of ``term`` or a later term."""
    try:
        doc = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("status") not in (None, "running") and \
        isinstance(doc.get("term"), int) and doc["term"] >= term
