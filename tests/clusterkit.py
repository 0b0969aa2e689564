"""A small rank 0 without MPI for in-process tests: a :class:`ClusterState` with the configured policy, the
real standby staging, and the driver's own handoff-file write; synthetic data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftmpi.config import Config, load_config
from ftmpi.coordinator.files import write_handoff_file
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.coordinator.staging import Standby
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Adopt, Chosen, ClusterState, Heard, Lost, SendHandoff, Stage, WriteHandoff
from ftmpi.core.handoff import Schedule, make_policy, rep_count, select_representative
from ftmpi.core.partition import partition
from ftmpi.model.models import Model
from ftmpi.storage.data import Dataset
from ftmpi.storage.shards import handoff_path


def labels(n: int = 4000, k: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % k).astype(np.int32)


@dataclass
class Kit:
    state: ClusterState
    data: Dataset
    standby: Standby
    writer: BackgroundWriter
    cfg: Config
    run_dir: Path
    clock: float = 1000.0

    def carry_out(self, effects: list) -> dict[int, P.Handoff]:
        """Do what the driver does with the file effects; returns the handoff messages by receiver."""
        sent = {}
        for e in effects:
            if isinstance(e, WriteHandoff):
                write_handoff_file(e, self.data)
            elif isinstance(e, SendHandoff):
                sent[e.rank] = e.msg
            elif isinstance(e, Stage):
                self.stage(e.ranks)
            elif isinstance(e, Adopt) and self.standby.active and not self.state.standby_stale(e.rank):
                self.standby.transfer(e.lost, e.rank)  # as the driver does (Coordinator._on_adopt)
        return sent

    def apply(self, events: list) -> list:
        self.clock += 1.0
        return self.state.apply(events, self.clock)

    def lose(self, *ranks: int, how: str = "ulfm") -> tuple[dict[int, P.Handoff], list]:
        effects = self.apply([Lost(r, how) for r in ranks])
        return self.carry_out(effects), effects

    def stage(self, ranks: list[int]) -> None:
        s = self.state
        if self.standby.active:
            chosen = self.standby.stage(ranks, s.epoch, s.ownership, s.weight, self.data)
            self.apply([Chosen(r, ids) for r, ids in chosen.items()])
            self.writer.wait()

    def reply(self, rank: int, **kw) -> P.Reply:
        s = self.state
        return P.Reply(s.epoch, s.round, rank, np.zeros(1), 0.5, float(s.weight[s.ownership.owned(rank)].sum()),
                       len(s.ownership.owned(rank)), kw.pop("rep", np.zeros(0, np.int64)), **kw)

    def round_with_replies(self, **kw) -> list:
        """One round in which every alive worker replies (with ``kw``, e.g. ``ready``); returns every effect."""
        s = self.state
        s.begin_round()
        effects = self.apply([Heard(r, self.reply(r, **{k: dict(v) for k, v in kw.items()})) for r in s.in_round()])
        self.clock += 1.0
        effects += s.end_round(self.clock)
        self.carry_out(effects)
        return effects


def make_cluster(tmp_path: Path, remap: str, n_most_rep: float = 10, selection: str = "loss", weight: str = "one",
                 sub: str = "", n: int = 400, n_classes: int = 4, workers: tuple[int, ...] = (1, 2, 3, 4),
                 seed: int = 0, partition_kind: str = "label-skew", spares: tuple[int, ...] = ()) -> Kit:
    run_dir = Path(tmp_path) / sub if sub else Path(tmp_path)
    cfg = load_config(None, [f"executor.remap={remap}", f"optimizer.n_most_rep={n_most_rep}",
                             f"optimizer.rep_selection={selection}", f"data.partition={partition_kind}",
                             f"optimizer.rep_weight={weight}", f"model.seed={seed}"], env={})
    y = labels(n, n_classes)
    X = np.random.default_rng(0).standard_normal((len(y), 6)).astype(np.float32)
    data = Dataset("synthetic", X, y, X[:20], y[:20], n_classes, tuple("abcdefghij"[:n_classes]), "test")
    writer = BackgroundWriter()
    standby = Standby(cfg, run_dir, writer)
    model = Model.build("logreg", (), 6, n_classes)
    W = model.init(0)

    def score(rank: int, owned: np.ndarray) -> np.ndarray:
        loc = select_representative(selection, model.sample_loss(W, X[owned], y[owned]), y[owned],
                                    rep_count(n_most_rep, len(owned)), n_classes, seed + rank)
        return owned[loc]

    policy = make_policy(remap, selection, n_most_rep, weight, standby if standby.active else None, score, data=data,
                         schedule=Schedule(cfg.model.n_iterations, cfg.executor.comm_period, cfg.model.batch_size))
    state = ClusterState(len(y), list(workers), policy, seed, 0.0, lambda e: str(handoff_path(run_dir, e)),
                         spares=list(spares))
    state.apply([Heard(r, P.Hello(r, "h", 100 + r, 1)) for r in spares], 0.0)  # the spares said hello
    state.deal(dict(zip(workers, partition(y, len(workers), partition_kind, seed=seed), strict=True)))
    return Kit(state, data, standby, writer, cfg, run_dir)
