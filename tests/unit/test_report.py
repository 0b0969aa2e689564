"""Report and plot over run dirs written here with the project's own writers (config, metrics, summary)."""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import pytest

from ftmpi.config import dump_config, load_config
from ftmpi.errors import ConfigError
from ftmpi.observe.metrics import MetricsCSV, write_json_atomic
from ftmpi.observe.report import (
    MISSING,
    add_report_args,
    collect,
    expand_run_dirs,
    failure_lines,
    load_run,
    main_report,
    run_report,
    spare_lines,
    to_markdown,
    to_text,
    write_csv,
)

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, *, rounds: int = 20, kill_at: int | None = None, quantize: int = 0,
             status: str | None = "completed", partition: str = "iid", extra: tuple[str, ...] = ()) -> Path:
    """A run dir like the one a real 4-worker smoke run leaves (4 workers, 4 classes); nothing is launched."""
    run = root / name
    run.mkdir(parents=True)
    sets = [f"executor.quantize={quantize}", f"data.partition={partition}", *extra]
    if kill_at is not None:
        sets.append(f"faults=['kill:2@{kill_at}']")
    cfg = load_config(SMOKE, sets, env={})
    dump_config(cfg, run / "config.yaml")
    m = MetricsCSV(run / "metrics.csv", [f"acc_class{c}" for c in range(4)])
    sent = recv = 0
    for r in range(rounds):
        dead = kill_at is not None and r >= kill_at
        sent, recv = sent + 2128, recv + (3183 if dead else 4244)
        acc = 0.86 - 0.3 * math.exp(-r / 3)
        m.row({"round": r, "epoch": int(dead), "wall": 5.3 + 0.05 * r, "iters": 10 * (r + 1),
               "train_loss": 0.39 + 1.1 * math.exp(-r / 2.5), "test_acc": acc, "bytes_sent": sent,
               "bytes_recv": recv, "alive_workers": 3 if dead else 4, "stale_dropped": 0, "failures": int(dead),
               "coverage": 0.765625 if dead else 1.0, "round_time": 0.01,
               **{f"acc_class{c}": acc - 0.05 * c * (dead and c < 2) for c in range(4)}})
    m.close()
    if status is None:
        return run
    summary = {"status": status, "name": "smoke", "pid": 4242}
    if status != "running":
        fails = [] if kill_at is None else [{
            "rank": 2, "round": kill_at, "how": "ulfm", "detected_at": 1795593028.53, "injected_at": 1795593028.50,
            "kind": "kill", "detection_latency": 0.0305, "recovery_time": 0.0604, "handoff_time": 0.0134,
            "rows_handed": 50, "rows_dropped": 750, "reason": "", "row_weight": 16.0, "rows_prefetched": 50}]
        hist = [[192, 198, 192, 218], [212, 204, 193, 191], [192, 196, 210, 202], [196, 203, 200, 201]]
        if partition == "label-skew":
            hist = [[700, 10, 50, 40], [20, 30, 700, 10], [40, 720, 20, 30], [40, 40, 30, 720]]
        summary = {
            "status": status, "exit_code": {"completed": 0, "no-workers": 3}.get(status, 1), "name": "smoke",
            "scenario": "smoke", "final_test_acc": 0.86, "per_class_acc": [0.79, 0.90, 0.88, 0.87],
            "wall_seconds": 5.93, "rounds": rounds, "iterations": 10 * rounds, "bytes_sent": sent,
            "bytes_recv": recv, "bytes_total": sent + recv, "ranks": 5, "workers": 4,
            "alive_workers": 3 if kill_at is not None else 4, "detector": "ulfm", "comm_period": 10,
            "switched_to_every_iteration_at": None, "quantize": quantize, "remap": "representative",
            "partition": partition, "dataset": "synthetic", "failures": fails,
            "max_recovery_time": fails[0]["recovery_time"] if fails else None,
            "coverage": 0.765625 if fails else 1.0, "points_handed": 50 if fails else 0, "stale_dropped": 0,
            "class_histogram": hist, "initial_shards": {"1": 800, "2": 800, "3": 800, "4": 800},
        }
    write_json_atomic(run / "summary.json", summary)
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "sweep"
    out = {
        "kill": make_run(root, "w4-kill", kill_at=5),
        "quant": make_run(root, "w4-q4", quantize=4),
        "incomplete": make_run(root, "no-summary", rounds=7, kill_at=5, status=None),
        "crashed": make_run(root, "crashed", rounds=3, status="running"),
        "noworkers": make_run(root, "all-dead", rounds=4, status="no-workers"),
        "badjson": make_run(root, "bad-json"),
        "truncated": make_run(root, "truncated-csv", status="running"),
        "badyaml": make_run(root, "bad-yaml"),
    }
    text = (out["badjson"] / "summary.json").read_text()
    (out["badjson"] / "summary.json").write_text(text[: len(text) // 2])
    with open(out["truncated"] / "metrics.csv", "a") as fh:
        fh.write("20,0,6.3,210,0.39,0.8")  # a row cut off mid-write
    (out["badyaml"] / "config.yaml").write_text("name: x\nmodel: {type: logreg\n")
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    out["missing"] = root / "never-written"
    return out


def by_run(rows: list[dict]) -> dict[str, dict]:
    return {r["run"]: r for r in rows}


def test_the_rep_column_names_the_selection_and_the_weight_rule(tmp_path):
    want = {("random", "shard"): "random+w", ("random", "one"): "random", ("coreset", "shard"): "coreset+w",
            ("random", "damped"): "random+damped", ("random", "classmix"): "random+classmix",
            ("random", "sqrt"): "random+sqrt", ("random", "shard-legacy"): "random+shard-legacy",
            ("coreset", "damped"): "coreset+damped", ("loss", "shard"): "loss+w"}
    dirs = [make_run(tmp_path, f"{sel}-{w}", kill_at=5, extra=(f"optimizer.rep_selection={sel}",
                                                               f"optimizer.rep_weight={w}")) for sel, w in want]
    got = by_run(collect(dirs))
    assert {(sel, w): got[f"{sel}-{w}"]["rep_selection"] for sel, w in want} == want


def test_collect_statuses_and_values(runs):
    rows = collect(list(runs.values()))
    assert [r["run"] for r in rows] == [p.name for p in runs.values()], "one row per run dir, in order"
    got = by_run(rows)
    assert {k: got[p.name]["status"] for k, p in runs.items()} == {
        "kill": "completed", "quant": "completed", "incomplete": "incomplete", "crashed": "crashed-or-running",
        "noworkers": "no-workers", "badjson": "corrupt", "truncated": "corrupt", "badyaml": "corrupt",
        "empty": "missing", "missing": "missing"}
    k = got["w4-kill"]
    assert (k["workers"], k["comm_period"], k["quantize"], k["remap"], k["detector"]) == (4, 10, 0, "representative",
                                                                                         "ulfm")
    o = load_config(None, env={}).optimizer  # smoke.yaml leaves the rule and the weighting to the defaults
    default_rule = o.rep_selection + {"shard": "+w", "one": ""}.get(o.rep_weight, f"+{o.rep_weight}")
    assert (k["partition"], k["rep_selection"], k["faults"], k["detected"]) == ("iid", default_rule, "kill:2@5", 1)
    assert k["final_acc"] == 0.86 and k["wall_s"] == 5.93 and k["rounds"] == 20
    assert k["max_recovery_s"] == pytest.approx(0.0604) and k["coverage"] == 0.765625 and k["points_handed"] == 50
    assert k["mb"] == pytest.approx((20 * 2128 + 5 * 4244 + 15 * 3183) / 1e6) and k["scenario"] == "smoke"
    q = got["w4-q4"]
    assert (q["quantize"], q["faults"], q["detected"], q["max_recovery_s"]) == (4, "none", 0, None)


def test_fallbacks_and_notes_for_unfinished_runs(runs):
    got = by_run(collect(list(runs.values())))
    inc = got["no-summary"]  # everything from config.yaml and the last metrics row
    assert inc["rounds"] == 7 and inc["detected"] == 1 and inc["workers"] == 4 and inc["faults"] == "kill:2@5"
    assert inc["final_acc"] == pytest.approx(0.86 - 0.3 * math.exp(-2), abs=1e-5)
    assert inc["coverage"] == 0.765625 and inc["max_recovery_s"] is None and "no summary.json" in inc["note"]
    crashed = got["crashed"]
    assert crashed["rounds"] == 3 and "pid 4242" in crashed["note"] and crashed["wall_s"] == pytest.approx(5.4)
    assert got["all-dead"]["status"] == "no-workers"
    assert "summary.json: bad JSON" in got["bad-json"]["note"]
    assert got["bad-json"]["rounds"] == 20, "a corrupt summary still shows what the metrics say"
    trunc = got["truncated-csv"]
    assert "metrics.csv: line 22 has 6 of 23 fields" in trunc["note"] and "summary says running" in trunc["note"]
    assert trunc["rounds"] == 20, "the rows before the cut are kept"
    assert "config.yaml: bad YAML at line" in got["bad-yaml"]["note"] and got["bad-yaml"]["final_acc"] == 0.86
    assert got["empty"]["note"].startswith("no summary.json, metrics.csv")
    assert got["never-written"]["note"] == "no such directory"
    assert all(v is None for k, v in got["never-written"].items() if k not in ("run", "status", "note", "path"))


def test_cut_off_last_line_is_corrupt(tmp_path):
    run = make_run(tmp_path, "cut", rounds=5)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[:-6])  # all fields present, but the last number is cut short
    r = load_run(run)
    assert r.status == "corrupt" and "line 6 is cut off" in r.problems[0] and len(r.metrics) == 4


def test_expand_folder_of_runs(runs, tmp_path):
    root = runs["kill"].parent
    (root / "died-early").mkdir()
    (root / "died-early" / "job.log").write_text("ftmpi: rank 0: error: ...\n")
    (root / ".hidden").mkdir()
    dirs = expand_run_dirs([root, runs["missing"]])
    names = [d.name for d in dirs]
    assert names == sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) + ["never-written"]
    assert "empty" in names and "died-early" in names, "a folder of runs lists every run, even empty ones"
    died = by_run(collect(dirs))["died-early"]
    assert died["status"] == "missing" and "(see job.log)" in died["note"]
    assert expand_run_dirs([runs["kill"]]) == [runs["kill"]], "a run dir is never expanded"
    assert expand_run_dirs([tmp_path / "nope"]) == [tmp_path / "nope"]


def test_csv_output_round_trips(runs, tmp_path):
    rows = collect(list(runs.values()))
    out = write_csv(rows, tmp_path / "out" / "report.csv")
    with open(out, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(rows) and back[0]["run"] == "w4-kill" and back[0]["faults"] == "kill:2@5"
    assert float(back[0]["final_acc"]) == 0.86 and back[0]["workers"] == "4" and back[0]["max_recovery_s"]
    assert back[1]["max_recovery_s"] == "" and back[-1]["status"] == "missing"
    assert {"path", "dataset", "note"} <= set(back[0])


def test_markdown_and_text_tables(runs):
    rows = collect(list(runs.values()))
    md = to_markdown(rows).splitlines()
    assert md[0].startswith("| run | status | W |") and md[1].startswith("|---|---|---:|")
    assert len(md) == 2 + len(rows) and all(line.count("|") >= md[0].count("|") for line in md)
    kill = next(line for line in md if line.startswith("| w4-kill "))
    assert "| 0.8600 |" in kill and "| kill:2@5 |" in kill and "| 0.060 |" in kill
    assert f"| {MISSING} |" in next(line for line in md if line.startswith("| never-written "))
    text = to_text(rows).splitlines()
    assert len(text) == 2 + len(rows)
    col = text[0].index("status")
    assert all(line[col - 2:col] == "  " for line in text), "columns are aligned"


def test_cli_entry_points(runs, tmp_path, capsys):
    root = runs["kill"].parent
    assert main_report([str(root), "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "w4-kill" in out and "failures:" in out and "rank 2 lost at round 5 (kill, seen by ulfm)" in out
    assert ("50 rows handed (each weighing 16.0), 50 of them read ahead, training on them 13 ms after detection, "
            "750 dropped") in out
    assert (tmp_path / "r.csv").exists()
    parser = add_report_args(argparse.ArgumentParser())
    assert run_report(parser.parse_args([str(runs["kill"]), "--markdown"])) == 0
    assert capsys.readouterr().out.startswith("| run | status |")


def test_spares_are_reported(tmp_path, capsys):
    """executor.spares: which spare took which lost worker's shard and from which round it trained, the spares
    lost and those idle at the end; a run without spares gets no line."""
    root = tmp_path / "spares"
    took = make_run(root, "w4-kill-spare", kill_at=5, extra=("executor.spares=2",))
    summary = load_run(took).summary
    summary["failures"][0].update(rows_handed=0, rows_dropped=0, rows_prefetched=0, row_weight=None, spare=6,
                                  rows_to_spare=800, recovered_round=6)
    summary["spares"] = {"configured": 2, "idle": [], "used": [
        {"spare": 6, "took": 2, "round": 5, "epoch": 1, "rows": 800}], "lost": [
        {"spare": 5, "lost": True, "round": 3, "how": "ulfm", "reason": ""}]}
    write_json_atomic(took / "summary.json", summary)
    idle = make_run(root, "w4-spare-idle", extra=("executor.spares=1",))
    summary = load_run(idle).summary
    summary["spares"] = {"configured": 1, "idle": [5], "used": [], "lost": [],
                         "given_back": [{"spare": 5, "to": 2, "round": 40}]}
    write_json_atomic(idle / "summary.json", summary)
    plain = make_run(root, "w4-kill", kill_at=5)
    assert spare_lines([took, idle, plain]) == [
        "w4-kill-spare: 2 configured; spare 6 took worker 2's shard (800 rows) at round 5, training from round 6; "
        "lost: spare 5 at round 3 (ulfm); idle at the end: none",
        "w4-spare-idle: 1 configured; resumed at round 40: spare 5's place back to worker 2; lost: none; "
        "idle at the end: 5"]
    assert main_report([str(root)]) == 0
    out = capsys.readouterr().out
    assert "\nspares:\n  w4-kill-spare: 2 configured; spare 6 took worker 2's shard" in out
    assert "rank 2 lost at round 5 (kill, seen by ulfm), detected after 0.030s, recovered after 0.060s, 0 rows " \
           "handed, 0 dropped, its whole shard (800 rows) to spare 6" in out
    assert out.count("w4-kill:") == 1, "the run without spares has its failure line and no spares line"


# ------------------------------------------------------------------------------------------------ plots
def check_png(path: Path, min_kb: int = 20) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > min_kb * 1024, f"{path}: {len(data)} bytes"


def test_plot_runs_marks_failures_and_remaps(runs, tmp_path):
    pytest.importorskip("matplotlib")
    from ftmpi.observe.plot import plot_runs

    res = plot_runs([runs["kill"].parent, runs["missing"]], tmp_path / "curves.png")
    check_png(res.path)
    assert "w4-kill" in res.runs and "no-summary" in res.runs and "bad-json" in res.runs
    skipped = dict(res.skipped)
    assert skipped["never-written"] == "not a directory"
    kill = [m for m in res.failures if m.run == "w4-kill"]
    assert [(m.round, m.wall, m.label) for m in kill] == [(5, pytest.approx(5.55), "rank 2 kill")]
    inferred = [(m.round, m.label) for m in res.failures if m.run == "no-summary"]
    assert inferred == [(5, "1 worker(s) lost")], "no summary: failures come from the metrics' failure count"
    remaps = {m.run: m.round for m in res.remaps}
    assert remaps["w4-kill"] == 5 and remaps["no-summary"] == 5 and "w4-q4" not in remaps
    one = plot_runs([runs["quant"]], tmp_path / "one.png", x="round")
    check_png(one.path, 10)
    assert one.marks == []
    with pytest.raises(ConfigError, match="nothing to draw"):
        plot_runs([runs["missing"]], tmp_path / "none.png")


def test_plot_class_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    from ftmpi.observe.plot import dead_worker_classes, plot_class_accuracy

    skew = make_run(tmp_path, "skew-kill", kill_at=8, partition="label-skew")
    iid = make_run(tmp_path, "iid-kill", kill_at=8)
    # rank 2 is row 1 of class_histogram (the order of initial_shards) and holds most of class 2
    assert dead_worker_classes(load_run(skew)) == [2] and dead_worker_classes(load_run(iid)) == []
    for classes in (None, [0, 1], "dead"):
        res = plot_class_accuracy([skew, iid], tmp_path / f"cls-{classes}.png", classes)
        check_png(res.path)
        assert [m.round for m in res.failures] == [8, 8]


def test_plot_cli_and_missing_matplotlib(runs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import builtins

    from ftmpi.observe.plot import NEED_MPL, main_plot

    assert main_plot([str(runs["kill"]), str(runs["missing"]), "-o", str(tmp_path / "c.png")]) == 0
    cap = capsys.readouterr()
    assert "1 failures and 1 remaps marked" in cap.out and "never-written left out" in cap.err
    assert main_plot([str(runs["kill"]), "-o", str(tmp_path / "k.png"), "--per-class", "dead"]) == 0
    real = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert main_plot([str(runs["kill"]), "-o", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == f"ftmpi: error: {NEED_MPL}"


def test_a_loss_seen_ending_on_the_coordinators_host_is_said_so(tmp_path):
    run = make_run(tmp_path, "w4-exited", kill_at=5)
    summary = load_run(run).summary
    summary["failures"][0]["how"] = "exited"
    write_json_atomic(run / "summary.json", summary)
    (line,) = failure_lines([run])
    assert "rank 2 lost at round 5 (kill, its process seen ending on the coordinator's host), detected after" in line
