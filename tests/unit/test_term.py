"""Coordinator terms in the run dir (ftmpi.storage.term): claims only grow, two claims of one term cannot
both succeed, and the fence stops a deposed coordinator's writes."""
from __future__ import annotations

import os
import threading

import pytest

from ftmpi.errors import Deposed
from ftmpi.storage.term import Fence, claim, current_term, holder


def test_terms_only_grow_and_the_record_is_kept(tmp_path):
    assert current_term(tmp_path) == 0
    claim(tmp_path, 1, {"rank": 0, "pid": os.getpid()})
    claim(tmp_path, 2, {"rank": 1})
    assert current_term(tmp_path) == 2
    assert holder(tmp_path, 1)["rank"] == 0 and holder(tmp_path, 2) == {"term": 2, "rank": 1}
    with pytest.raises(Deposed):
        claim(tmp_path, 2, {"rank": 3})  # taken
    with pytest.raises(Deposed):
        claim(tmp_path, 1, {"rank": 3})  # lower than the current term
    assert holder(tmp_path, 2)["rank"] == 1  # a refused claim changes nothing


def test_of_many_racing_claims_of_one_term_exactly_one_wins(tmp_path):
    wins, losses = [], []
    go = threading.Barrier(8)

    def racer(i: int) -> None:
        go.wait()
        try:
            claim(tmp_path, 5, {"rank": i})
            wins.append(i)
        except Deposed:
            losses.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert holder(tmp_path, 5)["rank"] == wins[0]


def test_the_fence_stops_a_deposed_coordinator(tmp_path):
    claim(tmp_path, 1, {"rank": 0})
    old, new = Fence(tmp_path, 1), Fence(tmp_path, 2)
    old.check("checkpoint round 3")  # still its term
    claim(tmp_path, 2, {"rank": 1})
    new.check("checkpoint round 4")
    with pytest.raises(Deposed) as e:
        old.check("checkpoint round 15")
    assert e.value.term == 2 and "checkpoint round 15" in str(e.value)
    assert not old.still_holds() and new.still_holds()


def test_unrelated_files_in_the_terms_dir_are_ignored(tmp_path):
    (tmp_path / "terms").mkdir()
    (tmp_path / "terms" / "term-000009.json.tmp").write_text("{}")
    (tmp_path / "terms" / "notes.txt").write_text("x")
    assert current_term(tmp_path) == 0
