"""Issue 22's pieces that need no MPI: stalled writes given up on, a deposed coordinator's bounded wait,
files named by coordinator term, and faults at the named points of a run (start, deal, finish)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from ftmpi.config import ConfigError, parse_fault
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.errors import WriteFailed
from ftmpi.launch.environ import check_launch_env
from ftmpi.storage.shards import handoff_path, list_handoffs, parse_handoff_name, stale_standbys, standby_path
from ftmpi.storage.term import verdict_written


def test_a_stalled_write_is_given_up_after_the_deadline_and_the_queue_goes_on():
    release = threading.Event()
    done: list[str] = []
    w = BackgroundWriter(essential={"checkpoint"})
    w.mark_ok("checkpoint")  # a valid one exists: the stall is a warning
    w.submit("checkpoint", release.wait)  # a write that does not come back
    w.submit("stage", done.append, "after")
    assert not w.wait(0.2)
    assert not w.abandon_stalled(5.0), "not stalled yet: 0.2 s of a 5 s deadline"
    assert w.abandon_stalled(0.1)
    assert w.wait(2.0), "the job queued behind the stalled one ran on a new thread"
    assert done == ["after"]
    (line,) = w.take_warnings()
    assert "checkpoint write failed" in line and "stalled filesystem" in line
    assert w.error_summary()["checkpoint"]["count"] == 1
    release.set()  # the abandoned thread comes back: it changes nothing any more
    time.sleep(0.1)
    assert w.pending == 0 and w.error_summary()["checkpoint"]["count"] == 1


def test_a_stalled_essential_write_with_nothing_valid_is_fatal():
    release = threading.Event()
    w = BackgroundWriter(essential={"checkpoint"})
    w.submit("checkpoint", release.wait)
    time.sleep(0.05)
    assert w.abandon_stalled(0.01)
    with pytest.raises(WriteFailed, match="not done after"):
        w.wait(1.0)
    release.set()


def test_the_stall_deadline_grows_with_the_longest_write_of_its_kind():
    w = BackgroundWriter()
    w.submit("checkpoint", time.sleep, 0.3)
    assert w.wait(5.0)
    release = threading.Event()
    w.submit("checkpoint", release.wait)
    time.sleep(0.35)
    assert not w.abandon_stalled(0.1), "0.35 s < 0.1 s + 2 x 0.3 s: a slow write, not a stalled one"
    time.sleep(0.4)
    assert w.abandon_stalled(0.1)
    release.set()


def test_verdict_written_needs_a_final_summary_of_that_term_or_later(tmp_path):
    assert not verdict_written(tmp_path, 2), "no summary.json"
    (tmp_path / "summary.json").write_text("{not json")
    assert not verdict_written(tmp_path, 2)
    for doc, want in [({"status": "running", "term": 2}, False), ({"status": "completed", "term": 1}, False),
                      ({"status": "completed", "term": 2}, True), ({"status": "no-workers", "term": 3}, True),
                      ({"status": "completed"}, False)]:
        (tmp_path / "summary.json").write_text(json.dumps(doc))
        assert verdict_written(tmp_path, 2) is want, doc


def test_files_of_a_later_term_never_take_an_earlier_terms_name(tmp_path):
    assert handoff_path(tmp_path, 3).name == "handoff-e0003.h5", "the first term keeps the plain names"
    assert handoff_path(tmp_path, 3, 2).name == "handoff-e0003-t0002.h5"
    assert standby_path(tmp_path, 3, 2, 1).name == "standby-e0003-w0002.h5"
    assert standby_path(tmp_path, 3, 2, 4).name == "standby-e0003-w0002-t0004.h5"
    assert parse_handoff_name(handoff_path(tmp_path, 3, 2)) == 3
    shards = tmp_path / "shards"
    shards.mkdir()
    for p in (handoff_path(tmp_path, 1), handoff_path(tmp_path, 2, 2), standby_path(tmp_path, 1, 2),
              standby_path(tmp_path, 2, 2, 2), standby_path(tmp_path, 2, 12, 2), standby_path(tmp_path, 1, 3)):
        p.write_bytes(b"")
    assert [p.name for p in list_handoffs(tmp_path)] == ["handoff-e0001.h5", "handoff-e0002-t0002.h5"]
    mine = standby_path(tmp_path, 3, 2, 2)
    assert [p.name for p in stale_standbys(mine)] == ["standby-e0001-w0002.h5", "standby-e0002-w0002-t0002.h5"], \
        "worker 2's other files, of any term; never worker 12's or 3's"


@pytest.mark.parametrize("text,round_", [("slow:2@start:1.5", -1), ("hang:0@deal", -2), ("kill:1@finish", -3),
                                          ("pause:3@7:2", 7)])
def test_faults_fire_at_named_points_and_print_back_the_same(text, round_):
    f = parse_fault(text)
    assert f.round == round_
    assert parse_fault(str(f)) == f


def test_a_fault_at_an_unknown_point_is_one_clear_line():
    with pytest.raises(ConfigError, match="one of start, deal, finish"):
        parse_fault("kill:1@end")


def test_finish_grace_from_the_environment_is_checked():
    check_launch_env({"FTMPI_FINISH_GRACE": "5"})
    with pytest.raises(ConfigError, match="FTMPI_FINISH_GRACE"):
        check_launch_env({"FTMPI_FINISH_GRACE": "soon"})
