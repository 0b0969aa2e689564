"""Rank 0's handoff bookkeeping in-process (no MPI): a standby file is handed over only while it is a draw of
the worker's current rows; what was sent survives a snapshot and restore (a deputy's takeover); rows handed
again after a takeover are held once by the survivor. Each test drives :class:`ClusterState` one event at a
time, as the driver does."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from ftmpi.core.cluster import Chosen, ClusterState, Heard, Log, Lost, SendHandoff, WriteHandoff
from ftmpi.core.failover import ReplicaSender, takeover_state
from ftmpi.storage.shards import Shard, read_shard, standby_path
from ftmpi.worker.localshard import LocalShard
from tests.clusterkit import Kit, make_cluster

from .test_cluster import check_ownership, of


def stage_in_memory(c: Kit) -> None:
    """What the driver's Stage effect publishes, without writing the files: each alive worker's draw as its
    staged standby rows (the policy never reads the file; only the survivors would)."""
    s = c.state
    for r in s.alive:
        ids, hits = c.standby.choice(r, s.ownership, s.weight, s.epoch)
        c.standby.staged[r] = (ids, hits, standby_path(c.run_dir, s.epoch, r))
        s.apply([Chosen(r, ids)], c.clock)


# --------------------------------------------------------------------- a receiver's stale standby file
def _receiver_lost(tmp_path, seed: int) -> tuple[np.ndarray, np.ndarray, Kit, list]:
    """Worker 2 is lost, worker 3 is handed some of its rows, and 3 is lost before it is staged again.
    Returns the per-class and per-origin mass after both losses minus before, the kit and 3's effects."""
    c = make_cluster(tmp_path, "representative", n_most_rep=0.1, selection="random", weight="shard", seed=seed,
                     n=600, sub="x")
    s, y = c.state, c.data.y_train
    stage_in_memory(c)
    origin = s.ownership.owner_array().astype(np.int64)
    owned = np.flatnonzero(origin >= 0)
    by_class = np.bincount(y[owned], weights=s.weight[owned], minlength=4)
    by_origin = np.bincount(origin[owned], weights=s.weight[owned], minlength=5)
    c.apply([Lost(2, "ulfm")])
    effects = c.apply([Lost(3, "ulfm")])
    check_ownership(s)
    owned = np.flatnonzero(s.ownership.owner_array() >= 0)
    if all(f.rows_handed for f in s.failures):  # (a shard of a few rows may hand none: its mass is dropped)
        assert s.weight[owned].sum() == pytest.approx(len(y)), "the total mass is exact"
    return (np.bincount(y[owned], weights=s.weight[owned], minlength=4) - by_class,
            np.bincount(origin[owned], weights=s.weight[owned], minlength=5) - by_origin, c, effects)


def test_a_receiver_lost_before_it_is_staged_again_hands_over_the_rows_it_was_handed(tmp_path):
    """Worker 3's standby file was drawn before it was handed rows of worker 2: handing that file over at 3's
    loss would drop the rows of 2 it holds and give their mass to 3's own rows. The handoff is drawn from
    the rows 3 holds now, so the mass of 2's rows (and of every class) is kept in expectation over seeds
    (within 4 standard errors), and the total exactly."""
    diffs, grew, stale_used, written = [], 0, 0, 0
    for seed in range(200):
        d_class, d_origin, c, effects = _receiver_lost(tmp_path, seed)
        diffs.append((d_class, d_origin))
        if 3 in c.state._receivers[1]:  # (a deal may give a survivor no slice)
            grew += 1
            stale = str(c.standby.staged[3][2])
            stale_used += any(g.path == stale for e in of(effects, SendHandoff) for g in e.msg.segments)
            written += len(of(effects, WriteHandoff)) == 1
    assert grew > 150
    for k, what in ((0, "class"), (1, "origin (index: the rows' first owner)")):
        d = np.array([x[k] for x in diffs])
        mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / np.sqrt(len(d))
        assert np.all(np.abs(mean) <= 4 * se + 1e-6), (what, mean.round(2), se.round(2))
    assert stale_used == 0 and written == grew, "3's file from before its shard grew is never handed over"


def test_a_standby_file_is_used_again_once_the_receiver_is_staged_again(tmp_path):
    """The receivers' files are drawn again once the loss is recovered from (the Stage effect): a loss then
    hands slices of the new file and writes nothing."""
    c = make_cluster(tmp_path, "representative", n_most_rep=0.1, selection="random", weight="shard")
    s = c.state
    stage_in_memory(c)
    c.apply([Lost(2, "ulfm")])
    effects = c.round_with_replies(ready={1: c.clock})  # recovered: the receivers are staged again
    assert [e.ranks for e in effects if type(e).__name__ == "Stage"] == [s.alive]
    stage_in_memory(c)  # what the Stage effect publishes
    effects = c.apply([Lost(3, "ulfm")])
    staged = str(c.standby.staged[3][2])
    assert not of(effects, WriteHandoff) and {g.path for e in of(effects, SendHandoff) for g in e.msg.segments} \
        == {staged}, "a file drawn from 3's current rows is handed as slices; nothing is written"
    check_ownership(s)


# ---------------------------------------------------------------------------- what was sent, restored
def test_a_restored_state_still_drops_rows_a_survivor_could_not_read(tmp_path):
    """What was handed to whom (as file slices) is part of the snapshot: a deputy that takes over from it,
    then hears a survivor report a slice it could not read, drops exactly those rows (not restored, the
    report would be ignored and the rows counted as owned by a worker that never read them)."""
    c = make_cluster(tmp_path, "full")
    msgs, _ = c.lose(2)
    seg = msgs[3].segments[0]
    snap = pickle.loads(pickle.dumps(c.state.snapshot()))  # as the replica carries it
    r = ClusterState.restore(snap, c.state.policy, handoff_file=c.state.handoff_file)
    r.begin_round()
    effects = r.apply([Heard(3, c.reply(3, unreadable=[(1, seg.path, seg.start, seg.stop)]))], c.clock + 1)
    assert any("could not read" in e.text for e in of(effects, Log))
    assert r.rows_unreadable == len(seg) and len(r.ownership.dropped()) == len(seg)
    assert r.ownership.coverage() == 1 - len(seg) / len(c.data.y_train)
    check_ownership(r)


def test_a_restored_state_still_sends_the_staged_rows_of_a_handoff_file_not_written(tmp_path):
    """A loss hands staged slices and rows drawn at the loss (one file); the file cannot be written after a
    restore: the staged slices must still go out, and only the file's rows are dropped."""
    c = make_cluster(tmp_path, "representative", n_most_rep=0.1, selection="random", weight="shard")
    s = c.state
    stage_in_memory(c)
    del c.standby.staged[3]  # 3's file is not written yet
    effects = c.apply([Lost(2, "ulfm"), Lost(3, "ulfm")])  # 2's rows from its file, 3's drawn into the epoch's
    assert len(of(effects, WriteHandoff)) == 1
    assert any(g.path == str(c.standby.staged[2][2]) for e in of(effects, SendHandoff) for g in e.msg.segments)
    r = ClusterState.restore(pickle.loads(pickle.dumps(s.snapshot())), s.policy, handoff_file=s.handoff_file)
    want = s.handoff_unwritten(s.epoch, "disk full")
    got = r.handoff_unwritten(r.epoch, "disk full")
    assert [(e.rank, [(g.path, g.start, g.stop) for g in e.msg.segments]) for e in of(got, SendHandoff)] == \
        [(e.rank, [(g.path, g.start, g.stop) for g in e.msg.segments]) for e in of(want, SendHandoff)]
    assert r.rows_unwritten == s.rows_unwritten > 0
    assert np.array_equal(r.ownership.owner_array(), s.ownership.owner_array())


# ------------------------------------------------------------------ rows handed again after a takeover
def _shard_of(c: Kit, r: int) -> LocalShard:
    ids = c.state.ownership.owned(r)
    return LocalShard(Shard(c.data.X_train[ids], c.data.y_train[ids], ids))


def _take(shards: dict[int, LocalShard], msgs: dict) -> None:
    """Each survivor appends the slices it is handed, as the worker does (read from the files)."""
    for r, m in msgs.items():
        if r in shards:
            for g in m.segments:
                shards[r].append(read_shard(g.path, (g.start, g.stop), raw=True), g.weights)


@pytest.mark.parametrize("remap,selection", [("full", "loss"), ("representative", "random")])
def test_rows_handed_again_after_a_takeover_are_held_once(tmp_path, remap, selection):
    """Rank 0 hands worker 4's rows to 1, 2 and 3 and is lost before its replica of that reaches the deputy
    (1). The deputy takes over from the older replica, hands its own rows to 2, 3 and 4, then finds 4 lost
    and hands 4's rows again: 2 and 3 are sent rows they already hold. After the sequence, every row has
    one owner and appears once in its owner's shard, weighing what the new coordinator says."""
    c = make_cluster(tmp_path, remap, n_most_rep=0.5, selection=selection, weight="shard", partition_kind="iid",
                     seed=2)  # (a seed whose two deals of 4's rows overlap)
    c.stage(c.state.alive)
    shards = {r: _shard_of(c, r) for r in c.state.alive}
    rep = pickle.loads(pickle.dumps(ReplicaSender().build(1, c.state, {}, None, {}, (0, "h", 1, 1), c.clock,
                                                          {r: (i, h, str(p)) for r, (i, h, p) in
                                                           c.standby.staged.items()})))
    msgs, _ = c.lose(4)  # rank 0's handoff; its replica of it never reaches the deputy
    _take(shards, msgs)
    del shards[4]
    s, effects = takeover_state(rep, 1, c.state.policy, 2, 0.0, c.clock + 1, c.state.handoff_file)
    c.state = s
    _take(shards, c.carry_out(effects))  # the deputy's own rows
    del shards[1]
    msgs2, _ = c.lose(4)  # the new coordinator finds 4 lost: its rows are handed again
    again = sum(int(np.isin(read_shard(g.path, (g.start, g.stop)).ids, shards[r].ids).sum())
                for r, m in msgs2.items() for g in m.segments)
    assert again > 0, "the survivors are sent rows they hold already"
    _take(shards, msgs2)
    check_ownership(s)
    for r in s.alive:
        own, sh = s.ownership.owned(r), shards[r]
        ids, counts = np.unique(sh.ids, return_counts=True)
        assert counts.max() == 1, f"worker {r} holds {int((counts > 1).sum())} rows twice"
        assert np.all(np.isin(own, sh.ids)), f"worker {r} holds every row it owns"
        w = np.ones(len(sh)) if sh.w is None else sh.w
        at = np.searchsorted(sh.ids, own, sorter=np.argsort(sh.ids))
        assert np.allclose(w[np.argsort(sh.ids)[at]], s.weight[own]), f"worker {r}: weights as rank 0 has them"


def test_local_shard_appends_a_row_it_holds_once_with_the_newer_weight():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    sh = LocalShard(Shard(X[:4], np.zeros(4, np.int32), np.array([10, 11, 12, 13])))
    assert sh.append(Shard(X[3:6], np.ones(3, np.int32), np.array([13, 14, 15])), np.array([2.0, 3.0, 4.0])) == 2
    assert sh.ids.tolist() == [10, 11, 12, 13, 14, 15] and len(sh.X) == len(sh.y) == 6
    assert sh.w.tolist() == [1.0, 1.0, 1.0, 2.0, 3.0, 4.0]
    assert sh.append(Shard(X[:2], np.zeros(2, np.int32), np.array([10, 11])), 5.0) == 0, "held already"
    assert sh.ids.tolist() == [10, 11, 12, 13, 14, 15] and sh.w.tolist() == [5.0, 5.0, 1.0, 2.0, 3.0, 4.0]
    assert sh.mass == 20.0 and np.array_equal(sh.rows(slice(0, 6)), X)
