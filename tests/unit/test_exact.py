"""Exact resume and takeover (issue 23), in one process: the workers' states in the checkpoint, the worker's
ring of round-start states, rank 0's broadcast after a resume, and ``ftmpi verify``."""
from __future__ import annotations

import csv
import dataclasses

import h5py
import numpy as np
import pytest

from ftmpi.core import protocol as P
from ftmpi.observe.verify import compare, to_text
from ftmpi.storage.checkpoint import ckpt_path, load, save, shard_key
from tests.unit.test_checkpoint import make_snapshot

N = 5 * 4 + 4 + 4 * 3 + 3  # parameters of make_snapshot's sizes (5, 4, 3)


def _state(rnd: int, seed: int, adam: bool = True, quant: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    return {"round": rnd, "step": 10 * rnd + seed, "m": rng.normal(size=N).astype(np.float32),
            "v": rng.random(N).astype(np.float32) if adam else np.zeros(0, np.float32),
            "residual": rng.normal(size=N).astype(np.float32) if quant else np.zeros(0, np.float32),
            "shard": int(rng.integers(0, 2**32))}


def _with_states(**kw) -> object:
    s = make_snapshot()
    return dataclasses.replace(s, workers={1: _state(12, 1), 2: _state(12, 2, quant=False), 4: _state(12, 4)},
                               bcast=np.arange(N, dtype=np.float32) / 7,
                               screen={"history": {"1": [0.5, 0.25]}, "streak": {"1": 0}}, **kw)


def test_worker_states_round_trip_through_a_checkpoint_with_their_layout(tmp_path):
    snap = _with_states()
    path = save(ckpt_path(tmp_path, 12), snap)
    back = load(path)
    assert sorted(back.workers) == [1, 2, 4]
    for r, st in snap.workers.items():
        got = back.workers[r]
        assert got["round"] == st["round"] and got["step"] == st["step"] and got["shard"] == st["shard"]
        for k in ("m", "v", "residual"):
            assert got[k].dtype == np.float32 and np.array_equal(got[k], st[k]), (r, k)
    assert np.array_equal(back.bcast, snap.bcast) and back.screen == snap.screen
    with h5py.File(path, "r") as f:  # what h5ls shows
        g = f["workers/worker-0002"]
        assert set(g) == {"m", "v", "residual"} and g["residual"].shape == (0,)
        assert dict(g.attrs)["round"] == 12 and "crc32" in g["m"].attrs
        assert f["model/bcast"].dtype == np.float32


def test_an_uplink_without_quantization_keeps_an_empty_residual_and_with_it_tracks_the_error():
    """The format says a worker's residual is empty without quantization: its state copies, replies and
    checkpoints then carry no n zeros (issue 22's round cost); with 8 bits the residual is what the payload
    left out, and what was decoded plus it is what was sent."""
    from ftmpi.model.codec import ErrorFeedback
    vec = np.random.default_rng(0).normal(size=N).astype(np.float32)
    plain = ErrorFeedback(N, [slice(0, N)], 0, False)
    _, out = plain.compress(vec, 1)
    assert plain.residual.shape == (0,) and np.array_equal(out, vec)
    q8 = ErrorFeedback(N, [slice(0, N)], 8, False)
    _, approx = q8.compress(vec, 1)
    assert q8.residual.shape == (N,) and np.abs(q8.residual).max() > 0
    assert np.allclose(approx + q8.residual, vec, atol=1e-6)


def test_a_checkpoint_without_worker_states_loads_as_before(tmp_path):
    back = load(save(ckpt_path(tmp_path, 12), make_snapshot()))
    assert back.workers is None and back.bcast is None and back.screen is None


def test_a_worker_state_of_the_wrong_size_is_refused(tmp_path):
    snap = _with_states()
    snap.workers[4]["m"] = np.zeros(N + 1, np.float32)
    with pytest.raises(ValueError, match="state of worker 4"):
        save(ckpt_path(tmp_path, 12), snap)


def test_a_damaged_worker_state_is_named(tmp_path):
    path = save(ckpt_path(tmp_path, 12), _with_states())
    with h5py.File(path, "r") as f:
        off = f["workers/worker-0001/v"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(off + 4)
        fh.write(b"\x7f")
    from ftmpi.errors import CheckpointError

    with pytest.raises(CheckpointError, match="workers/worker-0001/v"):
        load(path)


def test_shard_key_follows_the_rows_in_order_and_their_weights():
    ids = np.arange(100, dtype=np.int64)
    assert shard_key(ids, None) == shard_key(ids.astype(np.int32), np.ones(100))  # weights of 1 are no weights
    assert shard_key(ids, None) != shard_key(ids[::-1].copy(), None)
    w = np.ones(100)
    w[3] = 2.5
    assert shard_key(ids, w) != shard_key(ids, None)


# ------------------------------------------------------------------------------------------- the worker
class _Ch:
    rank = 2

    def __init__(self) -> None:
        self.sent: list = []

    def try_recv(self, source: int, tag: int) -> None:
        return None

    def send(self, dest: int, tag: int, obj: object) -> int:
        self.sent.append(obj)
        return 0


def _worker(tmp_path, *sets: str):
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.config import load_config
    from ftmpi.storage.shards import write_shard
    from ftmpi.worker.loop import Worker

    rng = np.random.default_rng(0)
    write_shard(tmp_path / "mine.h5", rng.random((300, 6)).astype(np.float32), rng.integers(0, 4, 300).astype(np.int32),
                np.arange(300))
    cfg = load_config(None, ["model.batch_size=16", "optimizer.name=adam", "executor.checkpoint_every=2", *sets],
                      env={})
    w = Worker(_Ch(), cfg, tmp_path)
    w._setup(P.Setup(str(tmp_path / "mine.h5"), 4, [6, 4]))
    return w


def _round(w, rnd: int, params: np.ndarray, term: int = 1) -> P.Reply:
    w._round(P.Round(0, rnd, 5, 0.01, True, params.copy(), term=term))
    reply = w.ch.sent[-1]
    assert isinstance(reply, P.Reply) and reply.round == rnd
    return reply


@pytest.mark.parametrize("quant", ["0", "8"])
def test_a_round_redone_for_a_new_coordinator_gives_what_it_gave_the_first_time(tmp_path, quant):
    w = _worker(tmp_path, f"executor.quantize={quant}")
    p0 = np.zeros(w.model.n_params, np.float32)
    first = _round(w, 0, p0)
    p1 = p0 + 0.01
    r1 = _round(w, 1, p1)
    _round(w, 2, p1 + 0.01)  # trained ahead of the replica the new coordinator holds
    again = _round(w, 1, p1, term=2)  # the new coordinator redoes round 1
    assert again.redo == 1 and first.redo == 0
    upd = lambda r: r.update if isinstance(r.update, np.ndarray) else r.update[1][0][0]  # noqa: E731
    assert np.array_equal(upd(again), upd(r1)) and again.loss == r1.loss


def test_a_round_older_than_the_ring_is_redone_and_said_not_exact(tmp_path):
    w = _worker(tmp_path)
    p = np.zeros(w.model.n_params, np.float32)
    for rnd in range(5):
        _round(w, rnd, p)
    assert _round(w, 0, p, term=2).redo == -1


def test_the_state_goes_with_the_reply_of_the_round_before_a_checkpoint(tmp_path):
    w = _worker(tmp_path)  # checkpoint_every 2: the state of round 2 goes with round 1's reply
    p = np.zeros(w.model.n_params, np.float32)
    assert _round(w, 0, p).state is None
    st = _round(w, 1, p).state
    assert st is not None and st["round"] == 2 and st["step"] == 10
    assert st["shard"] == shard_key(np.arange(300), None)
    (tmp_path / "w2").mkdir()
    w2 = _worker(tmp_path / "w2")  # a fresh worker given that state continues as the first would
    w2.load_local_state(st)
    assert np.array_equal(_round(w, 2, p).update, _round(w2, 2, p).update)


# -------------------------------------------------------------------------------------- rank 0's broadcast
def test_after_a_resume_the_first_broadcast_is_what_the_workers_would_hold(tmp_path):
    from ftmpi.config import load_config
    from ftmpi.coordinator.globalmodel import GlobalModel
    from ftmpi.storage.data import Dataset

    rng = np.random.default_rng(0)
    X, y = rng.random((60, 6)).astype(np.float32), rng.integers(0, 3, 60)
    data = Dataset("synthetic", X, y, X[:20], y[:20], 3, ("a", "b", "c"), "test")
    cfg = load_config(None, ["executor.quantize=4"], env={})
    a = GlobalModel(cfg, data)
    a.payload(0, 10, True)
    a.W += rng.normal(size=a.W.size).astype(np.float32) * 0.1
    fields = a.checkpoint_fields()
    b = GlobalModel(cfg, data)
    b.restore(dataclasses.replace(make_snapshot(), **{k: fields[k] for k in
                                                      ("params", "sizes", "optim", "bcast", "iters_done", "period",
                                                       "switched_at", "model", "screen")}, labels=None))
    sent_a, full_a, _ = a.payload(1, 10, False)
    sent_b, full_b, _ = b.payload(1, 10, True)
    assert not full_a and full_b and np.array_equal(sent_b, a.W_bcast) and np.array_equal(b.W_bcast, a.W_bcast)


# ------------------------------------------------------------------------------------------------ verify
def _run(d, losses, params) -> None:
    d.mkdir()
    with open(d / "metrics.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["round", "epoch", "wall", "iters", "train_loss", "test_acc", "acc_class0"])
        for i, x in enumerate(losses):
            wr.writerow([i, 0, 0.1 * i * len(str(d)), 10 * (i + 1), x, 0.5, 0.4])
    for rnd, p in params.items():
        save(ckpt_path(d, rnd), dataclasses.replace(make_snapshot(), round=rnd, params=p))


def test_verify_says_identical_and_where_two_runs_first_differ(tmp_path):
    p = make_snapshot().params
    q = p.copy()
    q[3] += 1e-6
    _run(tmp_path / "a", [1.5, 1.2, 1.0], {2: p, 3: p})
    _run(tmp_path / "b", [1.5, 1.2, 1.0], {2: p, 3: p})  # other wall times: not compared
    assert compare(tmp_path / "a", tmp_path / "b").identical
    _run(tmp_path / "c", [1.5, 1.25, 1.0], {2: p, 3: q})
    v = compare(tmp_path / "a", tmp_path / "c")
    assert not v.identical and v.first == {"round": 1, "field": "train_loss", "a": "1.2", "b": "1.25"}
    assert v.final["equal"] is False and v.final["values_differing"] == 1
    _run(tmp_path / "d", [1.5, 1.2], {2: p, 3: p})
    v = compare(tmp_path / "a", tmp_path / "d")
    assert v.first == {"round": 2, "field": "row", "a": "present", "b": "missing"} and v.final["equal"]


def test_verify_command_exit_codes(tmp_path, capsys):
    from ftmpi.cli import main

    p = make_snapshot().params
    _run(tmp_path / "a", [1.5, 1.2], {2: p})
    _run(tmp_path / "b", [1.5, 1.2], {2: p + 1})
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "final params: round-000002.h5 vs round-000002.h5: differ" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "none")]) == 2


def test_verify_skips_a_training_column_only_one_run_has(tmp_path):
    """A run of an older version lacks a column (e.g. rejected): it is named as not compared, not a difference."""
    p = make_snapshot().params
    _run(tmp_path / "a", [1.5, 1.2], {2: p})
    _run(tmp_path / "b", [1.5, 1.2], {2: p})
    text = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    (tmp_path / "b" / "metrics.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in text) + "\n")
    v = compare(tmp_path / "a", tmp_path / "b")
    assert v.identical and v.skipped == ["acc_class0"] and "acc_class0" not in v.fields
    assert "not compared: acc_class0" in to_text(v, tmp_path / "a", tmp_path / "b")
