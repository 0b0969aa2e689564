"""What a lost worker's rows become: the handoff policies (``executor.remap`` and
``optimizer.rep_selection``) and their weight maths. No MPI, no I/O.

One interface, :meth:`Policy.plan`: given the workers just lost and the cluster's state, which of their rows
go to which survivor, as which segments, each row with which weight. Policies:

- ``none`` (:class:`Drop`): nothing is handed; the rows are dropped.
- ``full`` (:class:`Full`): every row is handed with its own weight.
- ``representative`` + ``rep_selection: random`` (:class:`StagedRandom`): rank 0 draws ``k`` rows of each
  worker **in proportion to their weights** (systematic PPS sampling, :func:`pps_systematic`) and stages
  them in a standby file before anything fails.
- ``representative`` + ``coreset`` (:class:`Coreset`): rank 0 computes, at the loss, a per-class coreset of
  the lost worker's rows on their features (:func:`ftmpi.kernels.select_coreset`); each centre stands for
  its cluster.
- ``representative`` + ``loss`` / ``stratified`` (:class:`Scored`): the worker's own latest report of its
  highest-loss rows (or rank 0's scoring with the global model when it never reported).

Each policy gives its chosen rows *unbiased* weights: ``M/k`` per draw for ``random`` (``M`` the shard's
mass, ``k`` draws; a row drawn ``h`` times ``h M/k``), the cluster's mass for ``coreset``. Drawing in
proportion to weight was chosen over a uniform choice reweighted by ``w_i n / k`` (Horvitz-Thompson) because
it keeps three things exact rather than only in expectation: the handed rows' total mass is the dead shard's
mass ``M``; every handed row of one loss weighs the same ``M/k`` (unless one very heavy row is drawn twice),
so minibatch draws do not swing with a few heavy rows; and the per-row weights are known when the rows are
staged. The inclusion probability of row ``i`` is exactly ``k w_i / M`` (systematic sampling over a random
order), so the expected mass handed for any subset of rows (a class, the rows that came from one earlier
loss) equals that subset's mass: the estimate is unbiased through any sequence of losses. A uniform draw
with ``M/k`` per row would shrink the mass of rows that already weigh more than 1 (handed rows lost a second
time); it is kept only as ``rep_weight: shard-legacy``, the baseline of the study
(benchmarks/handoff_value.py).

``optimizer.rep_weight`` then maps the unbiased weights to the ones used (:mod:`ftmpi.core.weighting`, one function
per rule): ``shard`` keeps them, ``one`` keeps each row's own weight, ``damped``, ``sqrt`` and ``classmix``
(the default: every class keeps its share of the objective) lie in between. ``loss`` and ``stratified`` are
**biased** under every rule: their rows are the hardest ones, not a random draw, so no weight makes their
per-class mass an unbiased estimate; they get ``M/k`` per row as their base (total mass exact).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ftmpi import kernels as K
from ftmpi.core import weighting as W
from ftmpi.core.partition import Ownership, assign_handoff, deal_slices, standby_seed

__all__ = ["SCORED", "Choice", "Coreset", "Drop", "Full", "HandoffPlan", "Policy", "Schedule", "Scored",
           "StagedRandom", "expand_weights", "make_policy", "pps_systematic", "random_choice", "rep_count",
           "select_representative"]

SCORED = W.SCORED  # selections a worker makes itself by scoring its rows; rank 0 makes the others


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
                  n_most_rep: float, rep_weight: str = "shard") -> tuple[np.ndarray, np.ndarray]:
    """Rank 0's ``random`` representatives of one worker: ids in a random order (the order of its standby
    file) and their hit counts, drawn by :func:`pps_systematic` with a generator of its own for (rank,
    epoch), so that no two draws are correlated (a fixed global order would favour rows drawn before).
    Under ``rep_weight: shard-legacy`` (the study's uniform baseline) the draw ignores the weights."""
    k = rep_count(n_most_rep, len(owned))
    rng = np.random.default_rng([seed, 0x5EED, rank, epoch])
    order = rng.permutation(len(owned))
    w = np.ones(len(owned)) if rep_weight == "shard-legacy" else weight[owned[order]]
    pos, hits = pps_systematic(w, k, rng)
    return owned[order[pos]].astype(np.int64), hits


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Choice:
    """The rows of one lost worker that are handed over (in file order when staged) and their new weights."""

    ids: np.ndarray
    weights: np.ndarray
    scale: float | None = None  # the mean weight of one draw (M/k under rep_weight shard); None under one
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
    """What a policy reads of :class:`ftmpi.core.cluster.ClusterState`."""

    ownership: Ownership
    weight: np.ndarray
    epoch: int
    round: int
    seed: int

    def representative(self, rank: int) -> np.ndarray: ...

    def standby_stale(self, rank: int) -> bool: ...

    def ident_of(self, rank: int) -> int: ...


class Rows(Protocol):
    """The training rows rank 0 holds (:class:`ftmpi.storage.data.Dataset`): what ``coreset`` and ``classmix`` read."""

    X_train: np.ndarray
    y_train: np.ndarray
    n_classes: int


@dataclass(frozen=True)
class Schedule:
    """What ``rep_weight: damped`` needs to know of the training left: local iterations in all
    (``model.n_iterations``), per round (``executor.comm_period``) and rows per minibatch."""

    n_iterations: int
    comm_period: int
    batch_size: int


class Policy:
    """A handoff rule. Subclasses say which rows of a lost worker are handed and their unbiased weights
    (:meth:`choose`); the weight rule (``rep_weight``, :func:`ftmpi.core.weighting.handed_weights`) turns those into
    the rows' weights, and :meth:`plan` deals them over the survivors."""

    name = "policy"
    biased = False

    def __init__(self, rep_weight: str = "shard", data: Rows | None = None, schedule: Schedule | None = None) -> None:
        if rep_weight not in W.RULES:
            raise ValueError(f"optimizer.rep_weight: expected one of {', '.join(W.RULES)}, got {rep_weight!r}")
        self.rep_weight, self.data, self.schedule = rep_weight, data, schedule

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        raise NotImplementedError

    def _pps_base(self, ids: np.ndarray, hits: np.ndarray, owned: np.ndarray, state: StateView) -> np.ndarray:
        """``M/k`` per draw (``M`` the shard's mass, ``k`` the draws): unbiased for a draw in proportion to
        weight, and the (biased) weight of a scored choice."""
        k = int(hits.sum())
        return hits * (float(state.weight[owned].sum()) / k) if k else np.zeros(0)

    def _weigh(self, ids: np.ndarray, base: np.ndarray, hits: np.ndarray, owned: np.ndarray, state: StateView,
               survivors: list[int], staged: str | None = None) -> Choice:
        """The chosen rows' weights under ``rep_weight`` (:mod:`ftmpi.core.weighting`), from their unbiased ones."""
        rule, k = self.rep_weight, int(hits.sum())
        if k == 0:
            return Choice(ids, np.zeros(0), None, staged)
        kw: dict[str, Any] = {"mass": float(state.weight[owned].sum())}
        surv = np.concatenate([state.ownership.owned(s) for s in survivors]) if survivors else owned[:0]
        if rule == "damped":
            sch = self.schedule
            if sch is None:
                raise ValueError("rep_weight 'damped' needs the training schedule")
            left = max(0, sch.n_iterations - state.round * sch.comm_period)
            per_survivor = (float(state.weight[surv].sum()) + kw["mass"]) / max(1, len(survivors))
            kw["cap"] = W.remaining_draws(left, sch.batch_size, per_survivor)
        if rule == "classmix":
            if self.data is None:
                raise ValueError("rep_weight 'classmix' needs the training labels")
            y, nc = self.data.y_train, self.data.n_classes
            kw |= {"y": y[ids], "dead_class_mass": W.class_mass(y[owned], state.weight[owned], nc),
                   "survivor_class_mass": W.class_mass(y[surv], state.weight[surv], nc)}
        weights = W.handed_weights(rule, state.weight[ids], base, **kw)
        return Choice(ids, weights, None if rule == "one" else float(weights.sum()) / k, staged)

    def plan(self, dead: list[int], survivors: list[int], state: StateView) -> HandoffPlan:
        """Which rows of ``dead`` go to which of ``survivors``, with their weights (``state.epoch``: the epoch
        this loss opens). Staged rows go out as contiguous slices of their standby file (random order); the
        others are dealt at random into one file for the epoch."""
        out = HandoffPlan(state.epoch, {})
        fresh: list[tuple[np.ndarray, np.ndarray]] = []
        for r in dead:
            owned = state.ownership.owned(r)
            c = self.choose(r, owned, state, survivors) if survivors else Choice(owned[:0], np.zeros(0))
            out.chosen[r] = c
            if not len(c.ids):
                continue
            if c.staged is not None:
                for s, a, b in deal_slices(len(c.ids), survivors, standby_seed(state.seed, state.ident_of(r)),
                                           state.ident_of):
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

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        return Choice(owned[:0], np.zeros(0))


class Full(Policy):
    """``remap: full``: every row is handed, each keeping its weight."""

    name = "full"

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        return Choice(owned, state.weight[owned].copy())


class Staged(Protocol):
    def get(self, rank: int) -> tuple[np.ndarray, Any] | None: ...


class StagedRandom(Policy):
    """``rep_selection: random``: rank 0's own draw in proportion to weight (:func:`random_choice`), staged
    before the loss when the standby file is complete (``staged.get(rank)``) and was drawn from the rows the
    worker holds now; else drawn now from those rows. A file staged before the worker was handed rows (or
    lost some) is never handed over: it would drop the rows it gained and give their mass to the others
    (``state.standby_stale``; a file holding a row the worker no longer owns is refused as well)."""

    name = "random"

    def __init__(self, n_most_rep: float, rep_weight: str = "shard", staged: Staged | None = None,
                 data: Rows | None = None, schedule: Schedule | None = None) -> None:
        super().__init__(rep_weight, data, schedule)
        self.n_most_rep, self.staged = n_most_rep, staged

    def draw(self, rank: int, owned: np.ndarray, state: StateView, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return random_choice(state.seed, rank, epoch, owned, state.weight, self.n_most_rep, self.rep_weight)

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        got = self.staged.get(rank) if self.staged is not None else None
        if got is not None and (state.standby_stale(rank) or not np.all(np.isin(got[0], owned))):
            got = None
        ids, hits, path = got if got is not None else (*self.draw(rank, owned, state, state.epoch), None)
        base = self._pps_base(ids, hits, owned, state)
        return self._weigh(ids, base, hits, owned, state, survivors, None if path is None else str(path))


class Coreset(Policy):
    """``rep_selection: coreset``: rank 0 computes, at the loss, a per-class coreset of the rows it holds of the
    lost worker (:func:`ftmpi.kernels.select_coreset`, k-means++ seeding on projected features); each centre's
    unbiased weight is its cluster's mass, so every class's handed mass is exact. Not staged: the cost is
    paid at the loss (measured in benchmarks/results/handoff_value.md)."""

    name = "coreset"

    def __init__(self, n_most_rep: float, rep_weight: str, data: Rows, schedule: Schedule | None = None) -> None:
        super().__init__(rep_weight, data, schedule)
        self.n_most_rep = n_most_rep

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        assert self.data is not None
        k = rep_count(self.n_most_rep, len(owned))
        local, base = K.select_coreset(self.data.X_train[owned], self.data.y_train[owned], state.weight[owned], k,
                                       self.data.n_classes, state.seed * 7919 + rank * 31 + state.epoch)
        ids = owned[local].astype(np.int64)
        return self._weigh(ids, base, np.ones(len(ids), np.int64), owned, state, survivors)


class Scored(Policy):
    """``loss`` / ``stratified`` (biased, see the module docstring): the worker's latest report of its
    representative rows, else ``score(rank, owned) -> ids`` (rank 0 scores the shard with the global model)."""

    biased = True

    def __init__(self, name: str, rep_weight: str = "shard",
                 score: Callable[[int, np.ndarray], np.ndarray] | None = None, data: Rows | None = None,
                 schedule: Schedule | None = None) -> None:
        super().__init__(rep_weight, data, schedule)
        self.name, self.score = name, score

    def choose(self, rank: int, owned: np.ndarray, state: StateView, survivors: list[int]) -> Choice:
        rep = state.representative(rank)
        rep = rep[np.isin(rep, owned)] if len(rep) else rep
        if len(rep) == 0 and len(owned) and self.score is not None:
            rep = self.score(rank, owned)
        ids = np.asarray(rep, np.int64)
        hits = np.ones(len(ids), np.int64)
        return self._weigh(ids, self._pps_base(ids, hits, owned, state), hits, owned, state, survivors)


def make_policy(remap: str, rep_selection: str, n_most_rep: float, rep_weight: str, staged: Staged | None = None,
                score: Callable[[int, np.ndarray], np.ndarray] | None = None, *, data: Rows | None = None,
                schedule: Schedule | None = None) -> Policy:
    """The policy the config names (``data``: rank 0's training rows, needed by ``coreset`` and ``classmix``;
    ``schedule``: needed by ``damped``)."""
    if remap == "none":
        return Drop(rep_weight)
    if remap == "full":
        return Full(rep_weight)
    if rep_weight == "classmix" and data is None:
        raise ValueError("rep_weight 'classmix' needs rank 0's training labels")
    if rep_weight == "damped" and schedule is None:
        raise ValueError("rep_weight 'damped' needs the training schedule")
    if rep_selection == "random":
        return StagedRandom(n_most_rep, rep_weight, staged, data, schedule)
    if rep_selection == "coreset":
        if data is None:
            raise ValueError("rep_selection 'coreset' needs rank 0's training rows")
        return Coreset(n_most_rep, rep_weight, data, schedule)
    return Scored(rep_selection, rep_weight, score, data, schedule)
