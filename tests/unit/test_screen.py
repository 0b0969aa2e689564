"""Bad numbers never reach the model (issue 23): the screening rule (:mod:`ftmpi.core.screen`), the global
model's aggregation of screened updates (:meth:`GlobalModel.aggregate`), a worker treated as failed
(:attr:`How.REJECTED`), the injected ``nan`` / ``corrupt`` faults, and checkpoints that never hold NaN."""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from ftmpi.config import load_config, parse_fault
from ftmpi.coordinator.globalmodel import GlobalModel
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Expel, Lost
from ftmpi.core.kinds import How
from ftmpi.core.screen import HISTORY, Screen, judge, measure
from ftmpi.errors import ConfigError, Diverged, ExitCode
from ftmpi.faults import FaultKind, tamper
from ftmpi.model.codec import decode, encode
from ftmpi.storage.data import Dataset
from tests.clusterkit import make_cluster

F = 10.0


# ------------------------------------------------------------------------------------------- the rule
def test_measure_is_the_l2_norm_without_overflow_and_says_what_is_not_finite():
    assert measure(np.array([3.0, 4.0], np.float32)) == pytest.approx(5.0)
    assert measure(np.array([3e30, 4e30], np.float32)) == pytest.approx(5e30, rel=1e-6)  # float32 squares overflow
    assert math.isnan(measure(np.array([1.0, np.nan, np.inf], np.float32)))
    assert measure(np.array([1.0, -np.inf], np.float32)) == math.inf
    assert measure(np.zeros(0, np.float32)) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_an_update_that_is_not_finite_is_rejected(bad):
    v = judge({1: 1.0, 2: bad, 3: 1.1}, {}, F)
    assert [r for r in v if v[r].accepted] == [1, 3]
    assert "not finite" in v[2].reason and ("NaN" if math.isnan(bad) else "Inf") in v[2].reason


def test_an_outlier_is_rejected_against_the_others_median_even_with_two_workers():
    v = judge({1: 1.0, 2: 1e6}, {}, F)  # leave-one-out: the outlier does not raise its own reference
    assert v[1].accepted and not v[2].accepted
    assert v[2].reference == 1.0 and "1e+06 times its reference" in v[2].reason
    assert not judge({1: 1.0, 2: 0.9, 3: 1.2, 4: F * 1.2 + 0.1}, {}, F)[4].accepted


def test_an_honest_spread_is_accepted():
    rng = np.random.default_rng(0)
    for _ in range(200):  # norms spread over a factor of 4 (e.g. label-skewed shards): nothing rejected
        norms = {r: float(x) for r, x in enumerate(rng.uniform(0.5, 2.0, 8), start=1)}
        assert all(v.accepted for v in judge(norms, {}, F).values())
    small = judge({1: 1.0, 2: 1e-9, 3: 1.1}, {}, F)  # a tiny update is never rejected
    assert small[2].accepted


def test_the_workers_own_history_keeps_a_consistently_larger_worker_in():
    # worker 4 always sends 30x the others' norm (say a shard of its own classes): its history vouches for it
    hist = {4: [30.0] * HISTORY}
    v = judge({1: 1.0, 2: 1.0, 3: 1.0, 4: 31.0}, hist, F)
    assert v[4].accepted and v[4].reference == 30.0
    assert not judge({1: 1.0, 2: 1.0, 3: 1.0, 4: 31.0}, {}, F)[4].accepted  # without it: rejected
    # a single worker: only its own history; none at all: only finiteness
    assert not judge({1: 50.0}, {1: [1.0, 1.2]}, F)[1].accepted
    assert judge({1: 1e30}, {}, F)[1].accepted and judge({1: 1e30}, {}, F)[1].reference is None


def test_a_round_in_which_every_norm_grows_is_accepted():
    # all workers' norms 50x their history (a new phase of training): the others' median follows
    hist = {r: [1.0] * HISTORY for r in (1, 2, 3)}
    assert all(v.accepted for v in judge({1: 50.0, 2: 55.0, 3: 48.0}, hist, F).values())


def test_k_rejections_in_a_row_make_a_worker_lost_and_an_accepted_update_resets_the_count():
    s = Screen(F, 3)
    honest = {1: 1.0, 2: 1.1, 3: 0.9}
    s.round(0, honest)
    assert s.round(1, {**honest, 2: math.nan}).lost == {}
    assert s.round(2, {**honest, 2: 1e9}).lost == {}
    assert s.round(3, honest).rejected == {} and s.streak[2] == 0  # accepted: the count starts again
    assert s.round(4, {**honest, 2: math.nan}).lost == {}
    assert s.round(5, {**honest, 2: 1e9}).lost == {}
    out = s.round(6, {**honest, 2: math.inf})
    assert list(out.lost) == [2] and "rejected 3 rounds in a row" in out.lost[2] and "Inf" in out.lost[2]
    assert 2 not in s.history and s.rejected == {2: 5}
    rec = s.record()
    assert rec["rejected"] == 5 and rec["rejected_by_rank"] == {"2": 5} and len(rec["rejections"]) == 5
    assert rec["rejections"][0]["norm"] == "nan" and rec["max_accepted_ratio"] < F


def test_history_holds_only_accepted_norms():
    s = Screen(F, 100)
    for rnd in range(HISTORY):
        s.round(rnd, {1: 1.0, 2: 1.0})
    s.round(HISTORY, {1: 1.0, 2: 1e6})
    assert list(s.history[2]) == [1.0] * HISTORY


def test_most_updates_not_finite_is_the_models_divergence_not_the_workers():
    s = Screen(F, 1)
    out = s.round(0, {1: math.nan, 2: math.inf, 3: 1.0})
    assert out.diverged and out.lost == {} and s.rejected == {}
    assert not s.round(1, {1: math.nan, 2: 1.0, 3: 1.0}).diverged


def test_screening_off_accepts_everything():
    s = Screen(F, 1, enabled=False)
    out = s.round(0, {1: math.nan, 2: 1e30, 3: 1.0})
    assert out.accepted == [1, 2, 3] and out.lost == {} and not out.diverged and s.record()["rejected"] == 0


# ------------------------------------------------------------------------------- the global model
def _gm(*sets: str) -> GlobalModel:
    cfg = load_config(None, ["model.type=logreg", "executor.aggregate=uniform", *sets], env={})
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    y = (np.arange(60) % 3).astype(np.int32)
    return GlobalModel(cfg, Dataset("synthetic", X, y, X[:20], y[:20], 3, ("a", "b", "c"), "test"))


def _reply(gm: GlobalModel, rank: int, update: np.ndarray, loss: float = 0.5, rnd: int = 0) -> P.Reply:
    return P.Reply(0, rnd, rank, update.astype(np.float32), loss, 10.0, 10, np.zeros(0, np.int64))


def test_aggregate_leaves_a_nan_update_out_and_averages_the_others():
    gm = _gm()
    n = gm.model.n_params
    W0 = gm.W.copy()
    ups = {1: np.full(n, 0.01), 2: np.full(n, np.nan), 3: np.full(n, 0.03)}
    loss, note = gm.aggregate({r: _reply(gm, r, u, loss=float(r)) for r, u in ups.items()}, 0, 10)
    assert np.allclose(gm.W - W0, 0.02) and loss == pytest.approx(2.0)  # the mean of 1 and 3 only
    assert "worker 2's update rejected" in note and gm.screen_row() == {"rejected": 1, "norm_ratio": pytest.approx(3.0)}
    assert gm.iters_done == 10 and gm.screened.lost == {}


def test_aggregate_leaves_a_scaled_update_out_and_the_k_th_rejection_in_a_row_loses_the_worker():
    gm = _gm("executor.reject_limit=2")
    n = gm.model.n_params
    honest = {r: np.full(n, 0.01 * r) for r in (1, 2, 3)}
    for rnd in range(3):
        gm.aggregate({r: _reply(gm, r, u, rnd=rnd) for r, u in honest.items()}, rnd, 10)
    W0 = gm.W.copy()
    bad = {**honest, 3: honest[3] * 1e4}
    gm.aggregate({r: _reply(gm, r, u) for r, u in bad.items()}, 3, 10)
    assert np.allclose(gm.W - W0, 0.015) and gm.screened.lost == {}
    gm.aggregate({r: _reply(gm, r, u) for r, u in bad.items()}, 4, 10)
    assert list(gm.screened.lost) == [3] and "rejected 2 rounds in a row" in gm.screened.lost[3]


def test_the_rule_holds_for_gradients_too():
    gm = _gm("executor.send_gradients=true", "optimizer.name=sgd", "optimizer.learning_rate=0.1")
    n = gm.model.n_params
    W0 = gm.W.copy()
    ups = {1: np.full(n, 1.0), 2: np.full(n, 1.0), 3: np.full(n, 1e5)}
    gm.aggregate({r: _reply(gm, r, u) for r, u in ups.items()}, 0, 10)
    assert gm.screened.rejected.keys() == {3} and np.allclose(W0 - gm.W, 0.1)


def test_a_quantized_update_is_screened_after_decoding():
    gm = _gm("executor.quantize=4")
    n = gm.model.n_params
    rng = np.random.default_rng(1)
    ups = {r: encode(rng.standard_normal(n).astype(np.float32) * 0.01, gm.tensors, 4, False, r) for r in (1, 2, 3)}
    ups[2] = tamper([parse_fault("nan:2@0")], 2, 0, ups[2])
    ups[3] = tamper([parse_fault("corrupt:3@0:1000")], 3, 0, ups[3])
    gm.aggregate({r: P.Reply(0, 0, r, u, 0.5, 10.0, 10, np.zeros(0, np.int64)) for r, u in ups.items()}, 0, 10)
    assert gm.screened.accepted == [1] and sorted(gm.screened.rejected) == [2, 3]


def test_most_updates_not_finite_stop_the_run_with_the_model_untouched():
    gm = _gm()
    n = gm.model.n_params
    W0 = gm.W.copy()
    ups = {1: np.full(n, np.nan), 2: np.full(n, np.inf), 3: np.full(n, 0.01)}
    with pytest.raises(Diverged, match="2 of the 3 workers' updates are not finite") as exc:
        gm.aggregate({r: _reply(gm, r, u) for r, u in ups.items()}, 7, 10)
    assert exc.value.exit_code == ExitCode.DIVERGED == 8
    assert np.array_equal(gm.W, W0) and gm.iters_done == 0


def test_a_global_model_that_would_not_be_finite_is_refused_and_rolled_back():
    # screening off: nothing stops a huge gradient, but the server step would overflow the parameters
    gm = _gm("executor.screen=false", "executor.send_gradients=true", "optimizer.name=sgd",
             "optimizer.momentum=0.5", "optimizer.learning_rate=1e38")
    n = gm.model.n_params
    gm.aggregate({1: _reply(gm, 1, np.full(n, 2.0))}, 0, 10)
    W1, st = gm.W.copy(), gm.opt.state()
    assert np.isfinite(W1).all()
    with pytest.raises(Diverged, match="would hold NaN/Inf"):
        gm.aggregate({1: _reply(gm, 1, np.full(n, 2.0))}, 1, 10)
    assert np.array_equal(gm.W, W1) and gm.iters_done == 10
    assert gm.opt.step_count == st["step"] and np.array_equal(gm.opt.m, st["m"])


# ------------------------------------------------------------------------ a worker treated as failed
def test_a_rejected_worker_is_lost_told_why_and_its_rows_go_to_the_others(tmp_path):
    kit = make_cluster(tmp_path, "full", selection="random", weight="one")
    s = kit.state
    owned = s.ownership.owned(2).copy()
    effects = kit.apply([Lost(2, How.REJECTED, "its updates were rejected 3 rounds in a row")])
    f = s.failures[-1]
    assert f.how is How.REJECTED and f.record()["how"] == "rejected" and 2 not in s.alive
    assert 2 not in s.suspects, "it was told to leave; it is not a silent process that may speak again"
    told = [e for e in effects if isinstance(e, Expel)]
    assert len(told) == 1 and told[0].rank == 2 and "rejected 3 rounds in a row" in told[0].why
    assert f.rows_handed == len(owned) and set(np.concatenate([s.ownership.owned(r) for r in s.alive])) >= set(owned)


# -------------------------------------------------------------------------------- injected faults
def test_the_fault_kinds_parse_and_refuse_rank_0():
    assert parse_fault("nan:2@5").kind == "nan" and FaultKind("nan").tampers and FaultKind("corrupt").tampers
    c = parse_fault("corrupt:3@4:250")
    assert (c.kind, c.rank, c.round, c.seconds) == ("corrupt", 3, 4, 250.0) and str(c) == "corrupt:3@4:250"
    assert parse_fault("corrupt:3@4").seconds == 0 and not FaultKind("kill").tampers
    assert parse_fault("flip:2@20") == parse_fault("corrupt:2@20")  # the names for the two corruptions
    assert parse_fault("scale:2@20:1000") == parse_fault("corrupt:2@20:1000")
    for bad in ("nan:0@5", "corrupt:0@5", "nan:2@5:3", "corrupt:2@5:0", "corrupt:2@5:x", "nan:2@start",
                "flip:2@5:3", "scale:2@5", "scale:2@5:1", "flip:0@5"):
        with pytest.raises(ConfigError):
            parse_fault(bad)


def test_tamper_changes_only_the_due_workers_update():
    u = np.array([0.5, -0.25, 2.0, 0.0], np.float32)
    faults = [parse_fault("nan:2@5"), parse_fault("corrupt:3@5"), parse_fault("corrupt:4@5:-100")]
    assert tamper(faults, 1, 5, u.copy()).tolist() == u.tolist()
    assert tamper(faults, 2, 4, u.copy()).tolist() == u.tolist()
    assert np.isnan(tamper(faults, 2, 5, u.copy())).all()
    flipped = tamper(faults, 3, 5, u.copy())  # 0.5, the largest below 1, becomes 0.5 * 2**128: finite, huge
    assert np.isfinite(flipped).all() and flipped[0] == pytest.approx(0.5 * 2.0**128, rel=1e-6)
    assert flipped[1:].tolist() == u[1:].tolist()
    assert tamper(faults, 4, 5, u.copy()).tolist() == (u * -100).tolist()


def test_tamper_acts_on_a_quantized_payload():
    tensors = [slice(0, 6), slice(6, 10)]
    v = np.linspace(-0.3, 0.3, 10).astype(np.float32)
    pl = encode(v, tensors, 8, False, 0)
    base = decode(pl, tensors, 10).copy()
    assert np.isnan(decode(tamper([parse_fault("nan:1@0")], 1, 0, pl), tensors, 10)).all()
    assert np.allclose(decode(tamper([parse_fault("corrupt:1@0:10")], 1, 0, pl), tensors, 10), base * 10, atol=1e-5)
    assert measure(decode(tamper([parse_fault("corrupt:1@0")], 1, 0, pl), tensors, 10)) > 1e30


# ------------------------------------------------------------------------------------ checkpoints
def test_a_checkpoint_of_params_that_are_not_finite_is_never_written_nor_resumed_from(tmp_path):
    import dataclasses

    from ftmpi.storage import checkpoint as C
    from tests.unit.test_checkpoint import make_snapshot

    good = make_snapshot()
    C.save(C.ckpt_path(tmp_path, 10), good)
    bad = dataclasses.replace(good, round=20, params=np.where(np.arange(good.params.size) == 3, np.nan,
                                                              good.params).astype(np.float32))
    with pytest.raises(ValueError, match="not finite"):
        C.save(C.ckpt_path(tmp_path, 20), bad)
    assert not C.ckpt_path(tmp_path, 20).exists()
    path, snap, warnings = C.newest_valid(tmp_path)
    assert path == C.ckpt_path(tmp_path, 10) and np.isfinite(snap.params).all() and warnings == []


def test_a_spare_inherits_the_lost_workers_record_and_its_update_is_summed_in_that_workers_place():
    """A hot spare that took worker 2's shard (issue 24): screened against worker 2's history, as worker 2 would
    have been, and its update added where worker 2's was (float sums depend on order): the aggregate is the
    one worker 2's own reply would have given, bit for bit."""
    rng = np.random.default_rng(3)
    ups = {r: rng.normal(size=_gm().model.n_params).astype(np.float32) * 10 ** (r % 3) for r in (1, 2, 3)}
    ref, spared = _gm(), _gm()
    for gm in (ref, spared):
        gm.screen.history[2] = deque([40.0] * HISTORY, maxlen=HISTORY)
    spared.screen.inherit(5, 2)
    spared.ident[5] = 2
    assert list(spared.screen.history[5]) == [40.0] * HISTORY
    spared.screen.history[5].append(1.0)  # a copy: the lost worker's own record is left as it was
    assert list(spared.screen.history[2]) == [40.0] * HISTORY
    spared.screen.history[5].pop()
    ref.aggregate({r: _reply(ref, r, u) for r, u in ups.items()}, 0, 10)
    spared.aggregate({(5 if r == 2 else r): _reply(spared, 5 if r == 2 else r, u) for r, u in ups.items()}, 0, 10)
    assert np.array_equal(ref.W, spared.W)
    spared.screen.inherit(6, 9)  # nothing known of worker 9: nothing inherited
    assert 6 not in spared.screen.history
