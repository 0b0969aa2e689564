"""What a lost worker's rows become: the handoff policies (``executor.remap`` and
``optimizer.rep_selection``) and their weight maths. No MPI, no I/O.

One interface, :meth:`Policy.plan`: given the workers just lost and the cluster's state, which of their rows
go to which survivor, as which segments, each row with which weight. Policies:

- ``none`` (:class:`Drop`): nothing is handed; the rows are dropped.
- ``full`` (:class:`Full`): every row is handed with its own weight.
- ``representative`` + ``rep_selection: random`` (:class:`StagedRandom`): rank 0 draws ``k`` rows of each
  worker **in proportion to their weights** (systematic PPS sampling, :func:`pps_systematic`) and stages
  them in a standby file before anything fails; a row drawn ``h`` times weighs ``h * M / k`` (``M`` the
  shard's mass).
- ``representative`` + ``loss`` / ``stratified`` (:class:`Scored`): the worker's own latest report of its
  highest-loss rows (or rank 0's scoring with the global model when it never reported); each weighs ``M/k``.

The weights (``rep_weight: shard``). Drawing in proportion to weight was chosen over a uniform choice
reweighted by ``w_i * n / k`` (Horvitz-Thompson) because it keeps three things exact rather than only in
expectation: the handed rows' total mass is the dead shard's mass ``M``; every handed row of one loss weighs
the same ``M/k`` (unless one very heavy row is drawn twice), so minibatch draws do not swing with a few heavy
rows; and the per-row weights are known when the rows are staged. The inclusion probability of row ``i`` is
exactly ``k w_i / M`` (systematic sampling over a random order), so the expected mass handed for any subset
of rows (a class, the rows that came from one earlier loss) equals that subset's mass: the estimate is
unbiased through any sequence of losses. Before this, rows were drawn uniformly and each given ``M/k``,
which shrinks the mass of rows that already weighed more than 1 (handed rows lost a second time).

``loss`` and ``stratified`` are **biased**: their rows are the hardest ones, not a random draw, so no weight
makes their per-class mass an unbiased estimate; they keep ``M/k`` per row (total mass exact).
``rep_weight: one`` leaves every weight as it was (1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import kernels as K
from .partition import Ownership, assign_handoff, deal_slices

__all__ = ["Choice", "Drop", "Full", "HandoffPlan", "Policy", "Scored", "StagedRandom", "expand_weights",
           "make_policy", "pps_systematic", "random_choice", "rep_count", "select_representative"]


# ------------------------------------------------------------------------------------------ selection
def rep_count(n_most_rep: float, n: int) -> int:
    """``n_most_rep`` as a count: a fraction in (0, 1) of the shard, else an absolute count."""
    if 0 < n_most_rep < 1:
        return int(round(n_most_rep * n))
    return int(min(n_most_rep, n))


def expand_weights(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices, row ``i`` repeated ``floor(w[i])`` times plus once more with probability ``w[i] % 1``: a
    list whose uniform draws pick each row in proportion to its weight (exactly, in expectation)."""
    whole = np.floor(w)
    counts = whole.astype(np.int64) + (rng.random(len(w)) < (w - whole))
    return np.repeat(np.arange(len(w), dtype=np.int64), counts)


def select_representative(kind: str, scores: np.ndarray, y: np.ndarray, k: int, n_classes: int,
                          seed: int) -> np.ndarray:
    """Local row indices of the ``k`` most representative points under the selection rule ``kind``."""
    if kind == "random":
        return K.select_random(len(scores), k, seed)
    if kind == "stratified":
        return K.select_stratified(scores, y, k, n_classes)
    return K.select_loss(scores, k)


def pps_systematic(w: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Systematic sampling in proportion to weight: ``k`` equally spaced points (random start) on the
    cumulative weights of the rows in the given order. Returns the positions hit (ascending) and how often
    each was hit (a row heavier than ``M/k`` can be hit more than once). Row ``i`` is hit ``k w_i / M`` times
    in expectation, and exactly ``k`` hits are made in all."""
    w = np.asarray(w, np.float64)
    if k <= 0 or len(w) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cum = np.cumsum(w)
    step = cum[-1] / k
    points = (rng.random() + np.arange(k)) * step
    pos = np.minimum(np.searchsorted(cum, points, side="right"), len(w) - 1)
    uniq, hits = np.unique(pos, return_counts=True)
    return uniq.astype(np.int64), hits.astype(np.int64)


def random_choice(seed: int, rank: int, epoch: int, owned: np.ndarray, weight: np.ndarray,
                  n_most_rep: float) -> tuple[np.ndarray, np.ndarray]:
    """Rank 0's ``random`` representatives of one worker: ids in a random order (the order of its standby
    file) and their hit counts, drawn by :func:`pps_systematic` with a generator of its own for (rank,
    epoch), so that no two draws are correlated (a fixed global order would favour rows drawn before)."""
    k = rep_count(n_most_rep, len(owned))
    rng = np.random.default_rng([seed, 0x5EED, rank, epoch])
    order = rng.permutation(len(owned))
    pos, hits = pps_systematic(weight[owned[order]], k, rng)
    return owned[order[pos]].astype(np.int64), hits


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Choice:
    """The rows of one lost worker that are handed over (in file order when staged) and their new weights."""

    ids: np.ndarray
    weights: np.ndarray
    scale: float | None = None  # M/k under rep_weight shard
    staged: str | None = None  # the standby file that holds exactly ``ids`` in this order


@dataclass
class Part:
    """Rows for one survivor: a slice of a standby file (``path``) or of this epoch's handoff file (None)."""

    path: str | None
    start: int
    stop: int
    ids: np.ndarray
    weights: np.ndarray


@dataclass
class HandoffPlan:
    """What one membership epoch hands over."""

    epoch: int
    chosen: dict[int, Choice]  # lost rank -> its handed rows
    parts: dict[int, list[Part]] = field(default_factory=dict)  # survivor -> its parts
    fresh: dict[int, np.ndarray] = field(default_factory=dict)  # survivor -> ids written into the epoch file


class StateView(Protocol):
    """What a policy reads of :class:`ftmpi.cluster.ClusterState`."""

    ownership: Ownership
    weight: np.ndarray
    epoch: int
    seed: int

    def representative(self, rank: int) -> np.ndarray: ...


class Policy:
    """A handoff rule. Subclasses say which rows of a lost worker are handed (:meth:`choose`); :meth:`plan`
    deals them over the survivors."""

    name = "policy"
    biased = False

    def __init__(self, rep_weight: str = "shard") -> None:
        self.rep_weight = rep_weight

    def choose(self, rank: int, owned: np.ndarray, state: StateView) -> Choice:
        raise NotImplementedError

    def _weigh(self, ids: np.ndarray, hits: np.ndarray, owned: np.ndarray, state: StateView,
               staged: str | None = None) -> Choice:
        """``rep_weight: shard``: each hit weighs M/k; ``one``: the rows keep their weights."""
        k = int(hits.sum())
        if self.rep_weight != "shard" or k == 0:
            return Choice(ids, state.weight[ids].copy(), None, staged)
        scale = float(state.weight[owned].sum()) / k
        return Choice(ids, hits * scale, scale, staged)

    def plan(self, dead: list[int], survivors: list[int], state: StateView) -> HandoffPlan:
        """Which rows of ``dead`` go to which of ``survivors``, with their weights (``state.epoch``: the epoch
        this loss opens). Staged rows go out as contiguous slices of their standby file (random order); the
        others are dealt at random into one file for the epoch."""
        out = HandoffPlan(state.epoch, {})
        fresh: list[tuple[np.ndarray, np.ndarray]] = []
        for r in dead:
            owned = state.ownership.owned(r)
            c = self.choose(r, owned, state) if survivors else Choice(owned[:0], np.zeros(0))
            out.chosen[r] = c
            if not len(c.ids):
                continue
            if c.staged is not None:
                for s, a, b in deal_slices(len(c.ids), survivors, state.seed + state.epoch + r):
                    if b > a:
                        out.parts.setdefault(s, []).append(Part(c.staged, a, b, c.ids[a:b], c.weights[a:b]))
            else:
                fresh.append((c.ids, c.weights))
        if fresh:
            ids = np.concatenate([i for i, _ in fresh])
            w = np.concatenate([x for _, x in fresh])
            order = np.argsort(ids)
            ids, w = ids[order], w[order]
            start = 0
            for s, part in assign_handoff(ids, survivors, state.seed + state.epoch).items():
                if not len(part):
                    continue
                out.fresh[s] = part
                out.parts.setdefault(s, []).append(Part(None, start, start + len(part), part,
                                                        w[np.searchsorted(ids, part)]))
                start += len(part)
        return out


class Drop(Policy):
    """``remap: none``: a lost worker's rows are dropped."""

    name = "none"

    def choose(self, rank: int, owned: np.ndarray, state: StateView) -> Choice:
        return Choice(owned[:0], np.zeros(0))


class Full(Policy):
    """``remap: full``: every row is handed, each keeping its weight."""

    name = "full"

    def choose(self, rank: int, owned: np.ndarray, state: StateView) -> Choice:
        return Choice(owned, state.weight[owned].copy())


class Staged(Protocol):
    def get(self, rank: int) -> tuple[np.ndarray, Any] | None: ...


class StagedRandom(Policy):
    """``rep_selection: random``: rank 0's own draw in proportion to weight (:func:`random_choice`), staged
    before the loss when the standby file is complete (``staged.get(rank)``), else drawn now."""

    name = "random"

    def __init__(self, n_most_rep: float, rep_weight: str = "shard", staged: Staged | None = None) -> None:
        super().__init__(rep_weight)
        self.n_most_rep, self.staged = n_most_rep, staged

    def draw(self, rank: int, owned: np.ndarray, state: StateView, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return random_choice(state.seed, rank, epoch, owned, state.weight, self.n_most_rep)

    def choose(self, rank: int, owned: np.ndarray, state: StateView) -> Choice:
        got = self.staged.get(rank) if self.staged is not None else None
        if got is not None:
            ids, hits, path = got
            return self._weigh(ids, hits, owned, state, str(path))
        ids, hits = self.draw(rank, owned, state, state.epoch)
        return self._weigh(ids, hits, owned, state)


class Scored(Policy):
    """``loss`` / ``stratified`` (biased, see the module docstring): the worker's latest report of its
    representative rows, else ``score(rank, owned) -> ids`` (rank 0 scores the shard with the global model)."""

    biased = True

    def __init__(self, name: str, rep_weight: str = "shard",
                 score: Callable[[int, np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(rep_weight)
        self.name, self.score = name, score

    def choose(self, rank: int, owned: np.ndarray, state: StateView) -> Choice:
        rep = state.representative(rank)
        rep = rep[np.isin(rep, owned)] if len(rep) else rep
        if len(rep) == 0 and len(owned) and self.score is not None:
            rep = self.score(rank, owned)
        ids = np.asarray(rep, np.int64)
        return self._weigh(ids, np.ones(len(ids), np.int64), owned, state)


def make_policy(remap: str, rep_selection: str, n_most_rep: float, rep_weight: str, staged: Staged | None = None,
                score: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Policy:
    """The policy the config names."""
    if remap == "none":
        return Drop(rep_weight)
    if remap == "full":
        return Full(rep_weight)
    if rep_selection == "random":
        return StagedRandom(n_most_rep, rep_weight, staged)
    return Scored(rep_selection, rep_weight, score)
