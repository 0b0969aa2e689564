"""Screening the workers' updates before they reach the global model: which of a round's updates are
accepted, which are rejected and why, and which workers are to be treated as failed. Pure: no MPI, no I/O,
no clock; the coordinator (:meth:`ftmpi.coordinator.globalmodel.GlobalModel.aggregate`) decodes the updates,
measures them (:func:`measure`) and acts on the outcome.

The rule (:func:`judge`), for each update of a round (a model delta under model averaging, a mean gradient
under ``send_gradients``):

1. **Not finite** (a NaN or an Inf anywhere): rejected.
2. **Too large**: its L2 norm ``n`` is compared with a reference ``ref``, the larger of

   - the median of the *other* workers' finite norms in this round (leave-one-out: with two workers, a
     corrupted update does not raise its own reference), and
   - the median of this worker's own last :data:`HISTORY` accepted norms (a worker whose updates are
     always larger than the others', e.g. on a label-skewed shard, is compared with itself too);

   and rejected when ``n > factor * ref``. With no reference at all (one worker, first round) only rule 1
   applies. Taking the larger of the two makes the rule lenient where honest norms move: a round in which
   every norm grows (a phase of training, a rate schedule) raises the round's median, a worker that is
   always above the others raises its own. Only too *large* norms are rejected: a small update does little
   harm and honest ones shrink as training converges (or at ``delta_switch``).

A rejected update is left out of the round's aggregate (the others are averaged as if it had not come).
A worker whose updates are rejected ``reject_limit`` rounds in a row is to be treated as failed
(:attr:`Outcome.lost`). When more than half of the round's updates are not finite, the fault is taken to be
the model's, not the workers' (a learning rate that diverges makes every worker's update overflow together;
silent corruption of most workers in the same round is far less likely): :attr:`Outcome.diverged`.

The factor was chosen from measured honest norms (``benchmarks/bench_screen.py``,
``benchmarks/results/screen.md``): the largest honest ratio ``n / ref`` seen over every worker and round of
the measured runs, with a margin; a corrupted update (scaled, or a high exponent bit flipped) is orders of
magnitude above it.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["HISTORY", "Outcome", "Screen", "Verdict", "judge", "measure"]

#: how many of a worker's last accepted norms its own reference is the median of
HISTORY = 5
#: how many rejections summary.json lists one by one (the counts are always complete)
LOGGED = 100


def measure(update: np.ndarray) -> float:
    """The L2 norm of ``update``; ``nan`` when any element is NaN, ``inf`` when one is infinite (and none is
    NaN). One float32 dot product in the common case (a NaN or Inf anywhere makes it non-finite: squares
    never cancel); float64 when that overflows (elements above ~1e19), so a huge finite update still gets its
    norm."""
    u = np.asarray(update)
    if u.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(u.ravel(), u.ravel()))
    if math.isfinite(sq):
        return math.sqrt(sq)
    if np.isnan(u).any():
        return math.nan
    if np.isinf(u).any():
        return math.inf
    u64 = u.ravel().astype(np.float64)
    return float(math.sqrt(float(np.dot(u64, u64))))


@dataclass(frozen=True)
class Verdict:
    """What became of one worker's update: its ``norm`` (nan/inf: not finite), whether it was ``accepted``,
    the ``reference`` it was compared with (None: none yet) and, when rejected, the ``reason`` in words."""

    rank: int
    norm: float
    accepted: bool
    reference: float | None = None
    reason: str = ""

    @property
    def ratio(self) -> float | None:
        """``norm / reference`` (None without a reference or for a norm that is not finite)."""
        if self.reference is None or not math.isfinite(self.norm):
            return None
        return self.norm / self.reference


def _median(xs: Sequence[float]) -> float | None:
    # statistics.median, not numpy's: the same float64 value for a handful of floats, ~30x cheaper per call,
    # and it runs twice per worker per round on rank 0 (numpy's cost ~6 % of rank 0's time in 2 ms rounds)
    return float(statistics.median(xs)) if len(xs) else None


def judge(norms: Mapping[int, float], history: Mapping[int, Sequence[float]], factor: float) -> dict[int, Verdict]:
    """The rule of the module docstring, for one round.

    Args:
        norms: Rank -> the norm of its update this round (:func:`measure`: nan or inf when not finite).
        history: Rank -> its recent accepted norms (any length; empty or missing: none yet).
        factor: How many times its reference an update's norm may be (> 1).

    Returns:
        Rank -> :class:`Verdict`, for every rank of ``norms``.
    """
    finite = {r: float(n) for r, n in norms.items() if math.isfinite(n)}
    out: dict[int, Verdict] = {}
    for r in sorted(norms):
        n = float(norms[r])
        if not math.isfinite(n):
            what = "NaN" if math.isnan(n) else "Inf"
            out[r] = Verdict(r, n, False, None, f"update not finite ({what})")
            continue
        others = _median([v for q, v in finite.items() if q != r])
        own = _median(list(history.get(r, ())))
        refs = [x for x in (others, own) if x is not None and x > 0]
        ref = max(refs) if refs else None
        if ref is None or n <= factor * ref:
            out[r] = Verdict(r, n, True, ref)
            continue
        parts = ([f"the others' median {others:.3g} this round"] if others is not None else []) + \
            ([f"its own median {own:.3g} over its last {len(history.get(r, ()))} accepted"] if own is not None else [])
        out[r] = Verdict(r, n, False, ref, f"update norm {n:.3g} is {n / ref:.3g} times its reference {ref:.3g} "
                                           f"(the larger of {' and '.join(parts)}), above the limit of {factor:g}")
    return out


@dataclass
class Outcome:
    """One round's screening: every :class:`Verdict`, the workers to treat as failed (rank -> why), and
    whether the round says the model itself diverged."""

    verdicts: dict[int, Verdict]
    lost: dict[int, str] = field(default_factory=dict)
    diverged: bool = False

    @property
    def accepted(self) -> list[int]:
        return [r for r, v in sorted(self.verdicts.items()) if v.accepted]

    @property
    def rejected(self) -> dict[int, str]:
        """Rank -> reason, for the updates left out this round."""
        return {r: v.reason for r, v in sorted(self.verdicts.items()) if not v.accepted}

    @property
    def max_ratio(self) -> float:
        """The largest ``norm / reference`` of an accepted update (how close honest updates came to the
        limit); nan when none had a reference."""
        ratios = [v.ratio for v in self.verdicts.values() if v.accepted and v.ratio is not None]
        return max(ratios) if ratios else math.nan


class Screen:
    """The rule of the module docstring over a run: each worker's recent accepted norms, its rejections in a
    row, and the totals summary.json reports. Its history is checkpointed and replicated (for an exact
    resume): a resumed run, or a deputy that takes over, judges the next update as the first run would.

    Args:
        factor: ``executor.screen_factor``.
        reject_limit: ``executor.reject_limit``: rejections in a row after which a worker is treated as failed.
        enabled: ``executor.screen``; False accepts every update (the coordinator still refuses a global model
            that is not finite).
    """

    def __init__(self, factor: float, reject_limit: int, enabled: bool = True) -> None:
        self.factor, self.reject_limit, self.enabled = float(factor), int(reject_limit), bool(enabled)
        self.history: dict[int, deque[float]] = {}
        self.streak: dict[int, int] = {}  # rank -> rejections in a row (up to the current round)
        self.rejected: dict[int, int] = {}  # rank -> rejections in the run
        self.log: list[dict[str, Any]] = []  # the first LOGGED rejections
        self.max_ratio = math.nan  # the largest accepted norm / reference of the run
        self.rounds = 0

    def round(self, rnd: int, norms: Mapping[int, float]) -> Outcome:
        """Judge one round's updates (rank -> :func:`measure` of its update) and update the history.

        Returns:
            The :class:`Outcome`; with screening off, every update is accepted (and nothing is recorded).
        """
        if not self.enabled:
            return Outcome({r: Verdict(r, float(n), True) for r, n in sorted(norms.items())})
        self.rounds += 1
        verdicts = judge(norms, {r: list(h) for r, h in self.history.items()}, self.factor)
        out = Outcome(verdicts)
        n_bad = sum(1 for v in verdicts.values() if not math.isfinite(v.norm))
        out.diverged = n_bad > len(verdicts) / 2
        if out.diverged:  # the model's fault, not the workers': nobody's record changes
            return out
        for r, v in verdicts.items():
            if v.accepted:
                self.history.setdefault(r, deque(maxlen=HISTORY)).append(v.norm)
                self.streak[r] = 0
                continue
            self.streak[r] = self.streak.get(r, 0) + 1
            self.rejected[r] = self.rejected.get(r, 0) + 1
            if len(self.log) < LOGGED:
                self.log.append({"round": rnd, "rank": r, "norm": v.norm if math.isfinite(v.norm) else str(v.norm),
                                 "reference": v.reference, "reason": v.reason})
            if self.streak[r] >= self.reject_limit:
                out.lost[r] = (f"its updates were rejected {self.streak[r]} rounds in a row "
                               f"(executor.reject_limit={self.reject_limit}); the last: {v.reason}")
        for r in out.lost:
            self.forget(r)
        if math.isfinite(out.max_ratio) and not out.max_ratio <= self.max_ratio:
            self.max_ratio = out.max_ratio
        return out

    def inherit(self, rank: int, lost: int) -> None:
        """A hot spare ``rank`` that took the lost worker ``lost``'s shard and state continues its series of
        norms: it is judged against that worker's history (a copy), as that worker would have been."""
        h = self.history.get(lost)
        if h is not None:
            self.history[rank] = deque(h, maxlen=h.maxlen)

    def forget(self, rank: int) -> None:
        """A worker that is gone: its history and streak go (its totals stay for the summary)."""
        self.history.pop(rank, None)
        self.streak.pop(rank, None)

    def record(self) -> dict[str, Any]:
        """The ``screen`` entry of summary.json."""
        return {"enabled": self.enabled, "factor": self.factor, "reject_limit": self.reject_limit,
                "rejected": sum(self.rejected.values()),
                "rejected_by_rank": {str(r): n for r, n in sorted(self.rejected.items())},
                "max_accepted_ratio": self.max_ratio if math.isfinite(self.max_ratio) else None,
                "rejections": list(self.log)}
