"""The handoff study's figure (benchmarks/handoff_value.py): per label-skew setting, the lost classes' test
accuracy against round (from the kept runs' metrics.csv) and, after both losses, every class's final accuracy
minus fault-free's against the share of it the lost workers held (from the records alone). matplotlib on the
Agg canvas, no pyplot state; without matplotlib or anything to draw, no figure (None)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

ORDER = ["fault-free", "none", "random-legacy", "random-w", "coreset", "random-damped", "random-classmix", "full"]
COLOURS = {"fault-free": "0.35", "none": "tab:red", "random-legacy": "tab:orange", "random-w": "tab:blue",
           "coreset": "tab:green", "random-damped": "tab:purple", "random-classmix": "tab:brown", "full": "black"}
BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)


def _curve(run_dir: Path, classes: list[int]) -> dict[int, float]:
    """round -> mean test accuracy over ``classes`` (rows where it was evaluated)."""
    out: dict[int, float] = {}
    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                vals = [row.get(f"acc_class{c}") for c in classes]
                if all(v not in (None, "") for v in vals):
                    out[int(float(row["round"]))] = sum(float(v) for v in vals) / len(vals)
    except (OSError, ValueError, KeyError):
        return {}
    return out


def _per_class_deltas(records: list[dict], setting: str, row: str) -> list[tuple[float, float]]:
    """(share of the class the lost workers held, final accuracy − fault-free's in points), per seed and class."""
    base = {r["seed"]: r for r in records if (r["setting"], r["partition"], r["row"]) == (setting, "label-skew",
                                                                                            "fault-free")}
    out = []
    for r in records:
        if (r["setting"], r["partition"], r["row"]) != (setting, "label-skew", row) or not r.get("clean", True):
            continue
        b = base.get(r["seed"])
        if not b or not r.get("per_class_acc") or not b.get("per_class_acc") or not r.get("lost_share"):
            continue
        out += [(sh, 100 * (a - fa)) for sh, a, fa in zip(r["lost_share"], r["per_class_acc"], b["per_class_acc"],
                                                          strict=False)]
    return out


def plot_study(res: dict, keep_dir: Path, out_png: Path) -> str | None:
    """Draw the figure; returns its path, or None (no matplotlib, or no label-skew setting)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    records, settings = res["runs"], res["settings"]
    skew = [s for s, st in settings.items() if "label-skew" in st["partitions"]
            and any(r["setting"] == s and r["partition"] == "label-skew" for r in records)]
    if not skew:
        return None
    rows = [r for r in ORDER if r in res["rows"]]
    fig = Figure(figsize=(14.5, 4.2 * len(skew) + 0.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(skew), 2, squeeze=False)
    for setting, (ax_t, ax_c) in zip(skew, axes, strict=True):
        st = settings[setting]
        means: list[float] = []
        for row in rows:
            curves = []
            for r in records:
                if (r["setting"], r["partition"], r["row"]) == (setting, "label-skew", row) and r["dead_classes"]:
                    c = _curve(keep_dir / r["name"], r["dead_classes"])
                    if c:
                        curves.append(c)
            if curves:
                common = sorted(set.intersection(*(set(c) for c in curves)))
                ys = [100 * sum(c[x] for c in curves) / len(curves) for x in common]
                ax_t.plot(common, ys, color=COLOURS[row], label=row, linewidth=1.8,
                          linestyle=(0, (4, 2)) if row == "fault-free" else "-")
            pts = _per_class_deltas(records, setting, row)
            if pts and row != "fault-free":
                ax_c.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, color=COLOURS[row], alpha=0.35)
                xs, ys = [], []
                for lo, hi in zip(BINS, BINS[1:], strict=False):
                    inside = [d for sh, d in pts if lo <= sh < hi]
                    if inside:
                        xs.append((lo + min(hi, 1.0)) / 2)
                        ys.append(sum(inside) / len(inside))
                ax_c.plot(xs, ys, color=COLOURS[row], marker="o", linewidth=1.8, label=row)
                means += ys
        for _, fr in st["losses"]:
            ax_t.axvline(fr, color="black", linestyle="--", linewidth=1.0)
        title = f"{st['model']}, label-skew, {st['regime']}"
        ax_t.set_title(f"{title}: lost classes (mean over seeds)")
        ax_t.set_xlabel("round")
        ax_t.set_ylabel("test accuracy %")
        if not ax_t.lines or all(ln.get_linestyle() == "--" for ln in ax_t.lines):
            ax_t.text(0.5, 0.5, "kept runs not found", transform=ax_t.transAxes, ha="center")
        else:
            ax_t.legend(fontsize=7, loc="lower left")
        ax_c.axhline(0, color="0.6", linewidth=0.8)
        ax_c.set_title(f"{title}: per class, after both losses")
        ax_c.set_xlabel("share of the class the lost workers held at the start")
        ax_c.set_ylabel("final accuracy − fault-free's, points (dots: class x seed; lines: bin means)", fontsize=8)
        if means:
            ax_c.legend(fontsize=7, loc="lower left")
            ax_c.set_ylim(max(-100.0, math.floor(min(means) / 10) * 10 - 10), 15)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")
    return str(out_png)
