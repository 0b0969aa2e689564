"""Training curves as PNG: ``python -m ftmpi plot RUN_DIR... -o out.png [--per-class [CLASSES]]``.

:func:`plot_runs` draws test accuracy and training loss against round and against wall time, one line per
run; a dashed vertical line in the run's colour marks the round in which a worker's failure was detected
and a dotted one a remap (the metrics row where ``epoch`` changes). :func:`plot_class_accuracy` draws
per-class test accuracy, or the mean over a chosen set of classes (say, the dead worker's) against the mean
over the rest. Both return a :class:`PlotResult` listing every mark they drew, so tests and scripts can check
them. matplotlib is optional (``pip install 'ftmpi[plot]'``); figures are rendered with the Agg canvas and
never touch pyplot's global state.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftmpi.errors import ConfigError, FtmpiError
from ftmpi.observe.report import Run, expand_run_dirs, load_run

__all__ = ["Mark", "PlotResult", "add_plot_args", "dead_worker_classes", "held_classes", "plot_class_accuracy",
           "plot_held_class_accuracy", "plot_runs", "run_plot"]

NEED_MPL = "plot needs matplotlib: pip install 'ftmpi[plot]'"
_SMOOTH_FROM = 200  # rounds; longer series are drawn faint, under a trailing mean
#: x choice -> (metrics column, axis label, title words)
_XS = {"round": ("round", "round", "round"),
       "iters": ("iters", "local iterations per worker (round x comm_period)", "local iterations"),
       "wall": ("wall", "wall-clock time since launch (s)", "wall-clock time")}


@dataclass
class Mark:
    """One vertical mark drawn: a detected failure or a remap, at a round and (if known) a wall time."""

    run: str
    kind: str  # "failure" or "remap"
    round: int
    wall: float | None
    label: str = ""
    iters: float | None = None

    def at(self, x: str) -> float | None:
        """The mark's position on axis ``x`` (``round``, ``iters`` or ``wall``)."""
        return float(self.round) if x == "round" else self.iters if x == "iters" else self.wall


@dataclass
class PlotResult:
    """What a plot function drew: the file, the runs drawn, the runs left out (with why), the marks."""

    path: Path
    runs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    @property
    def failures(self) -> list[Mark]:
        """The failure marks."""
        return [m for m in self.marks if m.kind == "failure"]

    @property
    def remaps(self) -> list[Mark]:
        """The remap marks."""
        return [m for m in self.marks if m.kind == "remap"]


def _figure(w: float, h: float) -> Any:
    """A Figure on the Agg canvas (no pyplot), or the one-line ConfigError when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(NEED_MPL) from None
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _load(run_dirs: Sequence[str | Path], result: PlotResult) -> list[Run]:
    """Runs with at least one metrics row; the others go to ``result.skipped`` with the reason."""
    runs = []
    for p in expand_run_dirs(run_dirs):
        run = load_run(p)
        if not run.metrics:
            why = "; ".join(run.problems) or ("not a directory" if not run.path.is_dir()
                                              else "no metrics rows" if run.has_metrics else "no metrics.csv")
            result.skipped.append((run.name, why))
            continue
        runs.append(run)
    return runs


def _series(run: Run, key: str) -> list[float]:
    return [row.get(key, math.nan) for row in run.metrics]


def _at(run: Run, rnd: int, key: str) -> float | None:
    """Column ``key`` of the metrics row of round ``rnd`` (or of the last row before it)."""
    best = None
    for row in run.metrics:
        if row["round"] <= rnd and math.isfinite(row.get(key, math.nan)):
            best = row[key]
    return best


def _marks(run: Run) -> list[Mark]:
    out = [Mark(run.name, "failure", r, _at(run, r, "wall"), label, _at(run, r, "iters"))
           for r, label in run.failure_rounds()]
    out += [Mark(run.name, "remap", r, _at(run, r, "wall"), "remap", _at(run, r, "iters"))
            for r in run.remap_rounds()]
    return out


def _settings(run: Run) -> dict[str, str]:
    s, ex = run.summary or {}, run.section("executor")
    first = run.metrics[0] if run.metrics else {}
    workers = s.get("workers") or first.get("alive_workers")
    bits = s.get("quantize", ex.get("quantize"))
    faults = ",".join(str(f) for f in (run.config or {}).get("faults") or [])
    return {
        "workers": f"W={int(workers)}" if workers else "",
        "period": f"P={s.get('comm_period', ex.get('comm_period', '?'))}",
        "bits": f"{bits}-bit" if bits else "",
        "remap": f"remap={s.get('remap', ex.get('remap', '?'))}",
        "partition": str(s.get("partition") or run.section("data").get("partition") or ""),
        "faults": faults,
    }


def _labels(runs: list[Run]) -> list[str]:
    """Legend text: run name, the settings that differ between the runs (all for one run), faults, status."""
    sets = [_settings(r) for r in runs]
    keys = [k for k in sets[0] if len(runs) == 1 or len({s[k] for s in sets}) > 1 or k == "faults"]
    out = []
    for run, s in zip(runs, sets, strict=True):
        bits = [s[k] for k in keys if s[k]]
        text = run.name + (f"  ({', '.join(bits)})" if bits else "")
        acc = run.metrics[-1].get("test_acc", math.nan)
        if math.isfinite(acc):
            text += f"  acc {acc:.3f}"
        if run.status != "completed":
            text += f"  [{run.status}]"
        out.append(text)
    return out


def _vmarks(ax: Any, marks: list[Mark], x: str, color: Any, slot: int) -> None:
    """Draw failure (dashed) and remap (dotted) lines; label failures at the top of the panel."""
    for m in marks:
        pos = m.at(x)
        if pos is None:
            continue
        style = "--" if m.kind == "failure" else ":"
        ax.axvline(pos, color=color, linestyle=style, linewidth=1.6 if m.kind == "failure" else 1.2, alpha=0.9)
        if m.kind == "failure":
            ax.annotate(f"✕ {m.label}", xy=(pos, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12 - 11 * slot), textcoords="offset points", color=color, fontsize=8)
        else:
            ax.annotate("remap", xy=(pos, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4 + 11 * slot), textcoords="offset points", color=color, fontsize=8,
                        fontstyle="italic")


def _keep_labels_inside(fig: Any) -> None:
    """Put the mark labels of the right quarter of a panel on the left of their line (else they get cut)."""
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        for ann in ax.texts:
            if hasattr(ann, "xyann") and hi > lo and (ann.xy[0] - lo) / (hi - lo) > 0.75:
                ann.set_horizontalalignment("right")
                ann.xyann = (-abs(ann.xyann[0]), ann.xyann[1])


def _style_legend(fig: Any, handles: list[Any], labels: list[str], smoothed: bool = False) -> None:
    from matplotlib.lines import Line2D

    handles = handles + [Line2D([], [], color="0.3", linestyle="--"), Line2D([], [], color="0.3", linestyle=":")]
    labels = labels + ["failure detected", "remap (new epoch)"]
    if smoothed:
        handles.append(Line2D([], [], color="0.3", linewidth=0.6, alpha=0.4))
        labels.append(f"faint: every round (solid: trailing mean, runs > {_SMOOTH_FROM} rounds)")
    ncol = 1 if max(len(t) for t in labels) > 60 else 2 if len(labels) > 4 else len(labels)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path, x: str = "both") -> PlotResult:
    """Plot test accuracy and training loss of several runs into one PNG.

    Args:
        run_dirs: Run dirs, or folders of run dirs (expanded one level). Runs without metrics rows are
            left out and listed in :attr:`PlotResult.skipped`.
        out_png: The PNG to write.
        x: ``"round"``, ``"iters"``, ``"wall"`` or ``"both"``: a 2x2 grid, rows accuracy/loss, columns
            round/wall. With ``"both"``, runs whose rounds differ in length (another ``comm_period``, or a
            ``delta_switch``) are drawn against local iterations instead of round, which they share.

    Returns:
        The :class:`PlotResult`, with every failure and remap mark drawn.

    Raises:
        ConfigError: If matplotlib is missing, ``x`` is unknown or no run has metrics to draw.
    """
    if x not in ("round", "iters", "wall", "both"):
        raise ConfigError(f"plot: x must be round, iters, wall or both, got {x!r}")
    result = PlotResult(Path(out_png))
    runs = _load(run_dirs, result)
    if not runs:
        raise ConfigError("plot: nothing to draw (" + "; ".join(f"{n}: {w}" for n, w in result.skipped) + ")")
    xs = [_progress_axis(runs), "wall"] if x == "both" else [x]
    fig = _figure(6.2 * len(xs) + 0.6, 8.2 + 0.22 * len(runs))
    axes = fig.subplots(2, len(xs), squeeze=False, sharex="col")
    colors = _colors(len(runs))
    handles: list[Any] = []
    losses: list[float] = []
    tails: dict[str, list[float]] = {"test_acc": [], "train_loss": []}  # values after each run's first 10%
    slot = 0  # failure labels of successive runs stack downwards
    smoothed = False
    for i, run in enumerate(runs):
        marks = _marks(run)
        result.marks += marks
        result.runs.append(run.name)
        losses += [v for v in _series(run, "train_loss") if math.isfinite(v) and v > 0]
        for metric, values in tails.items():
            values += [v for v in _series(run, metric)[len(run.metrics) // 10:] if math.isfinite(v)]
        for col, key in enumerate(xs):
            xv = _series(run, _XS[key][0])
            for row, metric in enumerate(("test_acc", "train_loss")):
                ax = axes[row][col]
                yv = _series(run, metric)
                if len(yv) > _SMOOTH_FROM:  # a long noisy series: faint raw values under a trailing mean
                    ax.plot(xv, yv, color=colors[i], linewidth=0.6, alpha=0.25)
                    yv = _trailing_mean(yv, len(yv) // 40)
                    smoothed = True
                (line,) = ax.plot(xv, yv, color=colors[i], linewidth=1.6,
                                  marker="o" if len(xv) < 30 else None, markersize=3)
                _vmarks(ax, marks, key, colors[i], slot)
                if row == 0 and col == 0:
                    handles.append(line)
        slot += bool(marks)
    for col, key in enumerate(xs):
        axes[0][col].set_title(f"test accuracy by {_XS[key][2]}")
        axes[1][col].set_title(f"training loss by {_XS[key][2]}")
        axes[1][col].set_xlabel(_XS[key][1])
        if key != "wall":
            axes[1][col].xaxis.set_major_locator(_integer_ticks())
        axes[0][col].set_ylabel("test accuracy")
        axes[1][col].set_ylabel("training loss (mean over workers)")
        if losses and max(losses) / min(losses) > 20:
            axes[1][col].set_yscale("log")
        for row, metric in enumerate(tails):
            axes[row][col].grid(True, alpha=0.3)
            if max(len(r.metrics) for r in runs) >= 50:  # short runs: the whole climb is worth seeing
                _zoom(axes[row][col], tails[metric], low=metric == "test_acc")
    data = {str((r.summary or {}).get("dataset") or r.section("data").get("dataset") or "?") for r in runs}
    fig.suptitle(f"{len(runs)} run{'s' if len(runs) > 1 else ''} on {', '.join(sorted(data))}", fontsize=13)
    _style_legend(fig, handles, _labels(runs), smoothed)
    _keep_labels_inside(fig)
    result.path = _save(fig, out_png)
    return result


def _trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` finite values up to each point (so a failure's effect never shows early)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def _zoom(ax: Any, tail: list[float], low: bool) -> None:
    """Zoom the y axis onto the values after the first 10% of each run when the early ones squash them
    (accuracy: cut the bottom; loss: cut the top); the panel's title says so."""
    if len(tail) < 2 or ax.get_yscale() == "log":
        return
    lo, hi = ax.get_ylim()
    pad = 0.15 * (max(tail) - min(tail)) or 0.01
    new = (min(tail) - pad, hi) if low else (lo, max(tail) + pad)
    if new[1] - new[0] < 0.7 * (hi - lo):
        ax.set_ylim(*new)
        ax.set_title(ax.get_title() + f"  (zoomed: first rounds {'below' if low else 'above'})", fontsize=11)


def _progress_axis(runs: list[Run]) -> str:
    """``round`` when every run's rounds are equally long, else ``iters`` (round numbers would mislead)."""
    periods = set()
    for run in runs:
        s = run.summary or {}
        periods.add(None if s.get("switched_to_every_iteration_at") is not None
                    else s.get("comm_period", run.section("executor").get("comm_period")))
    return "round" if len(periods) == 1 and None not in periods else "iters"


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def dead_worker_classes(run: Run, factor: float = 1.5) -> list[int]:
    """Classes of which the failed workers held a large share (more than ``factor`` times a fair share).

    Uses ``class_histogram`` (rows in the order of ``initial_shards``) and the failed ranks of the summary;
    returns ``[]`` when they cannot be told (no failure, no histogram, or an iid split with no such class).
    """
    s = run.summary or {}
    hist, shards = s.get("class_histogram"), s.get("initial_shards")
    dead = {f.get("rank") for f in s.get("failures") or [] if isinstance(f, dict)}
    if not hist or not isinstance(shards, dict) or not dead:
        return []
    ranks = [int(r) for r in shards]
    if len(ranks) != len(hist):
        return []
    rows = [hist[i] for i, r in enumerate(ranks) if r in dead]
    fair = len(rows) / len(ranks)
    out = []
    for c in range(len(hist[0])):
        total = sum(h[c] for h in hist)
        if total and sum(h[c] for h in rows) / total > factor * fair:
            out.append(c)
    return out


def _class_names(run: Run, n: int) -> list[str]:
    from ftmpi.storage.data import FASHION_CLASSES

    fashion = ((run.summary or {}).get("dataset") or run.section("data").get("dataset")) == "fashion-mnist"
    return [f"{c} {FASHION_CLASSES[c]}" if fashion and c < len(FASHION_CLASSES) else f"class {c}" for c in range(n)]


def plot_class_accuracy(run_dirs: Sequence[str | Path], out_png: str | Path,
                        classes: list[int] | str | None = None) -> PlotResult:
    """Per-class test accuracy against round, one panel per run, failures and remaps marked.

    Args:
        run_dirs: Run dirs, or folders of run dirs.
        out_png: The PNG to write.
        classes: ``None`` draws every class; a list draws the mean accuracy over those classes against the
            mean over the others (each class faint behind); ``"dead"`` picks, per run, the classes the
            failed worker(s) held most of (:func:`dead_worker_classes`), or every class if there are none.

    Returns:
        The :class:`PlotResult`.

    Raises:
        ConfigError: If matplotlib is missing or no run has per-class columns to draw.
    """
    result = PlotResult(Path(out_png))
    runs = []
    for run in _load(run_dirs, result):
        if "acc_class0" in run.metrics[0]:
            runs.append(run)
        else:
            result.skipped.append((run.name, "no acc_class columns in metrics.csv"))
    if not runs:
        raise ConfigError("plot: no per-class accuracy to draw (" +
                          "; ".join(f"{n}: {w}" for n, w in result.skipped) + ")")
    ncol = min(len(runs), 2)
    nrow = math.ceil(len(runs) / ncol)
    fig = _figure(8.4 * ncol, 4.4 * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs, strict=False):
        marks = _marks(run)
        result.marks += marks
        result.runs.append(run.name)
        n_cls = sum(1 for k in run.metrics[0] if k.startswith("acc_class"))
        names = _class_names(run, n_cls)
        rounds = _series(run, "round")
        acc = [_series(run, f"acc_class{c}") for c in range(n_cls)]
        wanted = dead_worker_classes(run) if classes == "dead" else classes
        pick = [c for c in wanted or [] if isinstance(c, int) and 0 <= c < n_cls]
        title = run.name
        if pick and len(pick) < n_cls:
            rest = [c for c in range(n_cls) if c not in pick]
            for c in range(n_cls):
                ax.plot(rounds, acc[c], color="tab:red" if c in pick else "0.6", linewidth=0.7, alpha=0.45)
            for group, color, what in ((pick, "tab:red", "classes " + ", ".join(map(str, pick))),
                                       (rest, "0.2", "other classes")):
                mean = [sum(acc[c][i] for c in group) / len(group) for i in range(len(rounds))]
                ax.plot(rounds, mean, color=color, linewidth=2.4, label=f"{what} (mean)")
            if classes == "dead":
                title += "  (red: classes the failed worker held most of)"
        else:
            colors = _colors(n_cls)
            for c in range(n_cls):
                ax.plot(rounds, acc[c], color=colors[c], linewidth=1.4, label=names[c])
            if classes == "dead":
                title += ("  (no failure)" if not run.failure_rounds()
                          else "  (failed worker held no class in particular)")
        _vmarks(ax, marks, "round", "black", 0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel("test accuracy of the class")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Per-class test accuracy (dashed: failure detected, dotted: remap)", fontsize=12)
    _keep_labels_inside(fig)
    result.path = _save(fig, out_png)
    return result


def held_classes(summary: dict[str, Any] | None, ranks: Sequence[int], share: float = 0.5) -> list[int]:
    """Classes of which the workers ``ranks`` together held more than ``share`` of the training rows at the start.

    Reads ``class_histogram`` and ``initial_shards`` of a run's summary, so it works for a fault-free run too
    (the same seed gives the same partition). Returns ``[]`` when the summary does not say.
    """
    s = summary or {}
    hist, shards = s.get("class_histogram"), s.get("initial_shards")
    if not hist or not isinstance(shards, dict) or len(shards) != len(hist):
        return []
    order = [int(r) for r in shards]
    rows = [hist[i] for i, r in enumerate(order) if r in set(ranks)]
    out = []
    for c in range(len(hist[0])):
        total = sum(h[c] for h in hist)
        if total and sum(h[c] for h in rows) / total > share:
            out.append(c)
    return out


def _group_means(run: Run, classes: list[int]) -> list[float]:
    """Per round, the mean test accuracy over ``classes``."""
    cols = [_series(run, f"acc_class{c}") for c in classes]
    return [sum(col[i] for col in cols) / len(cols) for i in range(len(run.metrics))]


def plot_held_class_accuracy(panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[str | Path]]]]],
                             out_png: str | Path, rank: int = 2, share: float = 0.5, smooth: int = 5) -> PlotResult:
    """Test accuracy of the classes a worker held most of, and of the other classes, against round.

    One row of two panels per group (left: the classes of which world ``rank`` held more than ``share`` of the
    rows, :func:`held_classes`, each run using its own; right: the other classes). Each line is one setting:
    the mean over its runs (for instance one per seed) of a causal trailing mean over ``smooth`` rounds, so
    that the drop after a failure never shows before it. The legend gives each line's final values (mean of
    the runs' last rows, unsmoothed). The failure rounds of ``rank`` are marked once per panel.

    Args:
        panels: ``[(title, [(line label, [run dirs])])]``.
        out_png: The PNG to write.
        rank: The worker whose classes are split out (the one that fails).
        share: Fraction of a class's rows the worker must have held.
        smooth: Trailing-mean window in metrics rows (1 = raw values).

    Returns:
        The :class:`PlotResult`; runs without metrics, or whose summary names no such class, are in ``skipped``.

    Raises:
        ConfigError: If matplotlib is missing or nothing can be drawn.
    """
    result = PlotResult(Path(out_png))
    loaded = []
    for title, lines in panels:
        row = []
        for label, dirs in lines:
            runs = []
            for run in _load(dirs, result):
                n_cls = sum(1 for k in run.metrics[0] if k.startswith("acc_class"))
                cls = held_classes(run.summary, [rank], share)
                if not cls or len(cls) >= n_cls:
                    result.skipped.append((run.name, f"no class of which worker {rank} held > {share:.0%}"))
                    continue
                runs.append((run, cls, [c for c in range(n_cls) if c not in cls]))
            if runs:
                row.append((label, runs))
        if row:
            loaded.append((title, row))
    if not loaded:
        raise ConfigError("plot: nothing to draw (" + "; ".join(f"{n}: {w}" for n, w in result.skipped) + ")")
    fig = _figure(14.5, 4.4 * len(loaded) + 0.9)
    axes = fig.subplots(len(loaded), 2, squeeze=False)
    palette = ["0.35", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for (title, row), pair in zip(loaded, axes, strict=True):
        fail_rounds: set[int] = set()
        shown: list[list[float]] = [[], []]
        for i, (label, runs) in enumerate(row):
            n = min(len(r.metrics) for r, _, _ in runs)
            xs = _series(runs[0][0], "round")[:n]
            finals = []
            for side, ax in enumerate(pair):
                raw = [_group_means(r, groups[side])[:n] for r, *groups in runs]
                curves = [_trailing_mean(c, smooth) if smooth > 1 else c for c in raw]
                mean = [sum(c[j] for c in curves) / len(curves) for j in range(n)]
                ax.plot(xs, mean, color=palette[i % len(palette)], linestyle=(0, (4, 2)) if i == 0 else "-",
                        linewidth=2.2, zorder=3 if i == 0 else 2)  # the first (reference) line stays visible
                finals.append(sum(c[-1] for c in raw) / len(raw))
                shown[side] += [v for v in mean[n // 10:] if math.isfinite(v)]
            pair[1].lines[-1].set_label(f"{label}: {100 * finals[0]:.1f}% / {100 * finals[1]:.1f}%")
            for r, _, _ in runs:
                result.runs.append(r.name)
                result.marks += [m for m in _marks(r) if m.kind == "failure"]
                fail_rounds |= {rnd for rnd, what in r.failure_rounds() if what.startswith(f"rank {rank} ")}
        n_runs = max(len(runs) for _, runs in row)
        whats = (f"the classes worker {rank} held > {share:.0%} of", "the other classes")
        for side, (ax, what) in enumerate(zip(pair, whats, strict=True)):
            for fr in sorted(fail_rounds):
                ax.axvline(fr, color="black", linestyle="--", linewidth=1.3)
            if fail_rounds:
                fr = min(fail_rounds)
                ax.annotate(f"worker {rank} killed (round {fr})", xy=(fr, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(4, -14), textcoords="offset points", fontsize=9)
            ax.set_title(f"{title}: {what}", fontsize=11)
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy (mean over those classes)")
            ax.xaxis.set_major_locator(_integer_ticks())
            ax.grid(True, alpha=0.3)
            if shown[side]:
                lo, hi = min(shown[side]), max(shown[side])
                pad = 0.12 * (hi - lo) + 0.01
                ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + 2 * pad))
        pair[1].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                       title=f"mean of {n_runs} seeds; final accuracy:\nworker {rank}'s classes / other classes",
                       title_fontsize=9)
    fig.suptitle(f"Losing worker {rank} of a label-skewed split: accuracy on its classes and on the others "
                 f"(trailing mean over {smooth} rounds; first 10% of rounds off the scale)", fontsize=12)
    result.path = _save(fig, out_png)
    return result


def _classes_arg(text: str) -> list[int] | str | None:
    if text in ("", "all", "dead"):
        return text or "all"
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, dead or class numbers like 0,3; got {text!r}") from None


def add_plot_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``plot`` arguments to ``parser`` (a subparser of the ftmpi CLI, or a fresh one)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run dirs, or folders of run dirs (expanded one level)")
    parser.add_argument("-o", "--output", default="curves.png", metavar="OUT.png", help="PNG to write")
    parser.add_argument("--x", choices=["round", "iters", "wall", "both"], default="both",
                        help="x axis of the curves (default both: round, or iterations when the runs' "
                        "comm_period differ, and wall time)")
    parser.add_argument("--per-class", nargs="?", const="all", default=None, type=_classes_arg,
                        metavar="CLASSES", help="plot per-class accuracy instead: all (default), dead (the "
                        "failed worker's classes vs the rest), or class numbers such as 0,3")
    return parser


def run_plot(ns: argparse.Namespace) -> int:
    """Draw the plot for parsed arguments; returns the exit code (0, or 2 with a one-line error)."""
    try:
        if ns.per_class is not None:
            res = plot_class_accuracy(ns.run_dirs, ns.output, None if ns.per_class == "all" else ns.per_class)
        else:
            res = plot_runs(ns.run_dirs, ns.output, ns.x)
    except FtmpiError as exc:
        print(f"ftmpi: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for name, why in res.skipped:
        print(f"ftmpi: plot: {name} left out: {why}", file=sys.stderr)
    print(f"ftmpi: wrote {res.path} ({len(res.runs)} runs, {len(res.failures)} failures and "
          f"{len(res.remaps)} remaps marked)")
    return 0


def main_plot(args: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m ftmpi.observe.plot RUN_DIR... -o out.png``."""
    parser = add_plot_args(argparse.ArgumentParser(prog="ftmpi plot", description=__doc__.splitlines()[0]))
    return run_plot(parser.parse_args(args))


if __name__ == "__main__":
    raise SystemExit(main_plot())
