"""The handoff's bookkeeping and selection, in-process (no MPI): what ``remap`` keeps and drops, the skew the
partitions promise, and the representative-point rules on awkward shards.

Rank 0's recovery is exercised for real (:class:`ftmpi.core.cluster.ClusterState` and its policy on a small
synthetic dataset, the handoff files written by the driver's write function), next to the same accounting
written with the pure pieces (:class:`Ownership` and :func:`assign_handoff`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftmpi import kernels as K
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Stage
from ftmpi.core.handoff import rep_count, select_representative
from ftmpi.core.partition import Ownership, assign_handoff, class_histogram, partition
from ftmpi.observe.plot import held_classes
from ftmpi.storage.shards import handoff_slices, read_shard, write_handoff
from tests.clusterkit import labels, make_cluster


def _recover(own: Ownership, dead: int, give: np.ndarray, survivors: list[int], seed: int) -> tuple[int, int]:
    """The coordinator's recovery step with the pure pieces: release, keep ``give``, drop the rest, deal."""
    owned = own.release(dead)
    rest = np.setdiff1d(owned, give, assume_unique=True)
    if len(rest):
        own.drop(rest)
    if len(give):
        for r, part in assign_handoff(np.sort(give), survivors, seed).items():
            own.assign(r, part)
    return len(give), len(rest)


# ---------------------------------------------------------------------------------- accounting, pure
@pytest.mark.parametrize("kind", ["iid", "label-skew", "unbalanced"])
@pytest.mark.parametrize("remap", ["none", "representative", "full"])
def test_coverage_drops_by_exactly_the_dropped_rows(kind, remap):
    y = labels()
    n = len(y)
    own = Ownership(n)
    ranks = [1, 2, 3, 4]
    for r, ids in zip(ranks, partition(y, 4, kind, seed=3), strict=True):
        own.assign(r, ids)
    before = {r: own.owned(r) for r in ranks}
    dead = before[2]
    give = {"none": dead[:0], "full": dead, "representative": dead[::7]}[remap]
    handed, dropped = _recover(own, 2, give, [1, 3, 4], seed=5)
    assert handed + dropped == len(dead)
    assert own.coverage() == pytest.approx(1 - dropped / n, abs=0)  # exact: (n - dropped) / n
    assert int(np.count_nonzero(own.owner_array() >= 0)) == n - dropped
    assert np.array_equal(own.dropped(), np.setdiff1d(dead, give))
    assert len(own.unaccounted()) == 0, "every row is owned or recorded as dropped"
    assert 2 not in own.ranks()
    for r in (1, 3, 4):  # survivors keep what they had and gain only handed rows
        assert np.all(np.isin(before[r], own.owned(r)))
        assert np.all(np.isin(np.setdiff1d(own.owned(r), before[r]), give))
    if remap == "none":
        assert dropped == len(dead) and all(np.array_equal(own.owned(r), before[r]) for r in (1, 3, 4))


def test_two_failures_in_a_row_drop_both_shards_under_none():
    y = labels(1000)
    own = Ownership(len(y))
    for r, ids in zip([1, 2, 3, 4], partition(y, 4, "label-skew", seed=0), strict=True):
        own.assign(r, ids)
    sizes = own.counts()
    _recover(own, 2, np.zeros(0, np.int64), [1, 3, 4], seed=1)
    _recover(own, 4, np.zeros(0, np.int64), [1, 3], seed=2)
    assert own.coverage() == (sizes[1] + sizes[3]) / len(y)
    assert len(own.dropped()) == sizes[2] + sizes[4] and len(own.unaccounted()) == 0


# ------------------------------------------------------------------------- accounting, rank 0's state
@pytest.fixture
def cluster(tmp_path):
    """Rank 0's recovery for real: a :class:`ClusterState` with the configured policy (and, for ``random``,
    the real standby staging), on a small synthetic dataset; handoff files are written by the driver's own
    write function."""
    return lambda *a, **k: make_cluster(tmp_path, *a, **k)


def test_recovery_accounting_none_representative_full(cluster):
    for remap in ("none", "representative", "full"):
        c = cluster(remap, sub=remap)
        s = c.state
        n = s.ownership.n_total
        dead = s.ownership.owned(2)
        if remap == "representative":
            s.members[2].rep = dead[[5, 0, 9, 3]]  # the dead worker's last report (any order)
        msgs, _ = c.lose(2)
        [f] = s.failures
        want = {"none": 0, "representative": 4, "full": len(dead)}[remap]
        assert (f.rows_handed, f.rows_dropped) == (want, len(dead) - want)
        assert s.ownership.coverage() == (n - f.rows_dropped) / n
        assert len(s.ownership.dropped()) == f.rows_dropped and len(s.ownership.unaccounted()) == 0
        assert s.rows_handed == want and s.epoch == 1
        written = sorted(p.name for p in (c.run_dir / "shards").glob("handoff-*.h5"))
        # one file for the epoch; each receiver is sent its slice at once, and the slices are the rows it owns
        assert written == ([] if want == 0 else ["handoff-e0001.h5"])
        assert all(m.epoch == 1 and len(m.segments) == 1 for m in msgs.values())
        assert all(Path(m.segments[0].path).name == "handoff-e0001.h5" for m in msgs.values())
        assert f.epoch == 1 and s._receivers[1] == set(msgs)
        if want:
            rows = {r: (m.segments[0].start, m.segments[0].stop) for r, m in msgs.items()}
            assert all(np.all(m.segments[0].weights == 1.0) for m in msgs.values())
            assert handoff_slices(c.run_dir / "shards" / written[0]) == rows
            for r, sl in rows.items():
                taken = read_shard(c.run_dir / "shards" / written[0], sl).ids
                assert np.array_equal(np.sort(taken), np.intersect1d(taken, s.ownership.owned(r)))
            assert sum(b - a for a, b in rows.values()) == want


def test_random_representatives_are_staged_before_the_failure_and_handed_as_slices(cluster):
    """rep_selection random: rank 0 writes each worker's representative rows to a standby file in the
    background; a loss then writes nothing: each survivor is sent a slice of the dead worker's file, the
    slices are exactly its representative rows, and the survivors' own choices are staged again."""
    c = cluster("representative", n_most_rep=0.1, selection="random")
    s = c.state
    c.stage(s.alive)
    shards = c.run_dir / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [f"standby-e0000-w{r:04d}.h5" for r in (1, 2, 3, 4)]
    dead = s.ownership.owned(2)
    staged = read_shard(shards / "standby-e0000-w0002.h5")
    assert len(staged) == rep_count(0.1, len(dead)) and set(staged.ids) <= set(dead)
    assert np.array_equal(staged.X, c.data.X_train[staged.ids]) and np.array_equal(staged.y, c.data.y_train[staged.ids])
    assert np.array_equal(c.standby.choice(2, s.ownership, s.weight, 0)[0], staged.ids), "rank 0's choice, in order"
    msgs, _ = c.lose(2)
    [f] = s.failures
    assert not list(shards.glob("handoff-*.h5")), "nothing was written at the failure"
    assert sorted(msgs) == [1, 3, 4]
    got = []
    for r, m in msgs.items():
        [seg] = m.segments
        assert np.all(seg.weights == 1.0)  # rep_weight: one
        assert Path(seg.path).name == "standby-e0000-w0002.h5"
        ids = read_shard(seg.path, (seg.start, seg.stop)).ids
        assert set(ids) <= set(s.ownership.owned(r))
        got.append(ids)
    assert np.array_equal(np.sort(np.concatenate(got)), np.sort(staged.ids))
    assert max(map(len, got)) - min(map(len, got)) <= 1
    assert f.rows_handed == len(staged) and f.rows_dropped == len(dead) - len(staged)
    assert s._restage == {1, 3, 4} and not c.writer.pending, "nothing is written while the survivors load"
    effects = c.round_with_replies(ready={1: 0.0})  # the survivors report training on the rows
    assert [e for e in effects if isinstance(e, Stage)] == [Stage([1, 3, 4])]
    c.writer.wait()  # the survivors' grown shards were staged again, in the new epoch; worker 2's file stays
    assert sorted(p.name for p in shards.iterdir()) == ["standby-e0000-w0002.h5"] + [
        f"standby-e0001-w{r:04d}.h5" for r in (1, 3, 4)]
    for r in (1, 3, 4):
        assert len(c.standby.staged[r][0]) == rep_count(0.1, len(s.ownership.owned(r)))
    assert s.failures[0].recovered_round == 0


def test_survivors_read_ahead_exactly_the_slices_a_loss_hands_them(cluster):
    """Each worker is told (once, in a round message) which slice of every other worker's standby file it
    would be handed if that worker were lost next; a loss then hands each survivor exactly those slices."""
    c = cluster("representative", n_most_rep=0.1, selection="random")
    s = c.state
    c.stage(s.alive)
    plans = c.standby.plans(s.epoch, s.alive)
    assert c.standby.plans(s.epoch, s.alive) is None, "nothing changed: nothing to tell"
    for r, plan in plans.items():
        assert sorted(Path(p).name for p, _, _ in plan) == [f"standby-e0000-w{d:04d}.h5" for d in (1, 2, 3, 4)
                                                             if d != r]
    handed, _ = c.lose(2)
    assert sorted(handed) == [1, 3, 4]
    for dest, m in handed.items():
        [seg] = m.segments
        assert (seg.path, seg.start, seg.stop) in plans[dest]
    # a new membership: new plans, for the survivors only, none naming the dead worker's file
    new = c.standby.plans(s.epoch, s.alive)
    assert sorted(new) == [1, 3, 4] and not any("w0002" in p for plan in new.values() for p, _, _ in plan)


@pytest.mark.parametrize("selection", ["random", "loss"])  # staged (slices of a standby file) or written at the loss
def test_rep_weight_shard_hands_over_the_dead_shards_whole_weight(cluster, selection):
    """``rep_weight: shard``: the handed rows weigh the dead shard's mass in all, so the survivors' rows weigh
    exactly what every alive worker's did before the loss; the weights reach the survivors with the rows, and
    a second loss hands over the weight the dead survivor had gained."""
    c = cluster("representative", n_most_rep=0.1, selection=selection, weight="shard")
    s = c.state
    n = s.ownership.n_total
    if selection == "random":
        c.stage(s.alive)
    else:
        for r in s.alive:
            s.members[r].rep = s.ownership.owned(r)[:7]
    dead = s.ownership.owned(2)
    msgs, _ = c.lose(2)
    f = s.failures[0]
    handed = np.intersect1d(np.concatenate([s.ownership.owned(r) for r in (1, 3, 4)]), dead)
    assert len(handed) == f.rows_handed and f.row_weight == pytest.approx(len(dead) / f.rows_handed)
    assert np.allclose(s.weight[handed], len(dead) / f.rows_handed)
    alive_mass = sum(s.weight[s.ownership.owned(r)].sum() for r in (1, 3, 4))
    assert alive_mass == pytest.approx(n), "the dead shard's weight is carried over, not lost"
    got_w, got_ids = [], []  # what the survivors are told: a weight per row of each segment
    for m in msgs.values():
        for seg in m.segments:
            got_ids.append(read_shard(seg.path, (seg.start, seg.stop)).ids)
            got_w.append(seg.weights)
    assert np.array_equal(np.sort(np.concatenate(got_ids)), np.sort(handed))
    assert np.allclose(np.concatenate(got_w), len(dead) / f.rows_handed)
    # a second loss: the survivor's heavier rows count in the weight it hands over
    before = s.weight[s.ownership.owned(3)].sum()
    if selection != "random":
        s.members[3].rep = s.ownership.owned(3)[:5]
    c.lose(3)
    f3 = s.failures[1]
    assert f3.row_weight == pytest.approx(before / f3.rows_handed)
    assert sum(s.weight[s.ownership.owned(r)].sum() for r in (1, 4)) == pytest.approx(n)


def test_rep_weight_one_leaves_every_row_at_one(cluster):
    c = cluster("representative", n_most_rep=0.1, selection="loss")
    s = c.state
    s.members[2].rep = s.ownership.owned(2)[:7]
    c.lose(2)
    assert s.failures[0].row_weight is None and np.all(s.weight == 1.0)
    assert read_shard(c.run_dir / "shards" / "handoff-e0001.h5").w is None


def test_expand_weights_draws_rows_in_proportion_to_their_weight():
    from ftmpi.core.handoff import expand_weights

    w = np.array([1.0, 3.0, 2.5, 1.0, 0.25])
    rng = np.random.default_rng(0)
    counts = np.zeros(len(w))
    for _ in range(4000):
        counts += np.bincount(expand_weights(w, rng), minlength=len(w))
    assert np.allclose(counts / 4000, w, atol=0.03)
    assert np.array_equal(expand_weights(np.array([2.0, 1.0]), rng), [0, 0, 1]), "whole weights: exact"


def test_rank0_scores_the_shard_itself_when_the_worker_never_reported(cluster):
    c = cluster("representative", n_most_rep=0.1, selection="loss")
    s = c.state
    dead = s.ownership.owned(2)
    c.lose(2, how="never-joined")
    f = s.failures[0]
    assert f.rows_handed == rep_count(0.1, len(dead)) and f.rows_dropped == len(dead) - f.rows_handed
    assert s.ownership.coverage() == (s.ownership.n_total - f.rows_dropped) / s.ownership.n_total


class _WorkerChannel:
    """A worker's view of rank 0: queued control messages (one handed out per nonblocking probe, after
    ``quiet`` empty probes) and a record of what the worker sent."""

    rank = 3

    def __init__(self, queued: list, quiet: int) -> None:
        self.queued, self.quiet, self.sent, self.probes = list(queued), quiet, [], 0

    def try_recv(self, source: int, tag: int) -> object:
        self.probes += 1
        if self.quiet > 0:
            self.quiet -= 1
            return None
        return self.queued.pop(0) if self.queued else None

    def send(self, dest: int, tag: int, obj: object) -> int:
        self.sent.append(obj)
        return 0


def test_worker_takes_handed_rows_between_two_steps_of_a_round(tmp_path):
    """A handoff that arrives mid-round is loaded at once: the rest of the round trains on the grown shard,
    and the reply reports the rows, the new size and when training on them began; a control message that is
    not a handoff waits for the end of the round."""
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    rng = np.random.default_rng(0)
    X = rng.random((200, 6)).astype(np.float32)  # features in [0, 1)
    y = labels(200, 4)
    write_shard(tmp_path / "mine.h5", X, y, np.arange(200))
    handed = tmp_path / "handoff-e0001.h5"  # 20 rows for rank 1, then 50 for this worker (rank 3)
    write_handoff(handed, np.concatenate([np.zeros((20, 6)), np.full((50, 6), 100.0)]), labels(70, 4, 1),
                  np.arange(980, 1050), {1: 20, 3: 50})
    cfg = load_config(None, ["model.batch_size=16", "optimizer.rep_selection=loss", "optimizer.n_most_rep=20"],
                      env={})
    stop = P.Stop(1, 0)
    ch = _WorkerChannel([P.Handoff(1, [P.Segment(str(handed), 20, 70)]), stop], quiet=2)
    w = Worker(ch, cfg, tmp_path)
    w.ctrl_poll = 0.0  # a look after every step (these steps take microseconds; by default one per 2 ms)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    seen = []  # the largest feature of each step's batch: the handed rows are the only ones at 100

    class Spy:
        def __init__(self, model) -> None:
            self.model = model

        def __getattr__(self, name: str):
            return getattr(self.model, name)

        def loss_grad(self, params, xb, yb, grad):
            seen.append(float(xb.max()))
            return self.model.loss_grad(params, xb, yb, grad)

    params = w.model.init(0)
    w.model = Spy(w.model)
    w._round(P.Round(0, 0, 8, 0.01, True, params))
    assert len(seen) == 8
    assert max(seen[:3]) < 1.0, "the rows arrived after the third step"
    assert max(seen[3:]) == 100.0, "the rest of the round draws from the grown shard"
    reply = ch.sent[-1]
    assert (reply.n, reply.handed_in, list(reply.ready)) == (250, 50, [1]) and w.epoch == 1
    assert set(w.shard.ids[200:]) == set(range(1000, 1050)) and len(w.scores) == 250  # scored for representatives
    assert w._wait_ctrl(1.0, "test") == stop, "the stop waited for the end of the round"
    # the next reply starts afresh
    w._round(P.Round(1, 1, 2, 0.01, True, params))
    assert (ch.sent[-1].handed_in, ch.sent[-1].ready) == (0, {})


def test_worker_takes_a_read_ahead_slice_from_memory(tmp_path):
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    write_shard(tmp_path / "mine.h5", np.zeros((40, 6)), labels(40, 4), np.arange(40))
    standby = write_shard(tmp_path / "standby.h5", np.ones((30, 6)), labels(30, 4, 1), np.arange(500, 530))
    w = Worker(_WorkerChannel([], quiet=0), load_config(None, env={}), tmp_path)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    w._read_ahead([(str(standby), 10, 25), (str(tmp_path / "gone.h5"), 0, 5)])  # an unreadable one is skipped
    assert list(w._cache) == [(str(standby), 10, 25)]
    standby.unlink()  # from now on only the copy in memory has these rows
    w._take_handoff(P.Handoff(1, [P.Segment(str(standby), 10, 25)]))
    assert w.shard.ids[40:].tolist() == list(range(510, 525)) and w._prefetched == {1: 15} and not w._cache
    w._read_ahead([])  # a new plan without the slices: forgotten
    assert w._cache == {}


def test_worker_draws_weighted_rows_as_often_as_the_rows_they_stand_for(tmp_path):
    """Rows handed over with a weight (``rep_weight: shard``): the shard's weight grows by rows x weight, the
    reply reports it as ``n`` (what rank 0 weighs replies by under ``aggregate: samples``), and minibatches
    draw the handed rows in proportion: 50 rows of weight 4 beside 200 rows of weight 1 are 1/2 of the draws."""
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    X = np.random.default_rng(0).random((200, 6)).astype(np.float32)
    write_shard(tmp_path / "mine.h5", X, labels(200, 4), np.arange(200))
    write_shard(tmp_path / "standby.h5", np.full((60, 6), 100.0), labels(60, 4, 1), np.arange(1000, 1060))
    cfg = load_config(None, ["model.batch_size=25"], env={})
    ch = _WorkerChannel([], quiet=0)
    w = Worker(ch, cfg, tmp_path)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    assert w.shard.w is None and w.shard.mass == 200
    w._take_handoff(P.Handoff(1, [P.Segment(str(tmp_path / "standby.h5"), 10, 60, np.full(50, 4.0))]))
    assert w.shard.mass == 400 and len(w.shard) == 250 and w.shard.w[:200].tolist() == [1.0] * 200
    assert set(w.shard.w[200:]) == {4.0}
    drawn = np.concatenate([b for rnd in range(40) for b in w._batches(rnd, 8, 25)])
    assert abs(np.mean(drawn >= 200) - 0.5) < 0.03
    params = w.model.init(0)
    w._round(P.Round(1, 0, 2, 0.01, True, params))
    assert (ch.sent[-1].n, ch.sent[-1].rows) == (400.0, 250)


# ------------------------------------------------------------------------------------- partition skew
def test_label_skew_at_the_default_alpha_concentrates_classes_on_workers():
    """The study's premise: at alpha 0.3 over 4 workers, most classes have a majority owner, which iid never
    gives; and :func:`held_classes` names exactly those classes from a summary."""
    y = labels(20000)
    majority = []
    for seed in range(10):
        parts = partition(y, 4, "label-skew", seed=seed, alpha=0.3)
        hist = class_histogram(y, parts, 10)
        share = hist / hist.sum(axis=0)
        majority.append(int((share.max(axis=0) > 0.5).sum()))
        summary = {"class_histogram": hist.tolist(), "initial_shards": {str(r): len(p) for r, p in
                                                                         zip([1, 2, 3, 4], parts, strict=True)}}
        assert held_classes(summary, [2]) == np.flatnonzero(share[1] > 0.5).tolist()
        assert held_classes(summary, [1, 2, 3, 4]) == list(range(10))
        iid = class_histogram(y, partition(y, 4, "iid", seed=seed), 10)
        assert (iid / iid.sum(axis=0)).max() < 0.3
    assert np.mean(majority) >= 5
    assert held_classes({}, [2]) == [] and held_classes({"class_histogram": [[1]], "initial_shards": {}}, [2]) == []


# ------------------------------------------------------------------------------------------ selection
RULES = ("loss", "random", "stratified")


def _ref_order(scores):
    """Highest score first, ties: lower index first, NaN last."""
    s = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    return np.lexsort((np.arange(len(s)), -s))


def _ref_stratified(scores, y, k, n_classes):
    counts = np.bincount(y, minlength=n_classes)
    m = min(k, len(y))
    quota = m * counts // len(y)
    for c in sorted(range(n_classes), key=lambda c: (-(m * counts[c] % len(y)), c))[:m - quota.sum()]:
        quota[c] += 1
    picked = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        picked += list(members[_ref_order(scores[members])[:quota[c]]])
    picked = np.sort(np.array(picked, np.int64))
    return picked[_ref_order(scores[picked])]


def test_random_matches_numpy():
    for n, k, seed in [(100, 30, 5), (15000, 750, 11), (7, 50, 0), (1, 1, 3)]:
        ref = np.sort(np.random.Generator(np.random.PCG64(seed)).choice(n, size=min(k, n), replace=False))
        np.testing.assert_array_equal(K.select_random(n, k, seed), ref)


def _tied_shard():
    rng = np.random.default_rng(4)
    y = rng.choice(10, 60, p=[0.4, 0.3, 0.0, 0.2, 0.1, 0, 0, 0, 0, 0])  # classes 2 and 5..9 absent
    scores = rng.integers(0, 3, 60).astype(np.float64)  # heavy ties
    scores[[4, 11]] = np.nan
    return scores, y


@pytest.mark.parametrize("k", [1, 7, 30, 60, 200])
def test_stratified_with_ties_picks_like_numpy(k):
    """The rows picked: per-class quotas, within a class the highest scores, ties to the lower row index."""
    scores, y = _tied_shard()
    got = K.select_stratified(scores, y, k, 10)
    np.testing.assert_array_equal(np.sort(got), np.sort(_ref_stratified(scores, y, k, 10)))
    assert np.all(np.diff(np.nan_to_num(scores[got], nan=-1.0)) <= 0), "highest score first (scores are 0..2, NaN last)"


def test_stratified_orders_ties_by_row_index():
    scores, y = _tied_shard()
    np.testing.assert_array_equal(K.select_stratified(scores, y, 30, 10), _ref_stratified(scores, y, 30, 10))


@pytest.mark.parametrize("kind", RULES)
def test_select_representative_edges(kind):
    """n_most_rep beyond the shard gives the whole shard once; a class absent from the shard is no trouble;
    one class only; the empty selection."""
    rng = np.random.default_rng(1)
    y = np.array([3, 3, 7, 3, 7, 7, 3, 0], np.int32)  # classes 1, 2, 4, 5, 6, 8, 9 absent
    scores = rng.random(8).astype(np.float32)
    k = rep_count(100, len(y))
    assert k == len(y)
    got = select_representative(kind, scores, y, k, 10, seed=2)
    assert sorted(got.tolist()) == list(range(8)) and got.dtype == np.int64
    one = select_representative(kind, scores, np.zeros(8, np.int32), 3, 1, seed=2)
    assert len(one) == 3 and len(set(one.tolist())) == 3
    assert select_representative(kind, scores, y, 0, 10, seed=2).shape == (0,)
    assert select_representative(kind, scores[:0], y[:0], 5, 10, seed=2).shape == (0,)


def test_rep_count():
    assert [rep_count(100, 50), rep_count(100, 500), rep_count(0.05, 15000), rep_count(0.05, 9)] == [50, 100, 750, 0]
    assert rep_count(0, 100) == 0 and rep_count(0.5, 0) == 0


def test_worker_reports_an_unreadable_handoff_slice_instead_of_crashing(tmp_path):
    """Issue 14, item 9: a slice that cannot be read (a folder not shared by this host) is reported in the
    reply; the other slices of the handoff are still taken and the worker trains on."""
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    write_shard(tmp_path / "mine.h5", np.random.default_rng(0).random((40, 6)), labels(40, 4), np.arange(40))
    good = write_shard(tmp_path / "good.h5", np.ones((10, 6)), labels(10, 4, 1), np.arange(500, 510))
    bad = tmp_path / "elsewhere" / "handoff-e0001.h5"
    ch = _WorkerChannel([], quiet=0)
    w = Worker(ch, load_config(None, env={}), tmp_path)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    assert w._take_handoff(P.Handoff(1, [P.Segment(str(bad), 0, 5), P.Segment(str(good), 0, 10)])) == 10
    w._round(P.Round(1, 3, 2, 0.01, True, w.model.init(0)))
    reply = ch.sent[-1]
    assert reply.unreadable == [(1, str(bad), 0, 5)] and reply.rows == 50
    w._round(P.Round(1, 4, 2, 0.01, True, w.model.init(0)))
    assert ch.sent[-1].unreadable == [], "reported once"


def test_worker_with_an_empty_shard_replies_without_training(tmp_path):
    """Issue 14, item 6: a shard with no rows (a resume that had fewer rows than workers) is no crash."""
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    write_shard(tmp_path / "none.h5", np.zeros((0, 6)), np.zeros(0, np.int32), np.zeros(0, np.int64))
    ch = _WorkerChannel([], quiet=0)
    w = Worker(ch, load_config(None, ["optimizer.rep_selection=loss"], env={}), tmp_path)
    w._setup(P.Setup(str(tmp_path / "none.h5"), 4, [6, 4]))
    w._round(P.Round(0, 0, 5, 0.01, True, w.model.init(0)))
    reply = ch.sent[-1]
    assert (reply.rows, reply.n, len(reply.rep)) == (0, 0.0, 0) and np.isnan(reply.loss)
    assert not np.any(reply.update)


def test_kill_if_same_spares_a_process_that_is_not_the_one_recorded(tmp_path):
    """Issue 14, item 11: a pid is signalled only if its start time is the one recorded at hello."""
    import subprocess

    from ftmpi.procs import kill_if_same, start_time

    p = subprocess.Popen(["sleep", "30"])
    try:
        t = start_time(p.pid)
        assert t > 0 and start_time(10**9) == 0
        assert not kill_if_same(p.pid, t + 1), "another start time: another process"
        assert not kill_if_same(p.pid, 0), "unknown start time: never"
        assert p.poll() is None
        assert kill_if_same(p.pid, t)
        assert p.wait(timeout=10) == -9
    finally:
        p.kill()


def test_a_worker_looks_for_control_messages_between_steps_at_most_every_ctrl_poll_seconds(tmp_path):
    """An MPI probe costs about what a small local step does: between the steps of a round a worker probes
    at most once per ``ctrl_poll`` (2 ms), and once at the round's middle, not after every step (8 fast
    steps: two looks, after the first step and after the fourth)."""
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard  # noqa: F811
    from ftmpi.worker.loop import Worker

    rng = np.random.default_rng(0)
    write_shard(tmp_path / "mine.h5", rng.random((200, 6)).astype(np.float32), labels(200, 4), np.arange(200))
    cfg = load_config(None, ["model.batch_size=16"], env={})
    ch = _WorkerChannel([], quiet=0)
    w = Worker(ch, cfg, tmp_path)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    w._round(P.Round(0, 0, 8, 0.01, True, w.model.init(0)))
    assert ch.probes == 2, ch.probes
    w.ctrl_poll, w._next_ctrl_poll = 0.0, 0.0
    ch.probes = 0
    w._round(P.Round(0, 1, 8, 0.01, True, w.model.init(0)))
    assert ch.probes == 7, ch.probes  # after every step but the last
