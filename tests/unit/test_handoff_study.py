"""The handoff study's arithmetic (benchmarks/handoff_value.py and its _handoff_* helpers), on records made up
here: the README's claims are only as good as the grid, the losses, the pairing by seed and the summary that
produced them. No MPI."""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # nothing here launches MPI
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def hv():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("handoff_value_under_test", BENCH / "handoff_value.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        import _handoff_report as rep
    finally:
        sys.path.remove(str(BENCH))
    mod.rep = rep
    return mod


def _rec(row: str, seed: int, acc: float, dead: float | None, first: float | None = None, setting="logreg",
         part="label-skew", **kw) -> dict:
    per = kw.get("per", [acc] * 4)
    return {"setting": setting, "model": "logreg", "regime": "local", "partition": part, "seed": seed, "row": row,
            "status": "completed", "clean": True, "final_acc": acc, "dead_acc": dead, "first_acc": first,
            "other_acc": acc, "per_class_acc": per, "lost_share": kw.get("share", [0.9, 0.6, 0.1, 0.0]),
            "dead_classes": [0, 1], "rows_handed": kw.get("handed", 0), "handoff_bytes": 0,
            "handoff_bytes_rows": kw.get("handed", 0) * 3156, "handoff_time": kw.get("ho"),
            "round_time_median": 0.01, "recovery_time": None, "rejected_attempts": [], "contended_attempts": 0,
            "waited_for_others": 0.0, "shared_cores": False, "name": f"{setting}-{part}-s{seed}-{row}"}


def test_losses_are_parsed_and_placed_in_the_rounds(hv):
    assert hv.parse_losses("2@0.3,3@0.6") == [(2, 0.3), (3, 0.6)]
    assert hv.loss_rounds([(2, 0.3), (3, 0.6)], 80) == [(2, 24), (3, 48)]
    assert hv.loss_rounds([(2, 0.3), (3, 0.6)], 800) == [(2, 240), (3, 480)]
    for bad in ("2@0.6,3@0.3", "2@0.3,2@0.6", "9@0.3", "2@1.5", "two@0.3"):
        with pytest.raises(SystemExit, match="--losses"):
            hv.parse_losses(bad)


def test_rows_set_the_rules_the_issue_asks_for(hv):
    assert hv.row_sets("fault-free", "0.05") == []
    assert hv.row_sets("none", "0.05") == ["executor.remap=none"]
    assert hv.row_sets("full", "0.05") == ["executor.remap=full"]
    rep = "executor.remap=representative"
    assert hv.row_sets("random-legacy", "0.05") == [rep, "optimizer.rep_selection=random",
                                                    "optimizer.n_most_rep=0.05", "optimizer.rep_weight=shard-legacy"]
    assert hv.row_sets("coreset", "0.05")[1] == "optimizer.rep_selection=coreset"
    assert hv.row_sets("random-damped", "0.05")[-1] == "optimizer.rep_weight=damped"


def test_plan_kills_both_workers_in_every_row_but_fault_free(hv):
    settings, plan = hv.build_plan(["logreg"], ["local", "sync"], ["label-skew", "iid"], ["label-skew"], [0, 1],
                                   ["fault-free", "none", "random-w", "full"], "0.05", [(2, 0.3), (3, 0.6)],
                                   800, 2, 20)
    assert set(settings) == {"logreg", "logreg-sync"} and settings["logreg-sync"]["losses"] == [(2, 240), (3, 480)]
    assert len(plan) == (2 + 1) * 2 * 4  # (local: 2 partitions, sync: 1) x 2 seeds x 4 rows
    for p in plan:
        assert p["lost"] == [2, 3]  # fault-free too: its seed's partition names the lost classes
        assert p["inject"] == ([] if p["row"] == "fault-free" else
                               [f"kill:2@{p['fault_rounds'][0]}", f"kill:3@{p['fault_rounds'][1]}"])
    assert len({p["name"] for p in plan}) == len(plan)


def test_lost_classes_and_a_run_that_lost_the_wrong_workers(hv, tmp_path):
    s = {"status": "completed", "final_test_acc": 0.8, "per_class_acc": [0.5, 0.6, 0.9, 0.95],
         "class_histogram": [[10, 0, 50, 40], [80, 30, 0, 30], [10, 70, 0, 0], [0, 0, 50, 30]],
         "initial_shards": {"1": 100, "2": 110, "3": 80, "4": 80},
         "failures": [{"rank": 2, "round": 24, "rows_handed": 5, "handoff_time": 0.01},
                      {"rank": 3, "round": 48, "rows_handed": 7, "handoff_time": 0.02}]}
    rec = hv.record(s, tmp_path, [2, 3])
    assert rec["lost_share"] == pytest.approx([0.9, 1.0, 0.0, 0.3])
    assert rec["dead_classes"] == [0, 1] and rec["first_classes"] == [0]  # rank 2 alone: 80 % of class 0
    assert rec["dead_acc"] == pytest.approx(0.55) and rec["first_acc"] == pytest.approx(0.5)
    assert rec["rows_handed"] == 12 and rec["handoff_time"] == 0.02
    assert hv.unclean(s, [2, 3]) == "" and hv.unclean(s, [3, 2]) == ""  # one round: seen in either order
    assert "expected [2, 4]" in hv.unclean(s, [2, 4]) and "expected [2]" in hv.unclean(s, [2])
    assert hv.unclean({"status": "failed", "rc": 1}, [2, 3]).startswith("status failed")


def test_deltas_are_paired_by_seed_and_seeds_missing_on_one_side_are_left_out(hv):
    base = [_rec("fault-free", s, acc, 0.5) for s, acc in ((0, 0.80), (1, 0.90), (2, 0.70))]
    other = [_rec("none", 0, 0.78, 0.4), _rec("none", 1, 0.85, 0.3)]  # seed 2 did not complete
    assert hv.rep.paired(other, base, "final_acc") == pytest.approx([-2.0, -5.0])
    assert hv.rep.paired(other, base, "dead_acc") == pytest.approx([-10.0, -20.0])


def _study(rows):
    recs = []
    for s in range(3):
        recs += [_rec("fault-free", s, 0.80 + s / 100, 0.70, 0.72),
                 _rec("none", s, 0.78 + s / 100, 0.50, 0.40),
                 _rec("random-legacy", s, 0.79 + s / 100, 0.60, 0.45, handed=800, ho=0.006),
                 _rec("random-w", s, 0.80 + s / 100, 0.68 - s / 100, 0.69, handed=800, ho=0.007),
                 _rec("full", s, 0.805 + s / 100, 0.71, 0.72, handed=16000, ho=0.1)]
        recs += [_rec(r, s, 0.80, 0.6, 0.6, part="iid") for r in ("fault-free", "random-w")]
        recs.append(_rec("random-damped", s, 0.805, 0.6, 0.6, part="iid"))
    recs.append({**_rec("none", 3, 0.1, 0.1), "status": "failed"})  # a failed run counts only as failed
    return recs


def test_summary_means_spreads_the_verdict_and_the_rendered_tables(hv, monkeypatch, tmp_path):
    rows = ["fault-free", "none", "random-legacy", "random-w", "random-damped", "full"]
    recs = _study(rows)
    cells = hv.rep.summarize(recs, rows)["logreg"]["label-skew"]
    assert cells["none"]["n"] == 3 and cells["none"]["failed"] == 1
    m, sd = cells["random-w"]["d_dead_acc"]
    assert m == pytest.approx(statistics.fmean([-2.0, -3.0, -4.0])) and sd == pytest.approx(1.0)
    assert cells["random-w"]["g_dead_acc"][0] == pytest.approx(-4.0)  # against full: 67 - 71 on average
    assert cells["random-w"]["bytes_vs_full"][0] == pytest.approx(0.05)
    assert cells["full"]["d_final_acc"][0] == pytest.approx(0.5)
    assert hv.rep.best_row(cells) == "random-w"
    written = {}
    monkeypatch.setattr(hv.rep, "write", lambda name, res, md: written.update(name=name, md=md))
    monkeypatch.setattr(hv.rep, "RESULTS", tmp_path)
    res = {"machine": {}, "workers": 4, "share": 0.5, "losses": [(2, 0.3), (3, 0.6)], "seeds": [0, 1, 2],
           "rows": rows, "rows_left_out": {"coreset": "refused"}, "size": "0.05",
           "policies": {r: hv.POLICIES[r][3] for r in rows}, "settings": {"logreg": {
               "model": "logreg", "regime": "local", "rounds": 80, "losses": [(2, 24), (3, 48)], "eval_every": 2,
               "partitions": ["label-skew", "iid"]}},
           "mlp_iterations": 800, "quick": True, "n_jobs": len(recs), "study_wall_seconds": 60.0,
           "kept_runs": str(tmp_path / "gone"),
           "code": {"start": {"commit": "abc", "uncommitted": False, "digest": "d"},
                    "end": {"commit": "abc", "uncommitted": False, "digest": "d"}}, "runs": recs}
    hv.rep.render(res, "study_under_test")
    md = written["md"]
    assert written["name"] == "study_under_test"
    # the goal line: random-w is 4 points below full on the lost classes: not within 2
    assert "| logreg local | random-w | -4.00 ± 1.00 | -3.00 ± 0.00 | -0.50 ± 0.00 | 0.050 ± 0.000 | " \
           "0.007 ± 0.000 | no |" in md
    assert "| random-w − random-legacy | lost classes | +7.00 ± 1.00 | 3 of 3 | +8.00, +7.00, +6.00 |" in md
    assert "| random-w − random-legacy | first-lost | +24.00 ± 0.00 | 3 of 3 |" in md
    # iid: damped against the unbiased rule, paired
    assert "| logreg local | random-damped | +0.50 ± 0.00 | +0.50 ± 0.00 |" in md
    assert "`coreset` (refused)" in md
    assert "Coreset cost" not in md  # no coreset row: not measured
    if res["plot"]:  # with matplotlib: the per-class panel drawn from the records alone (the runs are gone)
        assert Path(res["plot"]).stat().st_size > 0


def test_the_legacy_row_can_come_from_a_study_run_with_the_old_code(hv, tmp_path):
    import json

    old = {"code": {"start": {"commit": "7db911f"}},
           "runs": [_rec("random-w", s, 0.79, 0.6) for s in range(2)] + [_rec("none", 0, 0.7, 0.4)]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    res = {"rows": ["fault-free", "none", "random-w", "full"], "rows_left_out": {"random-legacy": "refused"},
           "policies": {}, "runs": [_rec("random-w", 0, 0.8, 0.7), _rec("random-legacy", 0, 0.1, 0.1)]}
    hv.legacy_rows(res, tmp_path / "old.json")
    assert res["rows"] == ["fault-free", "none", "random-legacy", "random-w", "full"]
    legacy = [r for r in res["runs"] if r["row"] == "random-legacy"]
    assert [r["final_acc"] for r in legacy] == [0.79, 0.79] and legacy[0]["name"].endswith("-random-legacy")
    assert "7db911f" in res["policies"]["random-legacy"] and "random-legacy" not in res["rows_left_out"]
    assert [r["row"] for r in res["runs"]].count("random-w") == 1


def test_merge_adds_another_studys_runs_and_refuses_a_different_study(hv):
    def study(setting, seeds, runs):
        return {"losses": [[2, 0.3], [3, 0.6]], "size": "0.05", "share": 0.75, "first_share": 0.5, "workers": 4,
                "rows": ["none", "random-w"], "policies": {"none": "x", "random-w": "y"}, "seeds": seeds,
                "models": [setting], "settings": {setting: {"model": setting, "partitions": ["label-skew"]}},
                "n_jobs": len(runs), "study_wall_seconds": 60.0, "code": {"start": {"commit": "abc", "digest": "d"}},
                "quick": True, "runs": runs}

    a = study("logreg", [0, 1], [_rec("none", 0, 0.7, 0.5), _rec("random-w", 0, 0.8, 0.7)])
    b = study("mlp", [0, 1, 2], [_rec("none", 2, 0.7, 0.5, setting="mlp"), _rec("none", 0, 0.1, 0.1)])
    hv.merge(a, b, "b.json")
    assert [(r["setting"], r["seed"], r["row"]) for r in a["runs"]] == [
        ("logreg", 0, "none"), ("logreg", 0, "random-w"), ("mlp", 2, "none")], "a run in both keeps the first's"
    assert a["seeds"] == [0, 1, 2] and a["models"] == ["logreg", "mlp"] and set(a["settings"]) == {"logreg", "mlp"}
    assert a["n_jobs"] == 4 and not a["quick"] and [p.get("file") for p in a["parts"]] == [None, "b.json"]
    c = study("mlp", [0], [])
    c["size"] = "0.1"
    with pytest.raises(SystemExit, match="size"):
        hv.merge(a, c, "c.json")
