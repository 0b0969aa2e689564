"""Quorum rounds, late replies and chronic stragglers (issue 25), in-process: when a round may close, how
:class:`ClusterState` takes a reply to a closed round (folded within the staleness bound, dropped and counted
beyond it), how a chronic straggler is rebalanced and gets its work back, a straggler that then dies, the
snapshot round trip, and the aggregate of a quorum round (late shares, work normalization)."""
from __future__ import annotations

import numpy as np
import pytest

from ftmpi.config import ConfigError, load_config
from ftmpi.coordinator.globalmodel import GlobalModel
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Accept, ClusterState, Expel, Heard, Log
from ftmpi.core.quorum import Folding, Rules, Stragglers, close_time
from ftmpi.storage.data import Dataset
from tests.clusterkit import Kit, make_cluster

Q = Rules(quorum=0.75)


def kit(tmp_path, rules: Rules = Q) -> Kit:
    c = make_cluster(tmp_path, "representative", selection="random", weight="shard", partition_kind="iid")
    c.state.stragglers.rules = rules
    return c


def reply(c: Kit, rank: int, rnd: int | None = None, t: float = 0.01, epoch: int | None = None) -> P.Reply:
    s = c.state
    return P.Reply(s.epoch if epoch is None else epoch, s.round if rnd is None else rnd, rank,
                   np.zeros(1, np.float32), 0.5, 100.0, 100, np.zeros(0, np.int64), t_compute=t)


def run_round(c: Kit, fresh: dict[int, float], late: list[P.Reply] = (), iters: int = 10) -> list:
    """One round: ``late`` replies first, then the fresh replies of ``fresh`` (rank -> t_compute); returns
    every effect."""
    s = c.state
    s.begin_round(iters)
    effects = c.apply([Heard(m.rank, m) for m in late] + [Heard(r, reply(c, r, t=t)) for r, t in fresh.items()])
    effects += s.end_round(c.clock)
    return effects


# ---------------------------------------------------------------------------------------------- closing
def test_a_round_closes_once_the_quorum_replied_and_the_wait_passed():
    assert close_time(Rules(), 4, [0.1, 0.2, 0.3]) is None, "quorum 1.0 waits for everyone"
    assert close_time(Q, 4, [0.1, 0.2]) is None, "3 of 4 make the quorum"
    assert close_time(Q, 4, [0.3, 0.1, 0.2]) == pytest.approx(0.3 + 0.5 * 0.2), "the 3rd reply + 0.5 x median"
    assert close_time(Rules(0.75, 0.05, False), 4, [0.1, 0.2, 0.3]) == pytest.approx(0.35), "seconds"
    assert close_time(Q, 4, [0.1, 0.2, 0.3], final=True) is None, "the last round waits for everyone"
    assert close_time(Q, 3, [0.1, 0.2]) is None and Q.needed(3) == 3, "ceil(0.75 x 3)"
    assert Rules(0.5).needed(4) == 2 and Rules(0.1).needed(4) == 1 and Rules(0.7).needed(10) == 7


def test_the_keys_are_validated(tmp_path):
    cfg = load_config(None, ["executor.quorum=0.75", "executor.straggler_wait=2x"], env={})
    assert Rules.of(cfg.executor) == Rules(0.75, 2.0, True)
    assert Rules.of(load_config(None, ["executor.straggler_wait=0.02"], env={}).executor).relative is False
    assert not Rules.of(load_config(None, [], env={}).executor).active, "quorum 1.0 by default"
    for bad in ("executor.quorum=0", "executor.quorum=1.5", "executor.straggler_wait=x",
                "executor.straggler_wait=-1", "executor.late_weight=half", "executor.max_staleness=-1"):
        with pytest.raises(ConfigError):
            load_config(None, [bad], env={})


# ----------------------------------------------------------------------------------------- late replies
def test_a_late_reply_is_folded_into_the_next_round(tmp_path):
    c = kit(tmp_path)
    s = c.state
    run_round(c, {1: 0.01, 3: 0.01, 4: 0.01})  # round 0 closes without worker 2: it is not lost
    assert s.alive == [1, 2, 3, 4] and s.failures == [] and s.stragglers.late[2] == [True]
    s.begin_round(10)
    effects = c.apply([Heard(2, reply(c, 2, rnd=0)), Heard(1, reply(c, 1))])
    acc = [e for e in effects if isinstance(e, Accept)]
    assert [(e.rank, e.reply.round) for e in acc] == [(2, 0), (1, 1)], "the late one is accepted, round 0's"
    assert s.waiting_for() == [2, 3, 4], "a late reply is not this round's reply"
    fold = s.stragglers.folding({1: acc[1].reply}, [acc[0].reply], 1, s.alive, False)
    assert fold.late == {2: [(acc[0].reply, 1.0)]} and s.stragglers.folded == 1
    assert set(fold.absent) == {2, 3, 4}, "no fresh reply in round 1 (yet): their shares stay in the denominator"
    assert s.stale == 0


def test_staleness_is_bounded_and_a_reply_folds_once(tmp_path):
    c = kit(tmp_path)
    s = c.state
    for _ in range(3):
        run_round(c, {1: 0.01, 3: 0.01, 4: 0.01})
    s.begin_round(10)  # round 3: a reply to round 0 is 3 rounds late (max_staleness 2)
    assert c.apply([Heard(2, reply(c, 2, rnd=0))]) == []
    assert s.stragglers.dropped == 1 and s.stale == 0, "dropped and counted apart from stale messages"
    assert [e.reply.round for e in c.apply([Heard(2, reply(c, 2, rnd=1))])] == [1], "2 rounds late: folded"
    assert c.apply([Heard(2, reply(c, 2, rnd=1))]) == [] and s.stragglers.dropped == 2, "a round folds once"
    assert c.apply([Heard(2, reply(c, 2, rnd=2, epoch=-1))]) == [], "of an older epoch than its round's"


def test_the_late_weight_rules():
    assert [Rules(0.75).weight(s) for s in (0, 1, 2)] == [1.0, 1.0, 1.0]
    assert [Rules(0.75, late_weight="inverse").weight(s) for s in (0, 1, 2)] == [1.0, 0.5, pytest.approx(1 / 3)]
    st = Stragglers(Rules(0.75, late_weight="drop"))
    st.begin(0, 0, 10)
    assert not st.can_fold(2, 0, 0, 1), "drop: a late reply is never folded (a first-K-of-N quorum)"


def test_quorum_one_keeps_a_late_reply_stale(tmp_path):
    c = kit(tmp_path, Rules())
    s = c.state
    run_round(c, {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01})
    s.begin_round(10)
    assert c.apply([Heard(2, reply(c, 2, rnd=0))]) == [] and s.stale == 1, "as before issue 25"
    assert s.stragglers.snapshot() == Stragglers().snapshot(), "nothing recorded under quorum 1.0"


# ---------------------------------------------------------------------------------------------- rebalancing
def test_a_chronic_straggler_is_rebalanced_then_recovers(tmp_path):
    c = kit(tmp_path)
    s = c.state
    logs = []
    for rnd in range(3):  # worker 2 takes 4x longer per step and is late every round
        late = [reply(c, 2, rnd=rnd - 1, t=0.04)] if rnd else []
        logs += [e.text for e in run_round(c, {1: 0.01, 3: 0.01, 4: 0.01}, late) if isinstance(e, Log)]
    assert 2 in s.stragglers.share and s.stragglers.iters_for(2, 10) == 3, "a quarter of the work, rounded"
    assert any("worker 2 is a chronic straggler" in t for t in logs), logs
    assert s.stragglers.iters_for(1, 10) == 10 and s.failures == []
    assert s.stragglers.rounds[3 - 1][2] == {} and s.stragglers.rounds.get(3) is None
    s.begin_round(10)
    assert s.stragglers.assigned(2, 3) == (10, 3), "round 3 gave worker 2 3 of 10 iterations"
    fold = s.stragglers.folding({2: reply(c, 2, rnd=3)}, [], 3, s.alive, False)
    assert fold.scale == {2: pytest.approx(10 / 3)}, "its update weighs as a full round's work"
    assert s.stragglers.folding({2: reply(c, 2, rnd=3)}, [], 3, s.alive, True).scale == {}, "gradients: a mean"
    s.end_round(c.clock)
    # it keeps up now (3 iterations at 4x), and is not given its work back while it is still slow
    for _ in range(4):
        run_round(c, {1: 0.01, 2: 0.012, 3: 0.01, 4: 0.01})
    assert 2 in s.stragglers.share
    logs = []
    for _ in range(7):  # its steps are as fast as the others' again (smoothed): `calm` rounds in a row, recovered
        logs += [e.text for e in run_round(c, {1: 0.01, 2: 0.003, 3: 0.01, 4: 0.01}) if isinstance(e, Log)]
    assert 2 not in s.stragglers.share and s.stragglers.iters_for(2, 10) == 10
    assert any("worker 2 recovered" in t for t in logs), logs


def test_a_straggler_that_then_dies(tmp_path):
    c = kit(tmp_path)
    s = c.state
    for rnd in range(3):
        run_round(c, {1: 0.01, 3: 0.01, 4: 0.01}, [reply(c, 2, rnd=rnd - 1, t=0.04)] if rnd else [])
    assert 2 in s.stragglers.share
    s.begin_round(10)
    msgs, effects = c.lose(2)
    assert s.alive == [1, 3, 4] and s.epoch == 1 and set(msgs) <= {1, 3, 4}, "handed over like any loss"
    assert [e.rank for e in c.apply([Heard(2, reply(c, 2, rnd=2))]) if isinstance(e, Expel)] == [2], "a zombie"
    assert s.stragglers.iters_for(1, 10) == 10
    s.end_round(c.clock)
    assert 2 not in s.stragglers.share and 2 not in s.stragglers.late, "forgotten at the round's end"


def test_a_slow_worker_that_replies_is_never_lost(tmp_path):
    c = kit(tmp_path)
    for rnd in range(10):
        run_round(c, {1: 0.01, 3: 0.01, 4: 0.01}, [reply(c, 2, rnd=rnd - 1, t=0.04)] if rnd else [])
    assert c.state.failures == [] and c.state.alive == [1, 2, 3, 4]


def test_the_state_survives_a_snapshot(tmp_path):
    c = kit(tmp_path)
    s = c.state
    for rnd in range(3):
        run_round(c, {1: 0.01, 3: 0.01, 4: 0.01}, [reply(c, 2, rnd=rnd - 1, t=0.04)] if rnd else [])
    s.stragglers.dropped = 5
    back = ClusterState.restore(s.snapshot(), s.policy)
    assert back.stragglers.snapshot() == s.stragglers.snapshot() and back.stragglers.rules == Q
    assert back.stragglers.iters_for(2, 10) == 3 and back.stragglers.dropped == 5
    old = s.snapshot()
    del old["stragglers"]  # a replica or checkpoint from before issue 25
    assert ClusterState.restore(old, s.policy).stragglers.snapshot() == Stragglers().snapshot()


# -------------------------------------------------------------------------------------------- aggregate
def _gm() -> GlobalModel:
    cfg = load_config(None, ["model.type=logreg", "executor.aggregate=samples", "executor.screen=false"], env={})
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    y = (np.arange(60) % 3).astype(np.int32)
    return GlobalModel(cfg, Dataset("synthetic", X, y, X[:20], y[:20], 3, ("a", "b", "c"), "test"))


def _r(gm: GlobalModel, rank: int, value: float, rnd: int, n: float = 10.0) -> P.Reply:
    return P.Reply(0, rnd, rank, np.full(gm.model.n_params, value, np.float32), 0.5, n, 10, np.zeros(0, np.int64))


def test_a_quorum_round_aggregates_late_shares_and_normalized_work():
    gm = _gm()
    w0 = gm.W.copy()
    fresh = {1: _r(gm, 1, 1.0, 5), 3: _r(gm, 3, 1.0, 5)}
    # worker 2: absent this round (mass 10), its round-4 reply folded at factor 1; worker 4: absent, no late reply
    fold = Folding(late={2: [(_r(gm, 2, 4.0, 4), 1.0)]}, absent={2: (10.0, 0.5), 4: (20.0, 0.5)})
    gm.aggregate(fresh, 5, 10, fold)
    # every alive worker's mass in the denominator (10 + 10 + 10 + 20): (10 x 1 + 10 x 1 + 10 x 4) / 50
    np.testing.assert_allclose(gm.W - w0, (10 + 10 + 40) / 50, rtol=1e-6)
    gm2 = _gm()
    gm2.aggregate({1: _r(gm2, 1, 1.0, 5), 2: _r(gm2, 2, 0.3, 5)}, 5, 10, Folding(scale={2: 10 / 3}))
    np.testing.assert_allclose(gm2.W - _gm().W, (1.0 + 1.0) / 2, rtol=1e-6), "3 of 10 iterations, normalized"
    gm3, gm4 = _gm(), _gm()
    gm3.aggregate(dict(fresh), 5, 10)
    gm4.aggregate(dict(fresh), 5, 10, Folding())
    np.testing.assert_array_equal(gm3.W, gm4.W), "everyone fresh: the same as without folding"
