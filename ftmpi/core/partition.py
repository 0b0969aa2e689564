"""Pure partition and handoff maths: who owns which training row. No MPI, no files.

Every function takes and returns global ids (row indices of the training set) as sorted ``int64``
arrays and is deterministic in its ``seed``, so every rank that calls it with the same inputs gets the
same answer. :class:`Ownership` keeps invariant 4 of the design checkable: each id is owned by exactly
one worker, or recorded as dropped, and ``coverage() = owned / total``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ftmpi.errors import ConfigError

__all__ = ["KINDS", "Ownership", "PartitionError", "assign_handoff", "class_histogram", "coverage", "deal_slices",
           "partition", "standby_seed"]

#: Partition kinds understood by :func:`partition` (the ``data.partition`` config values).
KINDS = ("iid", "label-skew", "unbalanced", "contiguous")


class PartitionError(ConfigError, ValueError):
    """The ``data.*`` partition keys ask for a split that this training set and number of workers cannot give;
    the message names the key. A ConfigError: one line and exit code 2 on every rank."""


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainders)."""
    share = weights / weights.sum() * total
    counts: np.ndarray = np.floor(share).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return counts


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Give each empty part one id taken from the currently largest part (deterministic)."""
    for w in range(len(parts)):
        if len(parts[w]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[w], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def _label_skew_dirichlet(y: np.ndarray, n_workers: int, rng: np.random.Generator, alpha: float
                          ) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
    for c in np.unique(y):
        ids = rng.permutation(np.flatnonzero(y == c))
        counts = _apportion(len(ids), rng.dirichlet(np.full(n_workers, alpha)))
        for w, piece in enumerate(np.split(ids, np.cumsum(counts)[:-1])):
            chunks[w].append(piece)
    return _fill_empty([np.concatenate(c) for c in chunks])


def _label_skew_fixed(y: np.ndarray, n_workers: int, rng: np.random.Generator, k: int) -> list[np.ndarray]:
    classes = np.unique(y)
    n_cls = len(classes)
    if k > n_cls:
        raise PartitionError(f"data.classes_per_worker: {k}, but the training set holds only {n_cls} classes "
                             f"(expected 1 to {n_cls}, or 0 to split by data.alpha)")
    if n_workers * k < n_cls:
        raise PartitionError(f"data.classes_per_worker: {n_workers} workers x {k} classes each cannot cover all "
                             f"{n_cls} classes (expected at least {-(-n_cls // n_workers)} with {n_workers} workers, "
                             "or 0 to split by data.alpha)")
    owned = [[classes[(w * k + j) % n_cls] for j in range(k)] for w in range(n_workers)]
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
    for c in classes:
        owners = [w for w in range(n_workers) if c in owned[w]]
        ids = rng.permutation(np.flatnonzero(y == c))
        for w, piece in zip(owners, np.array_split(ids, len(owners)), strict=True):
            chunks[w].append(piece)
    parts = [np.concatenate(c) for c in chunks]
    empty = [w for w, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(f"data.classes_per_worker: {len(empty)} of {n_workers} workers would get no rows: their "
                             f"{k} classes have too few rows to share with the other workers that own them "
                             "(expected fewer workers, another classes_per_worker, or 0 to split by data.alpha)")
    return parts


def partition(y: np.ndarray, n_workers: int, kind: str, seed: int, alpha: float = 0.3,
              classes_per_worker: int = 0, power: float = 1.5) -> list[np.ndarray]:
    """Split the training rows over ``n_workers`` workers.

    Kinds:
        ``iid``: a seeded shuffle, then an even split (sizes differ by at most 1).
        ``label-skew``: with ``classes_per_worker == 0``, each class's rows are divided over the workers
            in proportions drawn from Dirichlet(``alpha``) (small alpha: each worker sees few classes);
            a worker left empty receives one row from the largest worker. With ``classes_per_worker =
            k > 0``, worker ``w`` owns classes ``(w*k + j) mod C`` for ``j < k`` (round-robin, so every
            class has an owner when ``n_workers * k >= C``) and each class's rows are split evenly
            among its owners.
        ``unbalanced``: worker ``w`` gets a share proportional to ``(w + 1) ** -power`` (worker 0 the
            largest; 4 workers at power 1.5 give a ratio of about 8), of rows shuffled with classes mixed.
        ``contiguous``: file order, cut into even contiguous spans.

    Args:
        y: Training labels, one per row.
        n_workers: Number of workers (>= 1).
        kind: One of :data:`KINDS`.
        seed: Seeds every random choice.
        alpha: Dirichlet concentration for ``label-skew``.
        classes_per_worker: Exact classes per worker for ``label-skew``; 0 uses ``alpha``.
        power: Power-law exponent for ``unbalanced``.

    Returns:
        One sorted ``int64`` array of global ids per worker; each id appears in exactly one array and
        no array is empty.

    Raises:
        PartitionError: On an unknown kind, bad parameters, or if a non-empty split is impossible (the message
            names the ``data.*`` key).
        ValueError: ``n_workers < 1``.
    """
    y = np.asarray(y)
    n = len(y)
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if n < n_workers:
        raise PartitionError(f"data.partition: cannot give {n_workers} workers a row each from the {n} training rows "
                             f"(expected at most {n} workers, or more data)")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), n_workers)
    elif kind == "contiguous":
        parts = np.array_split(np.arange(n), n_workers)
    elif kind == "unbalanced":
        if power <= 0:
            raise PartitionError(f"data.power: expected a number > 0, got {power}")
        weights = np.arange(1, n_workers + 1, dtype=np.float64) ** -power
        sizes = 1 + _apportion(n - n_workers, weights)
        parts = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
    elif kind == "label-skew":
        if classes_per_worker < 0:
            raise PartitionError(f"data.classes_per_worker: expected an integer >= 0, got {classes_per_worker}")
        if classes_per_worker > 0:
            parts = _label_skew_fixed(y, n_workers, rng, classes_per_worker)
        else:
            if alpha <= 0:
                raise PartitionError(f"data.alpha: expected a number > 0, got {alpha}")
            parts = _label_skew_dirichlet(y, n_workers, rng, alpha)
    else:
        raise PartitionError(f"data.partition: unknown partition kind {kind!r}; expected one of {', '.join(KINDS)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def class_histogram(y: np.ndarray, parts: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Count each class in each part.

    Args:
        y: Labels of the whole training set.
        parts: Global ids per worker.
        n_classes: Number of classes (columns).

    Returns:
        ``(len(parts), n_classes)`` int64 counts.
    """
    y = np.asarray(y)
    out = np.zeros((len(parts), n_classes), dtype=np.int64)
    for w, ids in enumerate(parts):
        out[w] = np.bincount(y[np.asarray(ids, dtype=np.int64)], minlength=n_classes)[:n_classes]
    return out


def assign_handoff(ids: np.ndarray, survivors: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """Spread handed-over ids evenly over the surviving workers, each id given exactly once.

    The ids are shuffled with ``seed`` and dealt round-robin over the survivors in ascending rank
    order, starting at a seeded offset so the extra rows of uneven splits do not always land on the
    lowest ranks. Sizes differ by at most one; the result does not depend on the order of
    ``survivors``.

    Args:
        ids: Global ids to hand over (no duplicates).
        survivors: Ranks of the alive workers.
        seed: Seeds the shuffle (use e.g. a hash of run seed and epoch).

    Returns:
        ``{rank: sorted int64 ids}`` for every survivor (possibly empty arrays).

    Raises:
        ValueError: If there are no survivors, a survivor is repeated, or ids repeat.
    """
    ranks = sorted(int(r) for r in survivors)
    if not ranks:
        raise ValueError("no surviving workers to hand rows to")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"survivors repeat a rank: {list(survivors)}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("handoff ids contain duplicates")
    rng = np.random.default_rng(seed)
    shuffled = ids[rng.permutation(len(ids))]
    start = int(rng.integers(len(ranks)))
    order = ranks[start:] + ranks[:start]
    return {r: np.sort(shuffled[i::len(order)]) for i, r in sorted(enumerate(order), key=lambda t: t[1])}


def standby_seed(seed: int, ident: int) -> int:
    """Seed of :func:`deal_slices` for the standby file of the worker whose place is ``ident``'s (its rank, or
    for a spare the lost worker it stands for). Not the epoch: the deal of a file over the same workers is the
    same whenever it comes, so what the workers read ahead (:mod:`ftmpi.coordinator.staging`) stays valid
    across a loss a spare takes."""
    return int(seed) + int(ident)


def deal_slices(n: int, survivors: Sequence[int], seed: int,
                ident: Callable[[int], int] | None = None) -> list[tuple[int, int, int]]:
    """Deal rows ``0..n-1`` of a file as contiguous slices, one per survivor: ``[(rank, start, stop)]``.

    For a file whose rows are already in random order (a staged standby file), a contiguous slice is a
    random subset, and each survivor reads one range. Sizes differ by at most one; the survivors take their
    slices in ascending order of ``ident(rank)`` (default: the rank; a spare that took a lost worker's shard
    sorts as that worker did, so the others' slices do not move) from a seeded offset, so the larger
    slices do not always go to the lowest ranks.
    """
    ranks = sorted((int(r) for r in survivors), key=lambda r: (r if ident is None else int(ident(r)), r))
    if not ranks:
        raise ValueError("no surviving workers to hand rows to")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"survivors repeat: {list(survivors)}")
    start = int(np.random.default_rng(seed).integers(len(ranks)))
    order = ranks[start:] + ranks[:start]
    base, extra = divmod(int(n), len(order))
    out, a = [], 0
    for i, r in enumerate(order):
        b = a + base + (1 if i < extra else 0)
        out.append((r, a, b))
        a = b
    return out


def coverage(owned: int, total: int) -> float:
    """Fraction of the training set owned by some worker (1.0 for an empty set)."""
    return 1.0 if total == 0 else owned / total


class Ownership:
    """Which worker owns each of ``n_total`` training rows, and which rows were dropped.

    Invariant: an id is owned by at most one rank at a time; an id is never both owned and dropped.
    Dropped ids (e.g. the non-representative rest of a dead shard) may later be assigned again.

    Args:
        n_total: Number of training rows (ids ``0 .. n_total-1``).
    """

    def __init__(self, n_total: int) -> None:
        if n_total < 0:
            raise ValueError(f"n_total must be >= 0, got {n_total}")
        self.n_total = int(n_total)
        self._owner = np.full(self.n_total, -1, dtype=np.int32)
        self._dropped = np.zeros(self.n_total, dtype=bool)

    def _ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_total):
            raise ValueError(f"ids out of range [0, {self.n_total})")
        if ids.size > 1:  # duplicates: a mark per id, O(n_total) rather than a sort
            seen = np.zeros(self.n_total, bool)
            seen[ids] = True
            if np.count_nonzero(seen) != ids.size:
                raise ValueError("ids contain duplicates")
        return ids

    def assign(self, rank: int, ids: np.ndarray) -> None:
        """Give ``ids`` to ``rank``; raises ValueError if any of them is already owned."""
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        ids = self._ids(ids)
        taken = ids[self._owner[ids] != -1]
        if taken.size:
            raise ValueError(f"{taken.size} id(s) already owned, e.g. id {int(taken[0])} by rank "
                             f"{int(self._owner[taken[0]])}")
        self._owner[ids] = rank
        self._dropped[ids] = False

    def drop(self, ids: np.ndarray) -> None:
        """Record unowned ``ids`` as dropped; raises ValueError if any is still owned (release it first)."""
        ids = self._ids(ids)
        if np.any(self._owner[ids] != -1):
            raise ValueError("cannot drop ids that are still owned; release them first")
        self._dropped[ids] = True

    def release(self, rank: int) -> np.ndarray:
        """Remove every id of ``rank`` (a dead worker) and return them, sorted."""
        ids = np.flatnonzero(self._owner == rank).astype(np.int64)
        self._owner[ids] = -1
        return ids

    def release_ids(self, rank: int, ids: np.ndarray) -> np.ndarray:
        """Remove those of ``ids`` that ``rank`` owns and return them, sorted (e.g. rows a survivor could not
        read)."""
        ids = self._ids(ids)
        mine = np.sort(ids[self._owner[ids] == rank])
        self._owner[mine] = -1
        return mine

    def owned(self, rank: int) -> np.ndarray:
        """Sorted ids owned by ``rank``."""
        return np.flatnonzero(self._owner == rank).astype(np.int64)

    def dropped(self) -> np.ndarray:
        """Sorted ids recorded as dropped."""
        return np.flatnonzero(self._dropped).astype(np.int64)

    def unaccounted(self) -> np.ndarray:
        """Sorted ids neither owned nor dropped (empty when the bookkeeping is complete)."""
        return np.flatnonzero((self._owner == -1) & ~self._dropped).astype(np.int64)

    def ranks(self) -> list[int]:
        """Ranks that own at least one id, ascending."""
        return [int(r) for r in np.unique(self._owner) if r >= 0]

    def counts(self) -> dict[int, int]:
        """Number of ids per owning rank."""
        ranks, n = np.unique(self._owner[self._owner >= 0], return_counts=True)
        return {int(r): int(c) for r, c in zip(ranks, n, strict=True)}

    def owner_array(self) -> np.ndarray:
        """A copy of the owner of each id (``int32``; -1 = dropped or unowned)."""
        return self._owner.copy()

    def coverage(self) -> float:
        """Owned ids / total ids."""
        return coverage(int(np.count_nonzero(self._owner >= 0)), self.n_total)

    @classmethod
    def from_arrays(cls, owner: np.ndarray, dropped: np.ndarray | None = None) -> Ownership:
        """Rebuild from :meth:`owner_array` and :meth:`dropped` (e.g. as stored in a checkpoint)."""
        owner = np.asarray(owner)
        self = cls(len(owner))
        self._owner[:] = owner.astype(np.int32)
        if np.any(self._owner < -1):
            raise ValueError("owner array holds values below -1")
        if dropped is not None:
            self.drop(dropped)
        return self
