"""The enums of states and kinds (:mod:`ftmpi.core.kinds`, :class:`ftmpi.faults.FaultKind`,
:class:`ftmpi.errors.ExitCode`): members compare equal to the strings and numbers they replace, and what
leaves a process (summary.json, a checkpoint, a pickled message, an HDF5 attribute, an exit status) holds
the same plain values as before; a lost coordinator's ``how`` comes with the exception's construction."""
from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from collections import defaultdict
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from ftmpi.comm import Detector
from ftmpi.config import Config, FaultSpec, parse_fault
from ftmpi.core import protocol as P
from ftmpi.core.cluster import ClusterState, Failure, Log, Lost
from ftmpi.core.failover import Change, state_key
from ftmpi.core.kinds import How, Phase, StrEnum
from ftmpi.errors import (
    EXIT_COORDINATOR_LOST,
    EXIT_DISK,
    EXIT_EXPELLED,
    EXIT_NO_WORKERS,
    ConfigError,
    CoordinatorLost,
    ExitCode,
    Expelled,
    PeerFailed,
    PeerTimeout,
)
from ftmpi.faults import FaultKind, inject, read_marks
from ftmpi.observe.metrics import write_json_atomic
from ftmpi.storage import checkpoint as ck
from ftmpi.storage.shards import read_shard, write_shard
from tests.clusterkit import make_cluster

from .test_checkpoint import make_snapshot

_KINDS_MODULE = b"ftmpi.core.kinds"  # in a pickle: a reference to an enum class, not a plain value


def _lost_one(tmp_path, how: str = "ulfm") -> ClusterState:
    c = make_cluster(tmp_path, "full")
    c.lose(3, how=how)
    return c.state


# ------------------------------------------------------------------------------------------- str enums
@pytest.mark.parametrize("enum_cls", [Phase, How, FaultKind, Detector])
def test_a_str_enum_member_is_its_string_everywhere_python_looks(enum_cls):
    for m in enum_cls:
        assert isinstance(m, StrEnum) and m == m.value and hash(m) == hash(m.value)
        assert str(m) == f"{m}" == "{}".format(m) == m.value, "log lines read the value, never Class.MEMBER"  # noqa: UP032
        assert f"{m:>20}" == f"{m.value:>20}"
        assert json.dumps({m: [m]}) == json.dumps({m.value: [m.value]})
        assert enum_cls(m.value) is m


def test_phases_follow_the_drawn_lifecycle(tmp_path):
    assert [p.value for p in Phase] == ["joining", "training", "done"]
    allowed = {(a, b) for a in Phase for b in Phase if a.can_become(b)}
    assert allowed == {(Phase.JOINING, Phase.TRAINING), (Phase.JOINING, Phase.DONE), (Phase.TRAINING, Phase.DONE)}
    s = make_cluster(tmp_path, "full").state
    assert s.phase is Phase.TRAINING
    s.finish()
    assert s.phase is Phase.DONE
    with pytest.raises(RuntimeError, match="done -> training is not a transition"):
        s.deal({})


def test_how_covers_every_way_a_loss_is_noticed():
    assert {h.value for h in How} == {"ulfm", "exited", "timeout", "error", "never-joined", "promoted", "rejected"}
    assert {h for h in How if h.suspect} == {How.TIMEOUT, How.NEVER_JOINED}, "only the silent may speak again"


# ------------------------------------------------------------------------------------- losses and records
def test_a_loss_given_as_a_string_becomes_a_member_and_an_unknown_one_is_refused(tmp_path):
    assert Lost(1, "timeout").how is How.TIMEOUT
    with pytest.raises(ValueError, match="'deadline'"):
        Lost(1, "deadline")
    s = _lost_one(tmp_path, "timeout")
    [f] = s.failures
    assert f.how is How.TIMEOUT and 3 in s.suspects


def test_log_lines_of_a_loss_read_the_plain_value(tmp_path):
    c = make_cluster(tmp_path, "full")
    _, effects = c.lose(2, how=How.NEVER_JOINED)
    logs = [e for e in effects if isinstance(e, Log) and "declared dead" in e.text]
    assert logs and "(never-joined" in logs[0].text and "How." not in logs[0].text
    assert logs[0].tb == "worker 2 lost (never-joined)"


def test_the_snapshot_holds_plain_strings_and_restores_members(tmp_path):
    s = _lost_one(tmp_path, "ulfm")
    snap = s.snapshot()
    assert type(snap["phase"]) is str and snap["phase"] == "training"
    assert all(type(f["how"]) is str for f in snap["failures"]) and snap["failures"][0]["how"] == "ulfm"
    assert _KINDS_MODULE not in pickle.dumps(snap), "the replica's snapshot goes over the wire as plain data"
    key = state_key(s)
    assert "training" in key and _KINDS_MODULE not in pickle.dumps(key), "state_key is pickled in every replica"
    again = ClusterState.restore(pickle.loads(pickle.dumps(snap)), s.policy)
    assert again.phase is Phase.TRAINING and again.failures[0].how is How.ULFM
    assert again.failures == s.failures


def test_a_failure_record_is_what_asdict_gave_byte_for_byte():
    f = Failure(rank=3, round=5, how="error", detected_at=1.5e9, reason="RuntimeError: boom", kind="raise")
    assert f.how is How.ERROR
    rec = f.record()
    assert type(rec["how"]) is str and list(rec) == [x.name for x in dataclasses.fields(Failure)]
    assert json.dumps(rec, indent=2) == json.dumps(dataclasses.asdict(f), indent=2), "summary.json unchanged"
    assert Failure(**json.loads(json.dumps(rec))) == f, "a checkpoint's failure log reads back"


def test_summary_json_writes_the_failure_how_and_exit_code_as_before(tmp_path):
    from ftmpi.coordinator.outputs import summary

    s = _lost_one(tmp_path, "timeout")
    out = SimpleNamespace(last_acc=0.5, last_per_class=[0.5], reached=None)
    doc = summary(EXIT_NO_WORKERS, Config(), s, out, defaultdict(int))  # type: ignore[arg-type]
    write_json_atomic(tmp_path / "summary.json", doc)
    text = (tmp_path / "summary.json").read_text()
    assert '"exit_code": 3,' in text and '"status": "no-workers"' in text
    assert '"how": "timeout",' in text and "How." not in text and "ExitCode" not in text
    back = json.loads(text)
    assert back["exit_code"] == 3 and type(back["exit_code"]) is int and back["failures"][0]["how"] == "timeout"


def test_a_checkpoint_stores_the_failure_log_as_plain_json(tmp_path):
    s = _lost_one(tmp_path, "ulfm")
    snap = dataclasses.replace(make_snapshot(), failures=s.snapshot()["failures"])
    path = ck.save(tmp_path / "ckpt.h5", snap)
    with h5py.File(path, "r") as f:
        raw = f.attrs["failures"]
    assert isinstance(raw, str) and '"how": "ulfm"' in raw
    assert json.loads(raw) == json.loads(json.dumps(snap.failures))
    loaded = ck.load(path).failures
    assert loaded[0]["how"] == "ulfm" and type(loaded[0]["how"]) is str
    assert Failure(**loaded[0]).how is How.ULFM


def test_an_hdf5_attribute_given_an_enum_member_stores_its_value(tmp_path):
    path = write_shard(tmp_path / "s.h5", np.zeros((2, 3), np.float32), np.zeros(2), np.arange(2),
                       attrs={"how": How.PROMOTED, "code": ExitCode.DISK, "role": "test"})
    attrs = read_shard(path).attrs
    assert attrs["how"] == "promoted" and type(attrs["how"]) is str
    assert attrs["code"] == 7 and attrs["role"] == "test"


# ----------------------------------------------------------------------------------- coordinator changes
def test_a_coordinator_change_carries_its_how_as_a_member_and_records_plain_values():
    c = Change(0, "ulfm", 1, 7, 2, 100.0, lost_id=("h", 3, 4))
    assert c.how is How.ULFM and "lost (ulfm)" in c.line()
    rec = c.record()
    assert type(rec["how"]) is str and json.dumps(rec) == json.dumps(dataclasses.asdict(c))
    assert _KINDS_MODULE not in pickle.dumps(rec)


def test_a_lost_coordinator_says_how_from_its_construction():
    assert CoordinatorLost("gone", How.ERROR).how is How.ERROR
    assert CoordinatorLost("gone", "ulfm").how is How.ULFM
    with pytest.raises(TypeError):
        CoordinatorLost("gone")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        CoordinatorLost("gone", "vanished")
    assert CoordinatorLost("gone", How.TIMEOUT).exit_code == EXIT_COORDINATOR_LOST


def _worker(stash=(), recv_error: Exception | None = None):
    """A worker loop without MPI: only what its waits use."""
    from ftmpi.worker.loop import Worker

    w = Worker.__new__(Worker)
    w.rank, w.coord, w._stash, w.deputy, w._suspicions = 2, 0, list(stash), -1, {}
    w._take_replicas = lambda: None  # type: ignore[method-assign]

    def recv(timeout: float, phase: str) -> object:
        assert recv_error is not None
        raise recv_error

    w._recv_ctrl = recv  # type: ignore[method-assign]
    return w


@pytest.mark.parametrize("error,how", [(PeerFailed([0], "round 3", 0.01), How.ULFM),
                                       (PeerTimeout([0], "round 3", 2.0), How.TIMEOUT)])
def test_the_worker_loop_raises_the_coordinator_loss_with_how_the_wait_ended(error, how):
    with pytest.raises(CoordinatorLost) as err:
        _worker(recv_error=error)._wait_ctrl(1.0, "round 3")
    assert err.value.how is how and "lost the coordinator" in str(err.value)


def test_an_abdicating_coordinator_is_lost_by_error():
    with pytest.raises(CoordinatorLost) as err:
        _worker(stash=[P.Abdicate("crashed")])._wait_ctrl(1.0, "round 3")
    assert err.value.how is How.ERROR and "crashed" in str(err.value)


def test_a_worker_told_to_leave_takes_the_code_and_quiet_from_the_constructor():
    w = _worker()
    plain = w._told_to_leave(P.Exit("declared dead"))
    assert (plain.exit_code, plain.quiet) == (EXIT_EXPELLED, False)
    relayed = w._told_to_leave(P.Exit("rank 0 crashed", ExitCode.CRASH, True))
    assert (relayed.exit_code, relayed.quiet) == (1, True)
    assert (Expelled.exit_code, Expelled.quiet) == (EXIT_EXPELLED, False), "the class keeps its defaults"
    unquiet = w._told_to_leave(P.Exit("rank 0 crashed", 1, False))
    assert (unquiet.exit_code, unquiet.quiet) == (1, False)


# ------------------------------------------------------------------------------------------- exit codes
def test_exit_codes_keep_their_numbers_and_module_names():
    assert {c.name: int(c) for c in ExitCode} == {"OK": 0, "CRASH": 1, "BAD_INPUT": 2, "NO_WORKERS": 3,
                                                  "COORDINATOR_LOST": 4, "EXPELLED": 5, "PREEMPTED": 6,
                                                  "DISK": 7, "DIVERGED": 8, "OVERRAN": 124}
    assert EXIT_DISK is ExitCode.DISK and EXIT_DISK == 7 and str(EXIT_DISK) == f"{EXIT_DISK}" == "7"
    assert json.dumps({"exit_code": ExitCode.PREEMPTED}) == '{"exit_code": 6}'
    from ftmpi.launch.record import EXIT_OVERRAN

    assert EXIT_OVERRAN is ExitCode.OVERRAN


def test_an_exit_message_carries_a_plain_int_on_the_wire():
    m = P.Exit("rank 0 crashed", ExitCode.CRASH, True)
    assert type(m.code) is int
    assert pickle.dumps(m) == pickle.dumps(P.Exit("rank 0 crashed", 1, True))
    assert pickle.loads(pickle.dumps(m)) == m and P.Exit("x").code is None


@pytest.mark.parametrize("how", ["sys.exit", "os._exit"])
def test_a_process_ending_with_an_exit_code_member_exits_with_its_number(how):
    code = f"import os, sys; from ftmpi.errors import ExitCode; {how}(ExitCode.DISK)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7


# ------------------------------------------------------------------------------------------ fault kinds
@pytest.mark.parametrize("kind", list(FaultKind))
def test_every_fault_kind_parses_and_prints_back(kind):
    text = f"{kind}:2@5" + (":0.5" if kind.timed else ":4" if kind is FaultKind.SLOWDOWN else "")
    spec = parse_fault(text)
    assert FaultKind(spec.kind) is kind and (spec.rank, spec.round) == (2, 5) and str(spec) == text
    if kind is FaultKind.CORRUPT:  # a scale, optional (none: a bit flipped)
        assert str(parse_fault("corrupt:2@5:1000")) == "corrupt:2@5:1000"
        wrong = "corrupt:2@5:1"
    elif kind is FaultKind.SLOWDOWN:  # a factor F >= 1, required
        assert parse_fault("slowdown:2@5:1.5").seconds == 1.5
        with pytest.raises(ConfigError):
            parse_fault("slowdown:2@5")
        wrong = "slowdown:2@5:0.5"
    else:
        wrong = f"{kind}:2@5" if kind.timed else f"{kind}:2@5:0.5"  # seconds exactly for the timed kinds
    with pytest.raises(ConfigError):
        parse_fault(wrong)


def test_the_config_knows_no_fault_kind_the_injector_does_not():
    with pytest.raises(ConfigError):
        parse_fault("freeze:1@2")
    assert {k for k in FaultKind if k.timed} == {FaultKind.PAUSE, FaultKind.SLOW}


def test_an_unknown_fault_kind_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="'freeze'"):
        inject(FaultSpec("freeze", 1, 2), tmp_path)
    assert not (tmp_path / "faults").exists()


@pytest.mark.parametrize("kind", [FaultKind.SLOW, "slow"])
def test_a_fault_mark_records_the_kind_as_its_plain_string(tmp_path, kind):
    inject(FaultSpec(kind, 1, 2, 0.001), tmp_path)  # type: ignore[arg-type]
    text = (tmp_path / "faults" / "rank-1.json").read_text()
    assert '"kind": "slow"' in text and "FaultKind" not in text
    assert read_marks(tmp_path)[1]["kind"] == "slow"
