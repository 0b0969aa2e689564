"""Rank 0's standby copies of every worker's representative rows, and the read-ahead plans. No MPI.

Under ``remap: representative`` with ``rep_selection: random`` rank 0 chooses each worker's representative
rows itself (the worker has nothing to report) and stages them, in a background thread, in a standby file of
their own (``shards/standby-e0001-w0002.h5``, rows in random order) before anything fails. When the worker is
lost, each survivor is handed one contiguous slice of that file (:func:`ftmpi.core.partition.deal_slices`), so the
loss writes nothing. Each worker is also told, ahead of time, which slice of every other worker's file it
would be handed if that worker alone were lost next (a *plan*); it reads those slices after its reply, and a
loss is then served from memory.

A file holds a draw of the rows the worker had when it was staged. A worker whose rows change (it is handed
a lost worker's rows) is staged again once it trains on them (the :class:`~ftmpi.core.events.Stage` effect);
until then its older file is not handed over (:meth:`ftmpi.core.cluster.ClusterState.standby_stale`): its
loss draws from the rows it holds at the loss and writes them to that epoch's handoff file. A hot spare that
takes a lost worker's whole shard takes its standby file too (:meth:`Standby.transfer`: the same rows, the same
weights), and deals sort it where that worker stood (``ident``, seeds without the epoch), so after such a
loss nothing is staged again and no survivor reads anything new ahead.

Rank 0's :class:`ftmpi.core.cluster.ClusterState` owns membership, ownership and weights and passes them in; the
draw itself is :func:`ftmpi.core.handoff.random_choice`; this module owns the files and the plans.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftmpi.config import Config
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.core.handoff import random_choice
from ftmpi.core.partition import Ownership, deal_slices, standby_seed
from ftmpi.storage.data import Dataset
from ftmpi.storage.shards import ensure_shard, stale_standbys, standby_path
from ftmpi.storage.term import Fence

Plan = list[tuple[str, int, int]]  # (standby file, start, stop) slices


class Standby:
    """Staged representative rows of every worker, and what each worker should read ahead.

    Args:
        cfg: The run's config (selection, ``n_most_rep``, seed).
        run_dir: The run folder (standby files go to ``run_dir/shards``).
        writer: The background writer that writes the files.
    """

    def __init__(self, cfg: Config, run_dir: Path, writer: BackgroundWriter) -> None:
        self.cfg, self.run_dir, self.writer = cfg, Path(run_dir), writer
        # rank -> (ids in file order, hit counts, file); published by the writer thread once the file is complete
        self.staged: dict[int, tuple[np.ndarray, np.ndarray, Path]] = {}
        self._gen: dict[int, int] = {}  # bumped whenever a worker's rows change: older files are stale
        self._plan_key: tuple | None = None  # what the last plans were made from
        self._hinted: dict[int, Plan] = {}  # what each worker was last told to read ahead
        self._heir: dict[int, int] = {}  # lost worker -> the spare its standby file went to (see transfer)
        # standby files hold ids only (every rank reads the rows from the prepared copy), else rows in the
        # source's own type; set by the coordinator once it knows where the workers are
        self.by_ref = False
        # the coordinator's term (names its files) and its fence (checked before each write and delete): set by
        # the coordinator once it has claimed its term
        self.term = 1
        self.fence: Fence | None = None

    @property
    def active(self) -> bool:
        """Whether rank 0 chooses and stages the representative rows (remap representative, random rule)."""
        return self.cfg.executor.remap == "representative" and self.cfg.optimizer.rep_selection == "random"

    def transfer(self, lost: int, spare: int) -> None:
        """A spare took worker ``lost``'s whole shard (the same rows and weights): the lost worker's standby
        file, or the one still being written for it, is a draw of the spare's rows too, and becomes the
        spare's (nothing staged again, and the files the others read ahead stay the ones they hold)."""
        self._gen[spare] = self._gen.get(lost, 0)
        self._heir[lost] = spare
        got = self.staged.pop(lost, None)
        if got is not None:
            self.staged[spare] = got

    def choice(self, rank: int, ownership: Ownership, weight: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``rep_selection: random``, chosen by rank 0: rows of the worker drawn in proportion to their weight
        (:func:`ftmpi.core.handoff.random_choice`), in random order, with their hit counts."""
        return random_choice(self.cfg.model.seed, rank, epoch, ownership.owned(rank), weight,
                             self.cfg.optimizer.n_most_rep, self.cfg.optimizer.rep_weight)

    def get(self, rank: int) -> tuple[np.ndarray, np.ndarray, Path] | None:
        """The worker's published standby rows, their hit counts and file, or None (none yet, or being
        rewritten)."""
        return self.staged.get(rank)

    def stage(self, ranks: list[int], epoch: int, ownership: Ownership, weight: np.ndarray,
              data: Dataset) -> dict[int, np.ndarray]:
        """Choose each worker's representative rows and have them written to a standby file in the
        background; returns the choices (rank -> ids)."""
        chosen = {}
        for r in ranks:
            ids, hits = self.choice(r, ownership, weight, epoch)
            chosen[r] = ids
            self.unstage(r)  # until the new file is complete, a failure takes the slow path
            if len(ids):
                self.writer.submit("stage", self._write, r, ids, hits, standby_path(self.run_dir, epoch, r, self.term),
                                   self._gen[r], data)
        return chosen

    def unstage(self, rank: int) -> None:
        """The worker's rows changed: its staged file (and any still being written) no longer holds its choice."""
        self._gen[rank] = self._gen.get(rank, 0) + 1
        self.staged.pop(rank, None)

    def _write(self, rank: int, ids: np.ndarray, hits: np.ndarray, path: Path, gen: int, data: Dataset) -> None:
        """(Background thread.) Write a standby file, drop the worker's older ones (only a dead worker's
        standby file is ever read, and a live worker's is superseded), then publish it unless the worker's
        rows changed meanwhile."""
        if self.fence is not None:  # a deposed coordinator writes and deletes nothing (raises Deposed)
            self.fence.check(f"stage {path.name}")
        ensure_shard(path, data.X_train, data.y_train, ids,
                     {"n_classes": data.n_classes, "dataset": data.name, "rank": rank, "staged": "representative",
                      "term": self.term},
                     by_ref=self.by_ref)
        if self.fence is not None:
            self.fence.check(f"delete the older standby files of worker {rank}")
        for old in stale_standbys(path):
            old.unlink(missing_ok=True)
        while rank in self._heir:  # written for a worker whose shard a spare took meanwhile
            rank = self._heir[rank]
        if self._gen.get(rank) == gen:
            self.staged[rank] = (ids, hits, path)

    def plans(self, epoch: int, alive: list[int], ident: Callable[[int], int] = int) -> dict[int, Plan] | None:
        """For each alive worker, the slices of the other workers' standby files it would be handed if that
        worker alone were lost next (the survivors and seed of the real deal, :func:`deal_slices` in
        :meth:`ftmpi.core.handoff.Policy.plan`; ``ident``: whose place each rank holds); None when nothing
        changed since the last call. Each worker holds about one representative set in all, whatever the
        number of workers."""
        staged = dict(self.staged)  # one copy (a C-level, atomic one): the writer thread publishes into it
        files = tuple(sorted((d, str(p)) for d, (_, _, p) in staged.items()))
        key = (epoch, tuple((r, ident(r)) for r in alive), files)
        if key == self._plan_key:
            return None
        self._plan_key = key
        plans: dict[int, Plan] = {r: [] for r in alive}
        # in the order of whose place each holds: a spare's file comes where the lost worker's came
        for d, (ids, _, path) in sorted(staged.items(), key=lambda t: (ident(t[0]), t[0])):
            others = [r for r in alive if r != d]
            if d not in alive or not others:
                continue
            for r, a, b in deal_slices(len(ids), others, standby_seed(self.cfg.model.seed, ident(d)), ident):
                if b > a:
                    plans[r].append((str(path), a, b))
        return plans

    def news_for(self, rank: int, plans: dict[int, Plan] | None) -> Plan | None:
        """The plan to send ``rank`` with its next round message, or None when it already has it."""
        if plans is None or plans.get(rank, []) == self._hinted.get(rank, []):
            return None
        self._hinted[rank] = plans.get(rank, [])
        return self._hinted[rank]
