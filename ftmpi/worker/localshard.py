"""A worker's rows in memory: its shard, grown in place when rows are handed over, and the weighted
minibatches drawn from it. No MPI, no I/O (the worker reads the files).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ftmpi.core.handoff import expand_weights
from ftmpi.storage.membuf import populated
from ftmpi.storage.rows import RowsOf, features
from ftmpi.storage.shards import Shard


class LocalShard:
    """Rows ``X``, labels ``y``, global ``ids`` and weights ``w`` (None: every row weighs 1).

    ``X`` holds the rows as they were read: float32 features (``scale`` None), or an image dataset's uint8
    pixels (``scale`` the float32 factor that makes them features). Use :meth:`rows` for features: it converts
    a batch at a time, so a worker holds a quarter of the bytes and its minibatch gathers move a quarter of the
    memory (a shard does not fit in cache when several ranks share it), and the features are exactly the
    float32 ones.

    ``X`` is a view of a buffer with room for handed rows (half a shard more, a third of a shard per survivor
    under ``remap: full`` with 4 workers), so that rows handed over do not copy the whole shard.
    """

    def __init__(self, shard: Shard | None = None) -> None:
        if shard is None:
            shard = Shard(np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64))
        n, d = shard.X.shape
        self.X: np.ndarray | RowsOf
        if isinstance(shard.X, RowsOf):  # a spare's shard held by reference: read from the page cache
            self._buf: np.ndarray | None = None  # a buffer when rows are handed over (see _own)
            self.X = shard.X
        elif shard.buf is not None:  # read_shard(room=...) already put the rows in a buffer with room
            self._buf = shard.buf
            self.X = self._buf[:n]
        else:
            self._buf = populated((n + max(n // 2, 1024), d), shard.X.dtype, ready=n)
            self._buf[:n] = shard.X
            self.X = self._buf[:n]
        self.scale: float | None = shard.scale
        self.y, self.ids = shard.y, shard.ids
        self.w: np.ndarray | None = shard.w

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def mass(self) -> float:
        """How many training rows this shard stands for (its row count when every weight is 1)."""
        return float(len(self.y)) if self.w is None else float(self.w.sum())

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        """The features of rows ``idx`` (indices or a slice) as float32 (a view for a slice of float32 rows)."""
        return features(self.X[idx], self.scale)

    def append(self, s: Shard, weight: np.ndarray | float | None = None) -> int:
        """Append rows, weighing ``weight`` (one per row, or one for all; else the rows' own ``w``, else 1);
        returns how many were appended. A row whose global id the shard holds already (handed again, e.g. by
        a coordinator that took over from a replica older than the first handoff) is not appended twice: it
        takes the weight it is handed with now. Rows of another type or scale than the shard's (not the case
        when both come from the same dataset) turn the shard into float32 features."""
        s, weight = self._reweigh_held(s, weight)
        n, m = len(self.y), len(s.ids)
        if not m:
            return 0
        buf = self._own()
        X = s.X
        if n == 0 and (X.dtype != buf.dtype or s.scale != self.scale or X.shape[1:] != buf.shape[1:]):
            buf = populated((m + max(m // 2, 1024), X.shape[1]), X.dtype, ready=m)  # take the rows' type
            self.scale = s.scale
        elif X.dtype != buf.dtype or s.scale != self.scale:
            grown = populated(buf.shape, np.float32, ready=n)
            grown[:n] = self.rows(slice(0, n))
            buf, self.scale = grown, None
            X = features(X, s.scale)
        if n + m > len(buf):  # out of room: grow geometrically (one copy)
            grown = populated((max(n + m, 2 * len(buf)), X.shape[1]), buf.dtype, ready=n + m)
            grown[:n] = buf[:n]
            buf = grown
        buf[n:n + m] = X
        self._buf, self.X = buf, buf[:n + m]
        self.y = np.concatenate([self.y, s.y])
        self.ids = np.concatenate([self.ids, s.ids])
        w = np.broadcast_to(np.asarray(weight, np.float64), (m,)) if weight is not None else s.w
        if w is not None and np.any(w != 1.0):
            self.w = np.concatenate([np.ones(n) if self.w is None else self.w, w])
        elif self.w is not None:
            self.w = np.concatenate([self.w, np.ones(m)])
        return m

    def _own(self) -> np.ndarray:
        """The buffer the rows are in, with room after them; rows held by reference are copied into one first
        (rows handed to a spare that took a shard; a copy then, not while it waited)."""
        if self._buf is None:
            assert isinstance(self.X, RowsOf)
            n, d = self.X.shape
            self._buf = populated((n + max(n // 2, 1024), d), self.X.dtype, ready=n)
            self.X = self.X.gather(self._buf[:n])
        return self._buf

    def _reweigh_held(self, s: Shard, weight: np.ndarray | float | None) -> tuple[Shard, np.ndarray | None]:
        """Of rows ``s`` weighing ``weight`` (as :meth:`append` takes them): the shard's own rows among them take
        their new weight; returns the other rows and their weights (None: their own ``w``, else 1)."""
        m = len(s.ids)
        w = np.broadcast_to(np.asarray(weight, np.float64), (m,)) if weight is not None else s.w
        held = np.isin(s.ids, self.ids) if m and len(self.ids) else np.zeros(m, bool)
        if not held.any():
            return s, w
        new_w = np.ones(int(held.sum())) if w is None else np.asarray(w, np.float64)[held]
        if self.w is not None or np.any(new_w != 1.0):
            order = np.argsort(self.ids, kind="stable")
            at = order[np.searchsorted(self.ids, s.ids[held], sorter=order)]
            self.w = np.ones(len(self.y)) if self.w is None else np.array(self.w, np.float64)
            self.w[at] = new_w
        keep = ~held
        rest = dataclasses.replace(s, X=s.X[keep], y=s.y[keep], ids=s.ids[keep], buf=None,
                                   w=None if s.w is None else s.w[keep])
        return rest, None if w is None else np.asarray(w, np.float64)[keep]

    def batches(self, seed: list[int], rnd: int, iters: int, bs: int, shuffle: bool) -> list[np.ndarray]:
        """``iters`` minibatches of ``bs`` row indices: consecutive slices of a permutation seeded by ``seed``
        (so that a resumed run draws exactly what it would have drawn), or of the rows in order from a
        ``rnd``-dependent start. Rows that weigh ``w`` enter the permutation ``w`` times (the fraction by a
        seeded coin): a pass draws each row as often as the rows it stands for would have been drawn."""
        if len(self.y) == 0 or bs <= 0:
            return []
        rng = np.random.default_rng(seed)
        base = expand_weights(self.w, rng) if self.w is not None else np.arange(len(self.y))
        n = len(base)
        need = iters * bs
        if shuffle:
            order = np.concatenate([base[rng.permutation(n)] for _ in range(-(-need // n))])
        else:
            order = np.tile(np.roll(base, -((rnd * need) % n)), -(-need // n))
        return [np.sort(order[i * bs:(i + 1) * bs]) for i in range(iters)]
