"""Rank 0's :class:`ClusterState` in-process (no MPI): the sequences that matter (two losses in one round, two
in consecutive rounds, a zombie, an error report with a reply, resumes with other ranks, every policy), each
checked for ownership, coverage, per-class weight mass and the effects emitted; and the weight maths of the
handoff (issue 15): the expected per-class and per-origin mass survives any sequence of losses."""
from __future__ import annotations

import numpy as np
import pytest

from ftmpi.core import protocol as P
from ftmpi.core.cluster import Accept, ClusterState, Expel, Heard, Log, Lost, Rebuild, SendHandoff, WriteHandoff
from ftmpi.core.handoff import make_policy, pps_systematic
from tests.clusterkit import Kit, make_cluster

POLICIES = [("none", "loss"), ("full", "loss"), ("representative", "random"), ("representative", "loss"),
            ("representative", "stratified"), ("representative", "coreset")]


def check_ownership(s: ClusterState, orphans_ok: bool = False) -> None:
    """Every id owned by exactly one alive worker, dropped, or (only when allowed) orphaned; coverage exact."""
    owner = s.ownership.owner_array()
    assert set(np.unique(owner[owner >= 0]).tolist()) <= set(s.alive)
    dropped = s.dropped_mask()
    assert not np.any(dropped & (owner >= 0))
    if not orphans_ok:
        assert len(s.orphaned()) == 0
    assert s.ownership.coverage() == np.count_nonzero(owner >= 0) / len(owner)


def class_mass(s: ClusterState, y: np.ndarray, n_classes: int) -> np.ndarray:
    owned = np.flatnonzero(s.ownership.owner_array() >= 0)
    return np.bincount(y[owned], weights=s.weight[owned], minlength=n_classes)


def kit(tmp_path, remap: str, selection: str = "random", **kw) -> Kit:
    return make_cluster(tmp_path, remap, n_most_rep=kw.pop("n_most_rep", 0.1), selection=selection,
                        weight=kw.pop("weight", "shard"), **kw)


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


# ------------------------------------------------------------------------------------------ sequences
@pytest.mark.parametrize("remap,selection", POLICIES)
def test_two_workers_lost_in_one_round(tmp_path, remap, selection):
    c = kit(tmp_path, remap, selection)
    s, y = c.state, c.data.y_train
    before = {r: s.ownership.owned(r) for r in s.alive}
    mass0 = class_mass(s, y, 4)
    msgs, effects = c.lose(2, 3)
    f2, f3 = s.failures
    assert s.epoch == 1 and f2.epoch == f3.epoch == 1, "one epoch for both"
    assert of(effects, Rebuild) == [Rebuild([0, 1, 4])]
    check_ownership(s)
    assert set(msgs) <= {1, 4} and all(m.epoch == 1 for m in msgs.values())
    handed = f2.rows_handed + f3.rows_handed
    assert sum(len(g) for m in msgs.values() for g in m.segments) == handed
    assert (len(of(effects, WriteHandoff)) == 1) == (handed > 0), "staged or not, the loss writes one file at most"
    for r in (1, 4):  # survivors keep what they had and gain only the dead workers' rows
        gained = np.setdiff1d(s.ownership.owned(r), before[r])
        assert np.all(np.isin(before[r], s.ownership.owned(r)))
        assert np.all(np.isin(gained, np.concatenate([before[2], before[3]])))
    n = len(y)
    assert s.ownership.coverage() == (n - f2.rows_dropped - f3.rows_dropped) / n
    if remap == "full":
        assert s.ownership.coverage() == 1.0 and np.allclose(class_mass(s, y, 4), mass0)
    elif remap == "none":
        assert handed == 0 and not msgs and len(s.ownership.dropped()) == len(before[2]) + len(before[3])
    else:
        assert f2.rows_handed == pytest.approx(0.1 * len(before[2]), abs=1)
        assert class_mass(s, y, 4).sum() == pytest.approx(n), "the lost mass is carried over in all"


@pytest.mark.parametrize("remap,selection", POLICIES)
def test_two_lost_in_consecutive_rounds_while_the_first_handoff_is_being_taken(tmp_path, remap, selection):
    """Worker 3 is handed worker 2's rows, and is lost in the next round before it reported training on them:
    its share of them is passed on with its own rows; worker 2's loss is recovered once the survivors still
    alive (1 and 4) have reported training on its rows."""
    c = kit(tmp_path, remap, selection)
    s, y = c.state, c.data.y_train
    mass = class_mass(s, y, 4)
    own3 = s.ownership.owned(3)
    if selection != "random":
        for r in s.alive:
            s.members[r].rep = s.ownership.owned(r)[:9]
    msgs, _ = c.lose(2)
    got3 = sum(len(g) for g in msgs[3].segments) if 3 in msgs else 0
    # round: 1 and 4 reply, having trained on epoch 1's rows; 3 does not reply and is lost at the deadline
    s.begin_round()
    effects = c.apply([Heard(r, c.reply(r, ready={1: c.clock})) for r in (1, 4)])
    assert [e.rank for e in of(effects, Accept)] == [1, 4] and s.waiting_for() == [3]
    msgs2, effects2 = c.lose(3, how="timeout")
    f2, f3 = s.failures
    assert f3.epoch == 2 and s.suspects == {3}
    if remap == "full":
        assert f3.rows_handed == len(own3) + got3, "its share of worker 2's rows goes on with its own"
        assert s.ownership.coverage() == 1.0
    check_ownership(s)
    assert set(msgs2) <= {1, 4}
    s.end_round(c.clock + 1)
    assert f2.recovered_round == 0, "1 and 4, still alive, trained on epoch 1's rows"
    if msgs2:
        assert f3.recovered_round is None, "1 and 4 have not trained on epoch 2's rows yet"
        c.round_with_replies(ready={2: c.clock})
        assert f3.recovered_round == 1
    else:  # nothing handed: nothing to wait for
        assert f3.recovered_round == 0
    assert not s._awaiting
    if remap == "representative":
        assert class_mass(s, y, 4).sum() == pytest.approx(len(y))
    elif remap == "full":
        assert np.allclose(class_mass(s, y, 4), mass)
    else:
        assert len(s.ownership.dropped()) == len(y) - sum(len(s.ownership.owned(r)) for r in (1, 4))


def test_a_zombies_late_reply_is_expelled_and_changes_nothing(tmp_path):
    c = kit(tmp_path, "full")
    s = c.state
    c.lose(3, how="timeout")
    snap = s.snapshot()
    mass = class_mass(s, c.data.y_train, 4)
    s.begin_round()
    late = P.Reply(0, 0, 3, np.ones(1), 0.1, 100.0, 100, np.arange(5))  # its reply to the round it missed
    effects = c.apply([Heard(3, late), Heard(3, P.Error(3, "h", "woke up and crashed"))])
    assert effects == [Expel(3, "declared dead earlier; its messages are ignored")] * 2
    assert s.stale == 2 and s.waiting_for() == [1, 2, 4] and len(s.failures) == 1
    assert np.array_equal(s.ownership.owner_array(), snap["owner"]) and s.epoch == snap["epoch"]
    assert np.array_equal(class_mass(s, c.data.y_train, 4), mass)
    check_ownership(s)


@pytest.mark.parametrize("split", [False, True])
def test_an_error_report_in_the_same_round_as_the_reply_still_declares_the_worker_dead(tmp_path, split):
    """The worker replied, then crashed and said so (issue 14, item 4): its reply counts, and it is lost now,
    not after the next round's full timeout."""
    c = kit(tmp_path, "full")
    s = c.state
    mass = class_mass(s, c.data.y_train, 4)
    s.begin_round()
    reply, err = Heard(2, c.reply(2)), Heard(2, P.Error(2, "h", "RuntimeError: boom"))
    effects = c.apply([reply]) + c.apply([err]) if split else c.apply([reply, err])
    assert [e.rank for e in of(effects, Accept)] == [2]
    [f] = s.failures
    assert (f.rank, f.how, f.reason) == (2, "error", "RuntimeError: boom") and not s.members[2].alive
    assert sorted(e.rank for e in of(effects, SendHandoff)) == [1, 3, 4] and of(effects, WriteHandoff)
    check_ownership(s)
    assert s.ownership.coverage() == 1.0 and np.allclose(class_mass(s, c.data.y_train, 4), mass)


@pytest.mark.parametrize("workers", [(1, 3), (1, 2, 3, 4, 5, 6)])
def test_resume_with_fewer_and_with_more_workers(tmp_path, workers):
    c = kit(tmp_path, "representative", "random")
    s, y = c.state, c.data.y_train
    c.lose(2)
    snap = s.snapshot()
    mass = class_mass(s, y, 4)
    r = ClusterState(len(y), list(workers), s.policy, 0)
    moved = r.resume(snap)
    assert r.epoch == snap["epoch"] + 1 and r.round == snap["round"] and len(r.failures) == 1
    check_ownership(r)
    assert np.array_equal(r.dropped_mask(), snap["dropped"]), "dropped rows stay dropped"
    assert np.allclose(class_mass(r, y, 4), mass), "rows move with their weights"
    sizes = [len(r.ownership.owned(w)) for w in workers]
    if len(workers) == 2:  # fewer: 1 and 3 keep their rows, 4's are spread (2 was lost already)
        for w in (1, 3):
            assert np.all(np.isin(s.ownership.owned(w), r.ownership.owned(w)))
        assert moved == len(s.ownership.owned(4))
    else:  # more: every owned row is spread evenly again
        assert max(sizes) - min(sizes) <= 1 and moved == int((snap["owner"] >= 0).sum())


def test_a_run_that_lost_every_worker_keeps_the_last_rows_for_a_resume(tmp_path):
    """Issue 14, item 6: the last worker's rows are orphaned (not dropped), so a resume re-assigns them."""
    c = kit(tmp_path, "representative", "random")
    s = c.state
    for r in (1, 2, 3):
        c.lose(r)
    cov = s.ownership.coverage()
    last = s.ownership.owned(4)
    msgs, effects = c.lose(4)
    f = s.failures[-1]
    assert not msgs and not of(effects, Rebuild) and s.alive == []
    assert (f.rows_handed, f.rows_dropped, f.rows_orphaned) == (0, 0, len(last))
    assert np.array_equal(s.orphaned(), last) and s.ownership.coverage() == 0.0
    check_ownership(s, orphans_ok=True)
    r = ClusterState(s.ownership.n_total, [1, 2], s.policy, 0)
    r.resume(s.snapshot())
    check_ownership(r)
    assert r.ownership.coverage() == pytest.approx(cov)


def test_unreadable_handed_rows_are_dropped_with_a_warning(tmp_path):
    """Issue 14, item 9: a survivor reports a slice it could not read; rank 0 drops exactly those rows."""
    c = kit(tmp_path, "full")
    s = c.state
    msgs, _ = c.lose(2)
    seg = msgs[3].segments[0]
    s.begin_round()
    effects = c.apply([Heard(3, c.reply(3, unreadable=[(1, seg.path, seg.start, seg.stop)]))])
    assert any("could not read" in e.text for e in of(effects, Log))
    assert s.rows_unreadable == len(seg) and len(s.ownership.dropped()) == len(seg)
    check_ownership(s)


def test_a_fault_mark_is_attributed_only_to_the_process_that_wrote_it_in_this_launch(tmp_path):
    """Issue 14, item 12: an old mark (before this launch) or another process's is never a new loss's."""
    c = kit(tmp_path, "full")
    s = c.state
    s.launch_time = 500.0
    s.members[1].pid, s.members[2].pid, s.members[3].pid = 11, 22, 33
    c.apply([Lost(1, "timeout", mark={"time": 400.0, "kind": "kill", "pid": 11}),  # before this launch
             Lost(2, "timeout", mark={"time": 900.0, "kind": "kill", "pid": 99}),  # another process
             Lost(3, "timeout", mark={"time": 900.0, "kind": "hang", "pid": 33})])
    assert [f.kind for f in s.failures] == [None, None, "hang"]
    assert s.failures[2].detection_latency == pytest.approx(c.clock - 900.0)


def test_snapshot_and_restore_give_the_same_state(tmp_path):
    c = kit(tmp_path, "representative", "loss")
    c.lose(2)
    c.round_with_replies(ready={1: 5.0})
    snap = c.state.snapshot()
    again = ClusterState.restore(snap, c.state.policy).snapshot()
    assert snap.keys() == again.keys()
    for k in ("owner", "dropped", "weight"):
        assert np.array_equal(snap[k], again[k]), k
    reps = snap.pop("representative"), again.pop("representative")
    assert reps[0].keys() == reps[1].keys() and all(np.array_equal(reps[0][r], reps[1][r]) for r in reps[0])
    for k, v in snap.items():
        if not isinstance(v, np.ndarray):
            assert v == again[k], k


def test_phases_are_checked(tmp_path):
    c = kit(tmp_path, "full")
    with pytest.raises(RuntimeError, match="training -> training"):
        c.state.deal({})


# ----------------------------------------------------------------------------------- issue 15: weights
def test_pps_systematic_hits_each_row_in_proportion_to_its_weight():
    w = np.array([1.0, 1.0, 5.0, 0.5, 12.0, 0.5])
    hits = np.zeros(len(w))
    rng = np.random.default_rng(0)
    for _ in range(20000):
        pos, h = pps_systematic(w, 4, rng)
        assert h.sum() == 4
        hits[pos] += h
    assert np.allclose(hits / 20000, 4 * w / w.sum(), atol=0.02)


def _origin_mass(s: ClusterState, origin: np.ndarray, n_origins: int) -> np.ndarray:
    owned = np.flatnonzero(s.ownership.owner_array() >= 0)
    return np.bincount(origin[owned], weights=s.weight[owned], minlength=n_origins)


def _scenario(tmp_path, name: str, seed: int, weight: str = "shard", selection: str = "random",
              n_most_rep: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-class and per-origin mass after the losses of one scenario, minus what they should be."""
    c = make_cluster(tmp_path, "representative", n_most_rep=n_most_rep, selection=selection, weight=weight,
                     seed=seed, n=600, sub="x")
    c.standby = None  # type: ignore[assignment]  (no staging: the draw at the loss, nothing written)
    s, y = c.state, c.data.y_train
    origin = s.ownership.owner_array().astype(np.int64)
    want_c, want_o = class_mass(s, y, 4), _origin_mass(s, origin, 5)
    if name == "sequence":  # 2, then 3 (which holds some of 2's rows) a round later
        c.apply([Lost(2, "ulfm")])
        c.apply([Lost(3, "ulfm")])
    elif name == "one-round":  # after a first loss, two (both holding weighted rows) in one round
        c.apply([Lost(2, "ulfm")])
        c.apply([Lost(3, "ulfm"), Lost(4, "ulfm")])
    elif name == "after-resume":
        c.apply([Lost(2, "ulfm")])
        s2 = ClusterState(len(y), [1, 3, 4], s.policy, seed + 1000)
        s2.resume(s.snapshot())
        s2.apply([Lost(3, "ulfm")], 1.0)
        s = s2
    elif name == "receiver":  # worker 1 receives rows of 2 and of 3, then is lost itself
        c.apply([Lost(2, "ulfm")])
        c.apply([Lost(3, "ulfm")])
        c.apply([Lost(1, "ulfm")])
    check_ownership(s)
    return class_mass(s, y, 4) - want_c, _origin_mass(s, origin, 5) - want_o


@pytest.mark.parametrize("name", ["sequence", "one-round", "after-resume", "receiver"])
def test_expected_mass_per_class_and_per_origin_survives_the_losses(tmp_path, name):
    """Averaged over many seeds, the mass each class and each original shard holds after the losses equals
    what it held before, within sampling error (4 standard errors). Drawing uniformly and giving every
    chosen row the same M/k (the rule before issue 15) misses the per-origin mass of twice-handed rows by
    far more than that."""
    diffs = [_scenario(tmp_path, name, seed) for seed in range(300)]
    for k, what in ((0, "class"), (1, "origin")):
        d = np.array([x[k] for x in diffs])
        mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / np.sqrt(len(d))
        assert np.all(np.abs(mean) <= 4 * se + 1e-6), (what, mean.round(2), se.round(2))


def test_the_rule_before_the_fix_loses_the_mass_of_rows_handed_twice(tmp_path):
    """``rep_weight: shard-legacy`` (kept for the study's "before" row: a uniform draw, ``M/k`` each): the
    same check as above fails it, on the origin whose rows were handed twice."""
    diffs = [_scenario(tmp_path, "sequence", seed, "shard-legacy") for seed in range(300)]
    d = np.array([x[1] for x in diffs])
    mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / np.sqrt(len(d))
    assert mean[2] < -8 * se[2], (mean.round(1), se.round(1))  # origin 2: its rows went to 3, then on


@pytest.mark.parametrize("name", ["sequence", "one-round", "after-resume", "receiver"])
def test_the_coreset_keeps_every_class_mass_exactly(tmp_path, name):
    """``rep_selection: coreset``, ``rep_weight: shard``: every centre weighs its cluster's mass, so each class
    keeps its mass exactly (not only in expectation) through every sequence of losses, as long as every lost
    shard's budget has a row for each of its classes (30 %: a 29-row shard of 4 classes gets 9)."""
    for seed in range(3):
        d_class, _ = _scenario(tmp_path, name, seed, selection="coreset", n_most_rep=0.3)
        assert np.allclose(d_class, 0.0, atol=1e-6), (seed, d_class)


def _two_sequential(tmp_path, weight: str, selection: str, late: bool = False) -> tuple[Kit, list[np.ndarray]]:
    c = make_cluster(tmp_path, "representative", n_most_rep=0.3, selection=selection, weight=weight, n=600,
                     sub=f"{weight}-{selection}")
    s, y = c.state, c.data.y_train
    masses = [class_mass(s, y, 4)]
    for r in (2, 3):  # 3 holds some of 2's rows when it is lost
        if late:  # near the end of training: the damped cap binds
            s.round = 28
        c.lose(r)
        check_ownership(s)
        masses.append(class_mass(s, y, 4))
    return c, masses


@pytest.mark.parametrize("weight", ["one", "damped", "sqrt", "classmix", "shard"])
def test_each_weight_rule_after_two_sequential_losses(tmp_path, weight):
    """Under the coreset (each class's unbiased handed mass is exact) every rule keeps each class's mass between
    its survivors' own part and its mass before (``shard``: exactly its mass; ``classmix``: exactly its share
    of the whole); ``one`` loses mass; late in training ``damped`` loses some, early it is ``shard``."""
    c, masses = _two_sequential(tmp_path, weight, "coreset", late=True)
    s, y = c.state, c.data.y_train
    kept = np.zeros(len(y), bool)
    for r in (1, 4):
        kept[np.flatnonzero(s.ownership.owner_array() == r)] = True
    floor = np.bincount(y[kept & (s.weight == 1.0)], minlength=4)  # rows of 1 and 4 never handed: weight 1
    for before, after in zip(masses[:-1], masses[1:], strict=True):
        assert np.all(after <= before + 1e-6), (weight, before, after)
    assert np.all(masses[-1] >= floor - 1e-6)
    if weight == "shard":
        assert np.allclose(masses[-1], masses[0])
    elif weight == "classmix":
        assert np.allclose(masses[-1] / masses[-1].sum(), masses[0] / masses[0].sum())
        assert masses[-1].sum() < masses[0].sum()
    else:
        assert masses[-1].sum() < masses[0].sum() - 1, weight
    if weight == "damped":
        _, early = _two_sequential(tmp_path, "damped", "coreset")
        assert np.allclose(early[-1], masses[0]), "cap above M/k early in training: damped is shard"


@pytest.mark.parametrize("weight", ["damped", "sqrt", "classmix", "one"])
def test_random_choice_with_each_weight_rule(tmp_path, weight):
    """The staged random choice under every rule: ownership exact, every handed row weighs at least its own
    weight and at most what ``shard`` would give it, the failure log names the mean weight of a draw."""
    c, masses = _two_sequential(tmp_path, weight, "random", late=True)
    s = c.state
    assert np.all(masses[-1] <= masses[0] * 1.5)  # no class gains much (random: only in expectation)
    for f in s.failures:
        assert f.rows_handed > 0
        assert (f.row_weight is None) == (weight == "one")


def test_coreset_policy_needs_the_rows_and_workers_do_not_score_for_it():
    with pytest.raises(ValueError, match="coreset"):
        make_policy("representative", "coreset", 0.1, "shard")
    with pytest.raises(ValueError, match="rep_weight"):
        make_policy("representative", "random", 0.1, "bogus")
    with pytest.raises(ValueError, match="classmix"):
        make_policy("representative", "random", 0.1, "classmix")
    with pytest.raises(ValueError, match="damped"):
        make_policy("representative", "loss", 0.1, "damped")
    from ftmpi.core.handoff import SCORED

    assert "coreset" not in SCORED and "random" not in SCORED and set(SCORED) == {"loss", "stratified"}


def test_loss_and_stratified_are_biased_and_say_so():
    assert make_policy("representative", "loss", 0.1, "shard").biased
    assert make_policy("representative", "stratified", 0.1, "shard").biased
    assert not make_policy("representative", "random", 0.1, "shard").biased


@pytest.mark.parametrize("remap,selection", [("full", "loss"), ("representative", "random")])
def test_a_handoff_file_that_cannot_be_written_drops_its_rows_and_keeps_the_staged_ones(tmp_path, remap, selection):
    """Issue 14, item 10: the handoff write fails (full disk); the rows it was to carry are dropped with a
    warning, segments of standby files still go out, and a receiver left with nothing is not waited for."""
    c = kit(tmp_path, remap, selection)
    s = c.state
    effects = c.apply([Lost(2, "ulfm")])
    write = of(effects, WriteHandoff)
    sends = {e.rank: e.msg for e in of(effects, SendHandoff)}
    assert write, "this loss needs a fresh handoff file"
    fresh = {r: set(v.tolist()) for r, v in write[0].ids.items()}
    again = s.handoff_unwritten(1, "[Errno 28] No space left on device")
    logs = [e.text for e in of(again, Log)]
    assert len(logs) == 1 and "could not be written" in logs[0] and "No space left" in logs[0]
    n_fresh = sum(len(v) for v in fresh.values())
    assert s.rows_unwritten == n_fresh and set(s.ownership.dropped().tolist()) >= set().union(*fresh.values())
    check_ownership(s)
    left = {e.rank: e.msg for e in of(again, SendHandoff)}
    for r in sends:
        kept = [(g.path, g.start, g.stop) for g in sends[r].segments if g.path != write[0].path]
        assert kept == ([(g.path, g.start, g.stop) for g in left[r].segments] if r in left else [])
    for r in sends:
        if r not in left:
            assert r not in s._receivers[1], "nothing will arrive at that survivor: recovery does not wait for it"
    c.round_with_replies(**({"ready": {1: c.clock}} if left else {}))  # with no file: nobody reports the epoch
    assert s.failures[0].recovered_round is not None
