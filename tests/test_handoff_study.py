"""The handoff study's arithmetic (benchmarks/handoff_value.py), on records made up here: the README's table
of issue 7 is only as good as the grid, the pairing by seed and the summary that produced it. No MPI."""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # nothing here launches MPI


@pytest.fixture(scope="module")
def hv():
    path = ROOT / "benchmarks" / "handoff_value.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("handoff_value_under_test", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def _rec(row: str, seed: int, acc: float, dead: float | None, **kw) -> dict:
    return {"setting": "logreg", "model": "logreg", "regime": "local", "partition": "label-skew", "seed": seed,
            "row": row, "status": "completed", "clean": True, "final_acc": acc, "dead_acc": dead,
            "other_acc": acc, "rows_handed": kw.get("handed", 0), "handoff_bytes": 0,
            "handoff_bytes_rows": kw.get("handed", 0) * 3148, "handoff_time": kw.get("ho"),
            "round_time_median": 0.01, "recovery_time": None, "rejected_attempts": [], "contended_attempts": 0,
            "waited_for_others": 0.0, "shared_cores": False, "name": f"logreg-label-skew-s{seed}-{row}"}


def test_grid_has_the_weighted_rows_and_their_settings(hv):
    grid = hv.rows_of_grid(["loss", "random"], ["100", "0.05"], ["random"])
    rows = [g["row"] for g in grid]
    assert rows == ["fault-free", "none", "rep loss 100", "rep random 100", "rep random-w 100", "rep loss 0.05",
                    "rep random 0.05", "rep random-w 0.05", "full"]
    w = {g["row"]: g.get("weight") for g in grid}
    assert w["rep random-w 0.05"] == "shard" and w["rep random 0.05"] == "one" and w["full"] is None
    assert hv.size_words("rep random-w 0.05") == "random, 5% of the shard, weighted"
    assert hv.size_words("rep loss 100") == "loss, 100 rows"


def test_deltas_are_paired_by_seed_and_seeds_missing_on_one_side_are_left_out(hv):
    base = [_rec("fault-free", s, acc, 0.5) for s, acc in ((0, 0.80), (1, 0.90), (2, 0.70))]
    other = [_rec("none", 0, 0.78, 0.4), _rec("none", 1, 0.85, 0.3)]  # seed 2 did not complete
    assert hv.paired(other, base, "final_acc") == pytest.approx([-2.0, -5.0])
    assert hv.paired(other, base, "dead_acc") == pytest.approx([-10.0, -20.0])


def test_summary_means_spreads_and_the_rendered_tables(hv, monkeypatch, tmp_path):
    grid = hv.rows_of_grid(["random"], ["0.05"], ["random"])
    recs = []
    for s in range(3):
        recs += [_rec("fault-free", s, 0.80 + s / 100, 0.70),
                 _rec("none", s, 0.78 + s / 100, 0.50),
                 _rec("rep random 0.05", s, 0.79 + s / 100, 0.55, handed=800, ho=0.006),
                 _rec("rep random-w 0.05", s, 0.80 + s / 100, 0.68 - s / 100, handed=800, ho=0.007),
                 _rec("full", s, 0.805 + s / 100, 0.71, handed=16000, ho=0.1)]
    recs.append({**_rec("none", 3, 0.1, 0.1), "status": "failed"})  # a failed run counts only as failed
    cells = hv.summarize(recs, grid)["logreg"]["label-skew"]
    assert cells["none"]["n"] == 3 and cells["none"]["failed"] == 1
    m, sd = cells["rep random-w 0.05"]["d_dead_acc"]
    assert m == pytest.approx(statistics.fmean([-2.0, -3.0, -4.0])) and sd == pytest.approx(1.0)
    assert cells["full"]["d_final_acc"][0] == pytest.approx(0.5)
    assert hv.best_rule(cells, [], []) == "rep random-w 0.05"
    written = {}
    monkeypatch.setattr(hv, "write", lambda name, res, md: written.update(name=name, md=md))
    res = {"machine": {}, "seeds": [0, 1, 2], "rules": ["random"], "weighted": ["random"], "sizes": ["0.05"],
           "regimes": ["local"], "settings": {"logreg": {"model": "logreg", "regime": "local", "rounds": 80,
                                                         "eval_every": 2, "partitions": ["label-skew"]}},
           "mlp_iterations": 800, "quick": False, "study_wall_seconds": 60.0, "kept_runs": str(tmp_path / "gone"),
           "code": {"start": {"commit": "abc", "uncommitted": False, "digest": "d"},
                    "end": {"commit": "abc", "uncommitted": False, "digest": "d"}}, "runs": recs}
    hv.render(res, "study_under_test")
    md = written["md"]
    assert written["name"] == "study_under_test" and res["plot"] is None  # the kept runs are gone: no plot
    # the verdict line: none's cost to the dead classes, full's distance, the best row and its handoff/round
    assert "| logreg local | -20.00 ± 0.00 | +0.50 ± 0.00 | +1.00 ± 0.00 | `rep random-w 0.05`: +0.00 ± 0.00 / " \
           "-3.00 ± 1.00 | 0.007 | 0.007 | 0.010 | 0.70 |" in md
    assert "| 0.05 | random-w − random | dead classes | +12.00 ± 1.00 | 3 of 3 | +13.00, +12.00, +11.00 |" in md
