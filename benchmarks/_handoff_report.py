"""The handoff study's statistics and markdown (benchmarks/handoff_value.py): means over seeds, per-seed paired
differences (to fault-free, to ``full``, between rules), the tables, and the verdict against issue 15's goal."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from _runs import RESULTS, write

KEYS = ("final_acc", "dead_acc", "first_acc", "other_acc")  # accuracies (fractions), deltas in points
GOAL = 2.0  # points: lost-class accuracy within this of full's (issue 15)
#: paired comparisons: (row, against)
AGAINST = [("random-w", "random-legacy"), ("coreset", "random-w"), ("random-damped", "random-w"),
           ("random-classmix", "random-w"), ("random-w", "none")]


def _vals(recs: list[dict], key: str) -> list[float]:
    return [r[key] for r in recs if r.get(key) is not None and math.isfinite(r[key])]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(a: list[dict], b: list[dict], key: str) -> list[float]:
    """Per-seed differences a - b of ``key`` (points of accuracy), over the seeds both have."""
    bs = {r["seed"]: r for r in b}
    return [100 * (r[key] - bs[r["seed"]][key]) for r in a
            if r["seed"] in bs and r.get(key) is not None and bs[r["seed"]].get(key) is not None]


def fmt(m: float | None, s: float | None, scale: float = 1.0, nd: int = 2, sign: bool = False) -> str:
    if m is None:
        return "—"
    return f"{m * scale:{'+' if sign else ''}.{nd}f} ± {s * scale:.{nd}f}"


def usable(records: list[dict], setting: str, part: str, row: str) -> list[dict]:
    return [r for r in records if (r["setting"], r["partition"], r["row"]) == (setting, part, row)
            and r["status"] == "completed" and r.get("clean", True)]


def summarize(records: list[dict], rows: list[str]) -> dict:
    """Mean ± std over seeds for every (setting, partition, row), with paired deltas to fault-free (``d_``)
    and to ``full`` (``g_``)."""
    out: dict = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        for part in dict.fromkeys(r["partition"] for r in records if r["setting"] == setting):
            base, full = usable(records, setting, part, "fault-free"), usable(records, setting, part, "full")
            cell = out.setdefault(setting, {}).setdefault(part, {})
            for row in rows:
                recs = [r for r in records if (r["setting"], r["partition"], r["row"]) == (setting, part, row)]
                if not recs:
                    continue
                ok = usable(records, setting, part, row)
                c: dict = {"n": len(ok), "failed": len(recs) - len(ok), "seeds": [r["seed"] for r in ok]}
                for key in (*KEYS, "rows_handed", "handoff_bytes", "handoff_bytes_rows", "handoff_time",
                            "round_time_median", "recovery_time"):
                    c[key] = mean_std(_vals(ok, key))
                for key in KEYS:
                    c[f"d_{key}"] = mean_std(paired(ok, base, key))
                    c[f"g_{key}"] = mean_std(paired(ok, full, key))
                bytes_full = {r["seed"]: r["handoff_bytes_rows"] for r in full if r.get("handoff_bytes_rows")}
                c["bytes_vs_full"] = mean_std([r["handoff_bytes_rows"] / bytes_full[r["seed"]] for r in ok
                                               if r["seed"] in bytes_full and r.get("handoff_bytes_rows") is not None])
                cell[row] = c
    return out


def table(cells: dict, rows: list[str]) -> list[str]:
    out = ["| row | final acc % | Δ vs fault-free | lost classes acc % | Δ vs fault-free | first-lost classes acc % "
           "| Δ vs fault-free | other classes acc % | rows handed | bytes / full's | MB written at the losses "
           "| handoff s (slower loss) | round s |", "|" + "---|" * 13]
    for row in rows:
        c = cells.get(row)
        if c is None:
            continue
        base = row == "fault-free"
        fail = f" ({c['failed']} failed)" if c["failed"] else ""

        def d(key: str, c: dict = c, base: bool = base) -> str:
            return "—" if base else fmt(*c[key], sign=True)
        out.append(f"| {row}{fail} | {fmt(*c['final_acc'], 100)} | {d('d_final_acc')} | {fmt(*c['dead_acc'], 100)} "
                   f"| {d('d_dead_acc')} | {fmt(*c['first_acc'], 100)} | {d('d_first_acc')} "
                   f"| {fmt(*c['other_acc'], 100)} | {'—' if base else fmt(*c['rows_handed'], nd=0)} "
                   f"| {'—' if base else fmt(*c['bytes_vs_full'], nd=3)} "
                   f"| {'—' if base else fmt(*c['handoff_bytes'], scale=1e-6)} "
                   f"| {'—' if base else fmt(*c['handoff_time'], nd=3)} | {fmt(*c['round_time_median'], nd=3)} |")
    return out


def comparisons(records: list[dict], setting: str, part: str) -> list[str]:
    """Paired per-seed differences between rows (points of accuracy), with wins."""
    out = []
    for a, b in AGAINST:
        for key, what in (("final_acc", "overall"), ("dead_acc", "lost classes"), ("first_acc", "first-lost")):
            dd = paired(usable(records, setting, part, a), usable(records, setting, part, b), key)
            if dd:
                m, s = mean_std(dd)
                out.append(f"| {a} − {b} | {what} | {m:+.2f} ± {s:.2f} | {sum(x > 0 for x in dd)} of {len(dd)} | "
                           f"{', '.join(f'{x:+.2f}' for x in dd)} |")
    return out


def best_row(cells: dict) -> str | None:
    """The representative row with the highest mean lost-class accuracy (ties: overall accuracy)."""
    cands = [(c["dead_acc"][0], c["final_acc"][0], row) for row, c in cells.items()
             if row not in ("fault-free", "none", "full") and c["dead_acc"][0] is not None]
    return max(cands)[2] if cands else None


def verdict(cells: dict, settings: dict, rows: list[str], records: list[dict]) -> list[str]:
    """Issue 15's goal, one line per label-skew setting and row: lost-class accuracy against full's after two
    losses (paired), at what share of full's bytes; then each row's cost on iid shards."""
    reps = [r for r in rows if r not in ("fault-free", "full")]
    out = ["## Against `full`, after two losses (label-skew)", "",
           f"Per-seed paired differences to `full` (points); *goal*: lost-class accuracy within {GOAL:g} points of "
           "full's (mean), at a small share of its bytes.", "",
           "| setting | row | lost classes − full | first-lost − full | overall − full | bytes / full's | handoff s "
           "| goal |", "|---|---|---|---|---|---|---|---|"]
    for setting, st in settings.items():
        c = cells.get(setting, {}).get("label-skew", {})
        for row in reps:
            if row not in c:
                continue
            g = c[row]["g_dead_acc"]
            ok = "—" if g[0] is None else ("yes" if g[0] >= -GOAL else "no")
            out.append(f"| {st['model']} {st['regime']} | {row} | {fmt(*g, sign=True)} "
                       f"| {fmt(*c[row]['g_first_acc'], sign=True)} | {fmt(*c[row]['g_final_acc'], sign=True)} "
                       f"| {fmt(*c[row]['bytes_vs_full'], nd=3)} | {fmt(*c[row]['handoff_time'], nd=3)} | {ok} |")
    iid = [(s, st) for s, st in settings.items() if "iid" in cells.get(s, {})]
    if iid:
        out += ["", "## The cost on iid shards (no class is lost: weighting can only add variance)", "",
                "| setting | row | overall Δ vs fault-free | overall Δ vs `random-w` (paired) |", "|---|---|---|---|"]
        for setting, st in iid:
            c = cells[setting]["iid"]
            ref = usable(records, setting, "iid", "random-w")
            for row in reps:
                if row in c:
                    dw = mean_std(paired(usable(records, setting, "iid", row), ref, "final_acc"))
                    out.append(f"| {st['model']} {st['regime']} | {row} | {fmt(*c[row]['d_final_acc'], sign=True)} "
                               f"| {'—' if row == 'random-w' else fmt(*dw, sign=True)} |")
    return out


def render(res: dict, out: str) -> None:
    """Tables, the plot and the markdown of a study, from its records (also ``--render`` of a saved JSON)."""
    from _handoff_plot import plot_study

    records, settings, seeds, rows = res["runs"], res["settings"], res["seeds"], res["rows"]
    cells = summarize(records, rows)
    res["summary"] = cells
    res["best"] = {s: best_row(cells[s]["label-skew"]) for s in settings if "label-skew" in cells.get(s, {})}
    png = RESULTS / ("handoff_classes.png" if out == "handoff_value" else f"{out}_classes.png")
    res["plot"] = plot_study(res, Path(res["kept_runs"]), png)
    wall, code0, code1 = res["study_wall_seconds"], res["code"]["start"], res["code"]["end"]
    losses = ", ".join(f"world rank {r} at {100 * f:g} % of the rounds" for r, f in res["losses"])
    command = res.get("command") or "python benchmarks/handoff_value.py" + (" --quick" if res["quick"] else "")
    mk = [f"# What handing over a dead worker's points is worth, after {len(res['losses'])} losses "
          f"(Fashion-MNIST, {res['workers']} workers)", "", f"{res['machine']}", "",
          f"Command: `{command}`"
          f"{' and the parts below' if res.get('parts') else ''} — {res['n_jobs']} jobs "
          f"one at a time, {wall / 60:.1f} min. Code: commit {code0['commit']}"
          + (" with uncommitted changes" if code0["uncommitted"] else "") + f", source digest {code0['digest']}"
          + (", unchanged during the study." if code1["digest"] == code0["digest"] else
             f"; **the code changed during the study** (digest {code1['digest']} at the end): the runs mix versions."),
          "", *([] if not res.get("parts") else [
              "Merged from " + "; ".join(
                  f"`{p.get('command') or p.get('file', 'the main run')}`: {p['n_jobs']} jobs, "
                  f"{p['wall'] / 60:.1f} min, commit "
                  f"{p['code']['start']['commit']} digest {p['code']['start']['digest']}" for p in res["parts"])
              + " (`--render A.json --merge B.json`).", ""]),
          "**Setup.** " + "; ".join(
              f"{st['model']} {st['regime']}: `{st['rounds']}` rounds, losses at rounds "
              f"{', '.join(str(f) for _, f in st['losses'])}, `executor.eval_every={st['eval_every']}`, partitions "
              f"{', '.join(st['partitions'])}" for st in settings.values())
          + f". Losses: {losses} (SIGKILL; ULFM detects them); the second lost worker owns rows handed from the "
          f"first. MLP: `model.n_iterations={res['mlp_iterations']}`. *sync* = `executor.send_gradients=true, "
          f"executor.comm_period=1`. Seeds {seeds} (`model.seed`: partition, initial model, minibatches; Δ columns "
          "are per-seed paired differences). `label-skew` is Dirichlet(0.3) over 4 workers.", "",
          "**Rows.** " + "; ".join(f"`{r}`: {w}" for r, w in res["policies"].items())
          + f". Representative rows hand over `n_most_rep: {res['size']}` of each lost shard."
          + ("" if not res.get("rows_left_out") else " Left out (this checkout refuses their config): "
             + "; ".join(f"`{r}` ({w})" for r, w in res["rows_left_out"].items()) + "."), "",
          f"**Classes.** *lost classes*: of which the lost workers together held more than {100 * res['share']:g} % "
          f"of the training rows at the start; *first-lost*: of which the first lost worker alone held more than "
          f"{100 * res.get('first_share', 0.5):g} % (their rows were handed twice). Mean final test accuracy over "
          "them (1000 test rows a class). *bytes / full's*: rows "
          "handed × (784·4 + 4 + 8 + 8) B over full's; *handoff s*: detection to training on the rows, the slower "
          "of the two losses.", ""]
    if res.get("coreset_cost"):
        mk += ["**Coreset cost** (`select_coreset`, one process, before the jobs, on rank 2's Fashion-MNIST shard "
               "of seed 0): " + "; ".join(f"{kind} shard, {c['rows']} rows, k = {c['k']}: {c['ms']:.0f} ms"
                                                   for kind, c in res["coreset_cost"].items())
               + ". In the jobs it is part of *handoff s* (rank 0 chooses at the loss).", ""]
    mk += verdict(cells, settings, rows, records) + [""]
    for setting, st in settings.items():
        for part in st["partitions"]:
            if part not in cells.get(setting, {}):
                continue
            mk += [f"## {st['model']}, {part}, {st['regime']}", ""] + table(cells[setting][part], rows) + [""]
            comp = comparisons(records, setting, part)
            if comp:
                mk += ["Paired per-seed differences (points; wins = seeds where the first row is better):", "",
                       "| rows | accuracy | mean ± std | wins | per seed |", "|---|---|---|---|---|"] + comp + [""]
    best = {s: b for s, b in res["best"].items() if b}
    if best:
        mk += ["**Best representative row** (highest mean lost-class accuracy, label-skew): "
               + ", ".join(f"{s} `{b}`" for s, b in best.items()) + ".", ""]
    n_cont = sum(r["contended_attempts"] for r in records)
    shared = [r["name"] for r in records if r["shared_cores"]]
    mk += [f"**Alone on the machine.** The study waited {sum(r['waited_for_others'] for r in records):.0f} s in all "
           f"for other ftmpi jobs, tests and benchmarks; {n_cont} job(s) that shared the cores anyway were run again"
           + ("." if not shared else f"; still shared after the last try, timings inflated: {shared}."
              if len(shared) <= 8 else f"; {len(shared)} of {len(records)} jobs shared the cores with other work "
              "(timings inflated: the times in these tables are noise; the accuracies are not affected)."), ""]
    redo = [(r["name"], a["why"]) for r in records for a in r["rejected_attempts"]]
    bad = [r["name"] for r in records if not r["clean"]]
    mk += [f"**Repeated runs.** {len(redo)} attempt(s) lost other workers than the ones killed (or did not "
           "complete) and were run again" + (": " + "; ".join(f"`{n}`: {w}" for n, w in redo) if redo else "")
           + (f". Still unclean, left out of the tables: {bad}." if bad else "."), ""]
    if res["plot"]:
        mk += [f"Plot: `benchmarks/results/{Path(res['plot']).name}`: per label-skew setting, the lost classes' "
               "test accuracy against round (mean over seeds; dashed: the losses) and, after both losses, each "
               "class's final accuracy minus fault-free's against the share of it the lost workers held.", ""]
    write(out, res, "\n".join(mk))
