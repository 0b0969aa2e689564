"""Coordinator failover in-process (no MPI): what the coordinator replicates to its deputy and when, what the
deputy keeps, and the state a deputy takes over from (:mod:`ftmpi.core.failover`), on real ``ClusterState``
snapshots taken after losses and recoveries."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from ftmpi.core import protocol as P
from ftmpi.core.cluster import ClusterState, Rebuild, SendHandoff, WriteHandoff
from ftmpi.core.failover import ReplicaKeeper, ReplicaSender, Unchanged, choose_deputy, state_key, takeover_state
from tests.clusterkit import Kit, make_cluster

from .test_cluster import check_ownership, class_mass, of


def replica(sender: ReplicaSender, c: Kit, deputy: int) -> P.Replica:
    r = sender.build(deputy, c.state, {"params": np.arange(3.0)}, {"round": c.state.round - 1}, {"bytes_total": 1},
                     (0, "host", 123, 456), c.clock)
    return pickle.loads(pickle.dumps(r))  # what goes over the wire


def test_the_snapshot_goes_out_only_when_the_state_or_the_deputy_changed(tmp_path):
    c = make_cluster(tmp_path, "full")
    sender = ReplicaSender()
    first = replica(sender, c, 1)
    assert first.state is not None
    c.round_with_replies()
    assert replica(sender, c, 1).state is None, "a round without a change sends no snapshot"
    c.lose(3)
    after_loss = replica(sender, c, 1)
    assert after_loss.state is not None and after_loss.state["epoch"] == 1
    assert replica(sender, c, 1).state is None
    assert replica(sender, c, 2).state is not None, "a new deputy gets the whole state at once"
    staged = {3: (np.arange(5), np.ones(5), "standby-e0001-w0003.h5")}
    with_files = sender.build(2, c.state, {}, None, {}, (0, "h", 1, 1), 0.0, staged)
    assert with_files.state is not None and with_files.state["staged"] == staged, "a new standby file: sent"
    assert sender.build(2, c.state, {}, None, {}, (0, "h", 1, 1), 0.0, staged).state is None
    assert choose_deputy(c.state.alive) == 1 and choose_deputy([]) == -1


def test_the_deputy_is_on_another_host_than_the_coordinator_where_there_is_one():
    hosts = {1: "a", 2: "a", 3: "b", 4: "b"}
    assert choose_deputy([1, 2, 3, 4], hosts, "a") == 3, "rank 0's node lost must not take its deputy too"
    assert choose_deputy([1, 2, 4], hosts, "b") == 1
    assert choose_deputy([1, 2], hosts, "a") == 1, "every worker on the coordinator's host: the lowest"
    assert choose_deputy([2, 3], {2: "?", 3: "?"}, "a") == 2, "hosts not known yet (before the join)"


def test_the_deputy_keeps_the_newest_complete_replica(tmp_path):
    c = make_cluster(tmp_path, "full")
    sender, keeper = ReplicaSender(), ReplicaKeeper()
    assert keeper.complete() is None
    keeper.offer(replica(sender, c, 1))
    c.round_with_replies()
    r1 = replica(sender, c, 1)
    keeper.offer(r1)
    got = keeper.complete()
    assert got is not None and got.round == r1.round == 1 and got.state is not None
    c.lose(3)
    lost_snapshot = replica(sender, c, 1)  # never arrives (say the deputy was busy: here, simply not offered)
    c.round_with_replies()
    orphan = replica(sender, c, 1)
    assert lost_snapshot.state is not None and orphan.state is None
    keeper.offer(orphan)
    assert keeper.complete().round == 1, "a replica whose snapshot never arrived is not complete"
    keeper.offer(replica(ReplicaSender(), c, 1))  # a new sender sends the state again
    assert keeper.complete().round == c.state.round and keeper.complete().state["epoch"] == 1


@pytest.mark.parametrize("remap,selection", [("full", "loss"), ("representative", "loss"),
                                             ("representative", "random"), ("none", "loss")])
def test_takeover_hands_the_deputys_rows_and_keeps_every_invariant(tmp_path, remap, selection):
    c = make_cluster(tmp_path, remap, n_most_rep=0.1, selection=selection, weight="shard")
    c.stage(c.state.alive)
    c.lose(4)  # an earlier loss, recovered from before rank 0 is lost
    c.round_with_replies(ready={1: c.clock})
    before = c.state.snapshot()
    mass = class_mass(c.state, c.data.y_train, 4)
    rep = replica(ReplicaSender(), c, 1)
    s, effects = takeover_state(rep, 1, c.state.policy, 0, 0.0, c.clock + 1, c.state.handoff_file)
    assert s.coordinator == 1 and s.round == rep.round and s.alive == [2, 3]
    assert s.epoch == before["epoch"] + 1, "the deputy's rows are handed in one new epoch"
    check_ownership(s)
    assert len(s.ownership.owned(1)) == 0
    owned1 = np.flatnonzero(before["owner"] == 1)
    f = s.failures[-1]
    assert (f.rank, f.how) == (1, "promoted") and f.rows_handed + f.rows_dropped == len(owned1)
    handed = np.concatenate([s.ownership.owned(r) for r in (2, 3)])
    assert set(np.intersect1d(handed, owned1).tolist()) == set(
        np.concatenate([p[3] for parts in s._sent[s.epoch].values() for p in parts]).tolist()
        if s._sent.get(s.epoch) else [])
    assert of(effects, Rebuild) == [Rebuild([1, 2, 3])], "the alive group names the new coordinator, not 0"
    msgs = {e.rank for e in of(effects, SendHandoff)}
    if remap == "none":
        assert not msgs and f.rows_handed == 0
    else:
        assert msgs == {2, 3} and f.rows_handed > 0
    if remap == "full":
        assert s.ownership.coverage() == pytest.approx(before["owner"].__ge__(0).mean())
        assert len(of(effects, WriteHandoff)) == 1
    if remap != "none":  # the weight rule conserves the total mass through the takeover too
        assert class_mass(s, c.data.y_train, 4).sum() == pytest.approx(mass.sum())
    for k in ("weight",):  # nothing else of the restored state moved
        keep = np.setdiff1d(np.arange(len(before[k])), owned1)
        assert np.array_equal(s.weight[keep], before[k][keep])
    assert state_key(s) != tuple(rep.state_key)


def test_a_replica_without_its_snapshot_cannot_be_taken_over_from(tmp_path):
    c = make_cluster(tmp_path, "full")
    sender = ReplicaSender()
    replica(sender, c, 1)
    with pytest.raises(ValueError, match="snapshot"):
        takeover_state(replica(sender, c, 1), 1, c.state.policy, 0, 0.0, 1.0)


def test_restore_keeps_the_coordinator_rank(tmp_path):
    c = make_cluster(tmp_path, "full")
    c.state.coordinator = 3
    assert ClusterState.restore(c.state.snapshot(), c.state.policy).coordinator == 3


def test_the_replica_state_is_sent_again_when_a_straggler_is_rebalanced(tmp_path):
    """A deputy must take over with the rebalancing as it stands (a rebalanced worker's fewer iterations),
    so a rebalancing decision changes the state key, as a loss does."""
    s = make_cluster(tmp_path, "full").state
    key = state_key(s)
    s.stragglers.rebalances += 1
    assert state_key(s) != key


def test_a_replica_leaves_unit_weights_out_and_sends_owners_in_16_bits_and_restores_the_same_state(tmp_path):
    """The snapshot a replica carries is a fifth of the state's arrays for a fresh run (a loss sends it
    several times in a round or two, between the deputy's steps), and restores to the same state."""
    c = make_cluster(tmp_path, "full", n=20000)
    full = c.state.snapshot()
    rep = replica(ReplicaSender(), c, 1)
    assert rep.state is not None and rep.state["weight"] is None and rep.state["owner"].dtype == np.int16
    wire = len(pickle.dumps(rep.state))
    saved = len(pickle.dumps(full)) - wire
    # (less the arrays' fingerprints, a few hundred bytes)
    assert saved >= full["weight"].nbytes + full["owner"].nbytes // 2 - 512, (saved, full["weight"].nbytes)
    back = ClusterState.restore(rep.state, c.state.policy).snapshot()
    assert back["owner"].dtype == full["owner"].dtype and np.array_equal(back["owner"], full["owner"])
    assert np.array_equal(back["weight"], full["weight"]) and np.array_equal(back["dropped"], full["dropped"])
    c.state.weight[:5] = 2.5  # weights other than 1 go out as they are
    c.round_with_replies()
    c.lose(3)
    rep = replica(ReplicaSender(), c, 1)
    assert rep.state is not None and rep.state["weight"] is not None
    assert np.array_equal(ClusterState.restore(rep.state, c.state.policy).weight, c.state.weight)


def test_a_snapshot_after_a_change_that_moves_no_rows_leaves_the_arrays_out_and_the_deputy_fills_them_in(tmp_path):
    c = make_cluster(tmp_path, "full", n=20000)
    sender, keeper = ReplicaSender(), ReplicaKeeper()
    keeper.offer(replica(sender, c, 1))
    c.lose(3)  # rows move: the arrays go out
    moved = replica(sender, c, 1)
    assert moved.state is not None and isinstance(moved.state["owner"], np.ndarray)
    keeper.offer(moved)
    staged = {2: (np.arange(5), np.ones(5), "standby-e0001-w0002.h5")}  # a change that moves no rows
    same = pickle.loads(pickle.dumps(sender.build(1, c.state, {}, None, {}, (0, "h", 1, 1), 0.0, staged)))
    assert same.state is not None and isinstance(same.state["owner"], Unchanged)
    assert len(pickle.dumps(same.state)) < len(pickle.dumps(moved.state)) / 3
    keeper.offer(same)
    got = keeper.complete()
    assert got is not None and got.state["staged"].keys() == staged.keys() and got.state["staged"][2][2] == staged[2][2]
    full = c.state.snapshot()
    back = ClusterState.restore(got.state, c.state.policy).snapshot()
    for k in ("owner", "dropped", "weight"):
        assert np.array_equal(back[k], full[k]), k
    assert state_key(ClusterState.restore(got.state, c.state.policy)) == state_key(c.state)
    fresh = ReplicaKeeper()  # a keeper that never held the arrays cannot complete it: it keeps nothing
    fresh.offer(same)
    assert fresh.complete() is None
    assert isinstance(sender.build(2, c.state, {}, None, {}, (0, "h", 1, 1), 0.0, staged).state["owner"],
                      np.ndarray), "a new deputy gets every array"
