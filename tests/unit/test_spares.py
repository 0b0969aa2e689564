"""Hot spares in rank 0's cluster state, in process (issue 24): a spare takes a lost worker's whole shard
(nothing handed to the survivors, coverage and every class's mass unchanged), a spare lost before or while it
takes over, two losses and one spare, a spare that stands in for a worker that never joined, and an adopted
spare named deputy and then promoted. Real handoff files are written and read back where rows move."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ftmpi.core import protocol as P
from ftmpi.core.cluster import Adopt, ClusterState, Heard, Lost, Member, SendHandoff, Stage, WriteHandoff
from ftmpi.core.failover import choose_deputy, spare_ranks, state_key, takeover_state
from ftmpi.core.handoff import make_policy
from ftmpi.errors import ConfigError
from ftmpi.storage.shards import read_shard
from tests.clusterkit import make_cluster
from tests.unit.test_cluster import check_ownership, class_mass, of


def _kit(tmp_path, remap="representative", selection="random", **kw):
    return make_cluster(tmp_path, remap, n_most_rep=0.1, selection=selection, weight="shard", **kw)


@pytest.mark.parametrize("remap,selection", [("representative", "random"), ("full", "loss"), ("none", "loss")])
def test_a_spare_takes_the_whole_shard_and_the_survivors_get_nothing(tmp_path, remap, selection):
    k = _kit(tmp_path, remap, selection, workers=(1, 2, 3, 4), spares=(5, 6))
    s, y = k.state, k.data.y_train
    before = class_mass(s, y, k.data.n_classes)
    owned2, w2 = s.ownership.owned(2).copy(), s.weight[s.ownership.owned(2)].copy()
    survivors = {r: s.ownership.owned(r).copy() for r in (1, 3, 4)}
    sent, effects = k.lose(2)
    adopt = of(effects, Adopt)
    assert len(adopt) == 1 and adopt[0].rank == 5 and adopt[0].lost == 2
    assert np.array_equal(adopt[0].ids, owned2) and np.array_equal(adopt[0].weights, w2)
    assert not sent and not of(effects, WriteHandoff) and not of(effects, SendHandoff), "nothing to the survivors"
    assert s.alive == [1, 3, 4, 5] and sorted(s.spares) == [6] and s.adopting == {5: s.epoch}
    assert np.array_equal(s.ownership.owned(5), owned2)
    assert all(np.array_equal(s.ownership.owned(r), ids) for r, ids in survivors.items())
    check_ownership(s)
    assert s.ownership.coverage() == 1.0 and np.array_equal(class_mass(s, y, k.data.n_classes), before)
    f = s.failures[-1]
    assert (f.spare, f.rows_to_spare, f.rows_handed, f.rows_dropped) == (5, len(owned2), 0, 0)
    assert s.rows_handed == 0 and s.spare_log[-1] == {"spare": 5, "took": 2, "round": 0, "epoch": 1,
                                                       "rows": len(owned2)}
    # the spare is sent the next round (not the one in flight); the loss is recovered from once it replied
    assert s.waiting_for() == [1, 3, 4] and s.in_round() == [1, 3, 4]
    k.round_with_replies()
    assert f.recovered_round is None and s.adopting == {5: 1} and s.in_round() == [1, 3, 4, 5]
    k.round_with_replies()
    assert f.recovered_round == 1 and f.handoff_time is not None and not s.adopting


def test_a_spare_lost_while_idle_changes_nothing_and_the_next_loss_is_handed_over(tmp_path):
    k = _kit(tmp_path, workers=(1, 2, 3), spares=(4,))
    s = k.state
    before = class_mass(s, k.data.y_train, k.data.n_classes)
    _, effects = k.lose(4)
    assert not s.spares and s.alive == [1, 2, 3] and s.epoch == 0 and not s.failures
    assert s.spare_log[-1]["lost"] and np.array_equal(class_mass(s, k.data.y_train, k.data.n_classes), before)
    sent, effects = k.lose(2)
    assert not of(effects, Adopt) and set(sent) <= {1, 3} and sent, "no spare left: today's handoff"


def test_a_spare_that_never_said_hello_takes_nothing(tmp_path):
    k = _kit(tmp_path, workers=(1, 2, 3))
    s = k.state
    s.spares[4] = type(next(iter(s.members.values())))(4)  # a spare of the job that never said hello
    _, effects = k.lose(2)
    assert not of(effects, Adopt) and 4 in s.spares


def test_a_spare_lost_while_it_takes_over_hands_the_shard_to_the_survivors(tmp_path):
    """Lost after it was given the shard and before its first reply: the shard is handed over from it as
    from any worker (no spare left), and nothing is lost."""
    k = _kit(tmp_path, "full", "loss", workers=(1, 2, 3), spares=(4,))
    s, y = k.state, k.data.y_train
    before = class_mass(s, y, k.data.n_classes)
    owned2 = s.ownership.owned(2).copy()
    k.lose(2)
    assert 4 in s.adopting
    sent, effects = k.lose(4)
    assert set(sent) == {1, 3} and not of(effects, Adopt)
    check_ownership(s)
    assert s.ownership.coverage() == 1.0 and np.allclose(class_mass(s, y, k.data.n_classes), before)
    # the survivors read worker 2's rows back from the real handoff file
    got = np.concatenate([read_shard(seg.path, (seg.start, seg.stop)).ids for m in sent.values() for seg in m.segments])
    assert np.array_equal(np.sort(got), np.sort(owned2))
    k.round_with_replies(ready={s.epoch: 1.0})
    assert all(f.recovered_round is not None for f in s.failures)


@pytest.mark.parametrize("remap,selection", [("full", "loss"), ("representative", "random")])
def test_two_losses_and_one_spare(tmp_path, remap, selection):
    k = _kit(tmp_path, remap, selection, workers=(1, 2, 3, 4), spares=(5,))
    s, y = k.state, k.data.y_train
    before = class_mass(s, y, k.data.n_classes)
    owned2 = s.ownership.owned(2).copy()
    sent, effects = k.lose(2, 3)
    adopt = of(effects, Adopt)
    assert [(a.rank, a.lost) for a in adopt] == [(5, 2)] and np.array_equal(adopt[0].ids, owned2)
    assert np.all(np.isin(owned2, s.ownership.owned(5)))
    assert sent and set(sent) <= {1, 4, 5}, "worker 3's rows go to the others, the spare among them"
    f2, f3 = s.failures[-2:]
    assert f2.spare == 5 and f3.spare is None and f3.rows_handed > 0 and f2.epoch == f3.epoch == s.epoch
    check_ownership(s)
    mass = class_mass(s, y, k.data.n_classes)
    if remap == "full":
        assert s.ownership.coverage() == 1.0 and np.allclose(mass, before)
    else:  # representative rows weighted by the shard they stand for: every class keeps its mass in expectation
        assert np.allclose(mass.sum(), before.sum(), rtol=0.02)
    k.round_with_replies(ready={s.epoch: 1.0})
    k.round_with_replies(ready={s.epoch: 1.0})
    assert f2.recovered_round == f3.recovered_round == 1


def test_a_spare_stands_in_for_a_worker_that_never_joined(tmp_path):
    k = _kit(tmp_path, workers=(1, 2, 3), spares=(4,))
    # the kit dealt already: build a fresh state in the joining phase instead
    s = ClusterState(400, [1, 2, 3], k.state.policy, 0, spares=[4])
    s.apply([Heard(r, P.Hello(r, "h", 10 + r, 1)) for r in (1, 3, 4)], 1.0)
    effects = s.apply([Lost(2, "never-joined", "no hello")], 2.0)
    assert s.alive == [1, 3, 4] and not s.spares and s.spare_log[-1]["took"] == 2
    assert any("stands in" in getattr(e, "text", "") for e in effects)
    s.deal({r: np.arange(i, 400, 3) for i, r in enumerate(s.alive)})
    assert s.ownership.coverage() == 1.0


def test_an_adopted_spare_is_named_deputy_and_promoted(tmp_path):
    k = _kit(tmp_path, "full", "loss", workers=(1, 2), spares=(3, 4))
    s, y = k.state, k.data.y_train
    before = class_mass(s, y, k.data.n_classes)
    k.lose(1)
    k.round_with_replies()
    k.lose(2)
    k.round_with_replies()
    assert s.alive == [3, 4] and not s.spares
    deputy = choose_deputy(s.alive)
    assert deputy == 3
    # the deputy takes over from a replica of this state (snapshot), its own rows handed to the other spare
    rep = P.Replica(s.round, s.epoch, {}, s.snapshot(), state_key(s), None, {}, (0, "h", 1, 1), 0.0, s.term)
    t, effects = takeover_state(rep, 3, make_policy("full", "loss", 0.1, "shard", data=k.data), 0, 0.0, 10.0,
                                s.handoff_file)
    assert t.alive == [4] and t.coordinator == 3 and t.term == s.term + 1
    sent = k.carry_out(effects)
    assert list(sent) == [4]
    check_ownership(t)
    assert t.ownership.coverage() == 1.0 and np.allclose(class_mass(t, y, k.data.n_classes), before)
    assert [d["spare"] for d in t.spare_log] == [3, 4]


def test_a_spare_keeps_the_lost_workers_standby_rows_and_the_survivors_read_nothing_new(tmp_path):
    """Staged representative rows (``rep_selection: random``): the spare's rows are the lost worker's, so
    the lost worker's standby file becomes the spare's (nothing is staged again), the spare sorts where that
    worker did in every deal, and the survivors' read-ahead plans do not change. A loss of the spare later
    hands each survivor exactly the slice it read ahead before the first loss."""
    k = _kit(tmp_path, "representative", "random", workers=(1, 2, 3, 4), spares=(5,))
    s = k.state
    k.stage(s.alive)
    plans = k.standby.plans(s.epoch, s.alive, s.ident_of)
    for r in s.alive:
        assert k.standby.news_for(r, plans) == plans[r]
    files = sorted(p.name for p in (k.run_dir / "shards").iterdir())
    staged2, rep2 = k.standby.staged[2], s.members[2].rep.copy()
    _, effects = k.lose(2)
    assert of(effects, Adopt) and s.ident == {5: 2} and s.ident_of(5) == 2 and s.ident_of(3) == 3
    effects = k.round_with_replies() + k.round_with_replies()
    assert s.failures[0].recovered_round is not None
    assert not of(effects, Stage) and not k.writer.pending, "nothing staged again"
    assert sorted(p.name for p in (k.run_dir / "shards").iterdir()) == files
    assert k.standby.staged[5] == staged2 and 2 not in k.standby.staged and np.array_equal(s.members[5].rep, rep2)
    new = k.standby.plans(s.epoch, s.alive, s.ident_of)
    assert all(k.standby.news_for(r, new) is None for r in (1, 3, 4)), "the survivors hold what they need"
    assert new[5] == plans[2], "the spare reads what the lost worker held"
    handed, _ = k.lose(5)  # no spare left: the spare's (the lost worker's) standby rows go to the survivors
    assert sorted(handed) == [1, 3, 4]
    for dest, m in handed.items():
        [seg] = m.segments
        assert seg.path == str(staged2[2]) and (seg.path, seg.start, seg.stop) in plans[dest]


def test_a_spare_that_takes_a_stale_standby_is_staged_once_it_trains(tmp_path):
    """A lost worker whose rows changed since its rows were staged (handed rows, not staged again yet):
    its file is no draw of the rows the spare takes, so the spare is staged once it trains, as a receiver is."""
    k = _kit(tmp_path, "representative", "random", workers=(1, 2, 3, 4), spares=(5,))
    s = k.state
    k.stage(s.alive)
    s.spares.pop(5)  # no spare for the first loss: 1, 3 and 4 are handed 2's rows (and are stale until staged)
    k.lose(2)
    s.spares[5] = Member(5, "h", 105, 1)
    assert s.standby_stale(3)
    _, effects = k.lose(3)
    assert of(effects, Adopt) and s.standby_stale(5) and 5 not in k.standby.staged
    effects = k.round_with_replies(ready={1: 0.0}) + k.round_with_replies(ready={1: 0.0})
    assert [sorted(e.ranks) for e in of(effects, Stage)] == [[1, 4, 5]]
    assert k.standby.staged[5][2].name.endswith("w0005.h5")


def test_snapshot_and_restore_keep_the_spares(tmp_path):
    k = _kit(tmp_path, workers=(1, 2, 3), spares=(4, 5))
    s = k.state
    k.lose(2)
    r = ClusterState.restore(s.snapshot(), s.policy)
    assert sorted(r.spares) == [5] and r.adopting == s.adopting and r.spare_log == s.spare_log
    assert r.ident == s.ident == {4: 2}
    assert r._idle_spare() == 5 and state_key(r) == state_key(s)


def test_spare_ranks_are_the_highest_and_leave_a_worker():
    assert spare_ranks(6, 1) == [5] and spare_ranks(6, 0) == [] and spare_ranks(3, 1) == [2]
    with pytest.raises(ConfigError, match="executor.spares"):
        spare_ranks(3, 2)


def test_a_spare_that_takes_a_shard_while_the_replies_are_collected_trains_that_round(tmp_path):
    """A loss while rank 0 collects the round's replies (``collecting``): the spare is sent the round in flight
    (``Adopt.in_flight``), waited for and its reply to that round accepted; the loss is recovered from in that
    same round. After the replies were collected it waits for the next round, as above."""
    k = _kit(tmp_path, "full", "loss", workers=(1, 2, 3), spares=(4, 5))
    s = k.state
    s.begin_round()
    s.collecting = True
    _, effects = k.lose(2)
    (adopt,) = of(effects, Adopt)
    assert adopt.rank == 4 and adopt.in_flight
    assert s.in_round() == [1, 3, 4] and s.waiting_for() == [1, 3, 4]
    f = s.failures[-1]
    k.carry_out(k.apply([Heard(r, k.reply(r)) for r in (1, 3, 4)]))
    assert s.waiting_for() == [] and not s.adopting, "the spare's reply to the round in flight is taken"
    k.clock += 1.0
    k.carry_out(s.end_round(k.clock))
    assert f.recovered_round == 0
    s.collecting = False  # after the replies: a loss now waits for the next round
    s.begin_round()
    _, effects = k.lose(3)
    (adopt,) = of(effects, Adopt)
    assert adopt.rank == 5 and not adopt.in_flight and s.in_round() == [1, 4]


def test_a_resume_gives_a_spares_place_back_to_the_relaunched_worker_whose_shard_it_took(tmp_path):
    """A checkpoint written after spare 4 took worker 3's shard, resumed by a job in which rank 3 is a worker
    again and rank 4 a spare: everything the spare held in rank 3's place goes back to rank 3 (which draws the
    same seeds, its own), so the resume can be exact; the checkpoint file keeps whose place a spare holds."""
    from ftmpi.coordinator.lifecycle import give_places_back
    from ftmpi.storage.checkpoint import load, save
    from tests.unit.test_checkpoint import make_snapshot

    snap = make_snapshot()  # members [1, 2, 4], worker 3 dead
    n = snap.params.size
    state = {"round": 12, "step": 36, "m": np.ones(n, np.float32), "v": np.ones(n, np.float32),
             "residual": np.zeros(0, np.float32), "shard": 7}
    snap = dataclasses.replace(snap, rng={**snap.rng, "ident": {"4": 3}}, workers={1: dict(state), 4: dict(state)},
                               screen={"history": {"1": [1.0], "4": [2.0, 3.0]}, "streak": {"4": 1}})
    save(tmp_path / "c.h5", snap)
    snap = load(tmp_path / "c.h5")
    assert snap.rng["ident"] == {"4": 3}, "whose place spare 4 holds is in the checkpoint"
    back, moved = give_places_back(snap, [1, 2, 3])
    assert moved == {4: 3}
    assert np.array_equal(back.owner, np.where(snap.owner == 4, 3, snap.owner)) and not np.any(back.owner == 4)
    assert back.members == [1, 2, 3] and sorted(back.representative) == sorted(
        3 if r == 4 else r for r in snap.representative)
    assert np.array_equal(back.representative[3], snap.representative[4])
    assert sorted(back.workers) == [1, 3] and back.workers[3] is snap.workers[4]
    assert back.screen == {"history": {"1": [1.0], "3": [2.0, 3.0]}, "streak": {"3": 1}}
    assert "ident" not in back.rng and back.rng["seed"] == snap.rng["seed"]
    # nothing to give back: rank 4 is a worker of this job too, or rank 3 is not in it, or no spare took a place
    for alive in ([1, 2, 3, 4], [1, 2]):
        assert give_places_back(snap, alive) == (snap, {})
    plain = dataclasses.replace(snap, rng={"seed": 0})
    assert give_places_back(plain, [1, 2, 3]) == (plain, {})
