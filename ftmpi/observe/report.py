"""Result tables over run dirs: ``python -m ftmpi report RUN_DIR... [--csv OUT] [--markdown]``.

A run dir holds up to three files written by rank 0: ``config.yaml`` (the resolved configuration),
``metrics.csv`` (one row per round, flushed as it goes) and ``summary.json`` (``"running"`` at start, the
outcome at the end). :func:`load_run` reads whatever is there and never raises on bad contents: each
problem becomes a line in :attr:`Run.problems` and the run's status says ``corrupt``. :func:`collect` turns
runs into one flat row each, taking a value from the summary first and falling back to the config and the
last metrics row, so an interrupted run still shows how far it got. No run is ever left out: a path that
does not exist is a row with status ``missing``.

Status values: ``completed``, ``no-workers``, ``failed`` (as the summary says), ``crashed-or-running``
(the summary still says ``running``), ``incomplete`` (no summary yet), ``corrupt`` (a file could not be
read; the note says which and why) and ``missing``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "COLUMNS", "RUN_FILES", "Run", "add_report_args", "collect", "expand_run_dirs", "load_run",
    "main_report", "run_report", "spare_lines", "to_markdown", "to_text", "write_csv",
]

#: Files that make a folder a run dir.
RUN_FILES = ("summary.json", "metrics.csv", "config.yaml")
_FINAL = {"completed", "no-workers", "failed"}
MISSING = "—"
_INT_KEYS = ("workers", "comm_period", "quantize", "detected", "rounds", "points_handed")


@dataclass
class Run:
    """What one run dir holds. Every field is optional: readers record problems instead of raising."""

    path: Path
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)
    has_metrics: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run's name: its directory name."""
        return self.path.name or str(self.path)

    @property
    def status(self) -> str:
        """One of the status values listed in the module docstring."""
        if not self.path.is_dir() or (self.summary is None and self.config is None and not self.has_metrics
                                      and not self.problems):
            return "missing"
        if self.problems:
            return "corrupt"
        if self.summary is None:
            return "incomplete"
        said = self.summary.get("status")
        if said == "running":
            return "crashed-or-running"
        return str(said) if said in _FINAL else f"unknown ({said})"

    def section(self, name: str) -> dict[str, Any]:
        """A section of config.yaml (``model``, ``executor``...), or ``{}``."""
        sec = (self.config or {}).get(name)
        return sec if isinstance(sec, dict) else {}

    def failure_rounds(self) -> list[tuple[int, str]]:
        """``(round, label)`` of each failure, e.g. ``(5, "rank 2 kill")``: from the summary, or, when it
        has no failure list (a crashed run), from the rounds where the metrics' failure count grows."""
        fails = (self.summary or {}).get("failures")
        if isinstance(fails, list):
            return [(f["round"], f"rank {f.get('rank', '?')} {f.get('kind') or f.get('how') or ''}".strip())
                    for f in fails if isinstance(f, dict) and isinstance(f.get("round"), int)]
        out, seen = [], 0.0
        for row in self.metrics:
            n = row.get("failures", math.nan)
            if math.isfinite(n) and n > seen:
                out.append((int(row["round"]), f"{n - seen:.0f} worker(s) lost"))
                seen = n
        return out

    def remap_rounds(self) -> list[int]:
        """Rounds whose metrics row shows a new epoch (a remap of the training rows happened there)."""
        out, prev = [], None
        for row in self.metrics:
            ep = row.get("epoch", math.nan)
            if prev is not None and math.isfinite(ep) and ep != prev:
                out.append(int(row["round"]))
            prev = ep if math.isfinite(ep) else prev
        return out


def _text(run: Run, name: str) -> str | None:
    """The file's text, or None if it is absent or unreadable (then a problem is recorded)."""
    p = run.path / name
    if not p.exists():
        return None
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        run.problems.append(f"{name}: unreadable: {exc}")
        return None


def _read_summary(run: Run) -> None:
    text = _text(run, "summary.json")
    if text is None:
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        run.problems.append(f"summary.json: bad JSON at line {exc.lineno} col {exc.colno}: {exc.msg}")
        return
    if isinstance(obj, dict) and "status" in obj:
        run.summary = obj
    else:
        run.problems.append("summary.json: not an object with a 'status' key")


def _read_config(run: Run) -> None:
    text = _text(run, "config.yaml")
    if text is None:
        return
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        run.problems.append(f"config.yaml: bad YAML{where}: {getattr(exc, 'problem', None) or 'syntax error'}")
        return
    if isinstance(obj, dict):
        run.config = obj
    else:
        run.problems.append("config.yaml: not a mapping of sections")


def _read_metrics(run: Run) -> None:
    """Read metrics.csv into float rows; stop at the first bad line and keep the rows before it."""
    run.has_metrics = (run.path / "metrics.csv").exists()
    text = _text(run, "metrics.csv")
    if text is None:
        return
    lines = text.splitlines()
    rows = list(csv.reader(lines))
    header = rows[0] if rows else []
    if "round" not in header:
        run.problems.append("metrics.csv: " + ("empty" if not lines else "no 'round' column in the header"))
        return
    for n, cells in enumerate(rows[1:], start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            run.problems.append(f"metrics.csv: line {n} has {len(cells)} of {len(header)} fields (truncated?)")
            return
        row: dict[str, float] = {}
        for k, v in zip(header, cells, strict=False):
            try:
                row[k] = float(v) if v != "" else math.nan
            except ValueError:
                run.problems.append(f"metrics.csv: line {n}: {k}={v!r} is not a number")
                return
        if not math.isfinite(row["round"]):
            run.problems.append(f"metrics.csv: line {n}: no round number")
            return
        run.metrics.append(row)
    if not text.endswith("\n") and len(rows) > 1:
        if run.metrics and len(run.metrics) == len(rows) - 1:
            run.metrics.pop()
        run.problems.append(f"metrics.csv: line {len(lines)} is cut off (no line end)")


def load_run(path: str | Path) -> Run:
    """Read a run dir's summary, config and metrics; problems are recorded, never raised.

    Args:
        path: The run dir.

    Returns:
        The :class:`Run`; check :attr:`Run.status` and :attr:`Run.problems`.
    """
    run = Run(Path(path))
    if run.path.is_dir():
        _read_summary(run)
        _read_config(run)
        _read_metrics(run)
    return run


def _is_run_dir(p: Path) -> bool:
    return any((p / f).exists() for f in RUN_FILES)


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders of run dirs by one level; other paths pass through unchanged.

    A folder is expanded when it holds no summary.json or metrics.csv itself but has a subfolder with a
    run file. Every subfolder (hidden ones aside) is then listed, so a run that died before writing
    anything still gets a row (status ``missing``) instead of vanishing.

    Args:
        paths: Run dirs or folders of run dirs, in the order given.

    Returns:
        The run dirs, in order (subfolders sorted by name).
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not (p / "summary.json").exists() and not (p / "metrics.csv").exists():
            subs = sorted(s for s in p.iterdir() if s.is_dir() and not s.name.startswith("."))
            if any(_is_run_dir(s) for s in subs):
                out += subs
                continue
        out.append(p)
    return out


def _rep(opt: dict) -> str | None:
    """The rep column: the selection and the weight rule, e.g. ``random+w`` (``rep_weight: shard``, the
    handed rows carry the dead shard's mass), ``coreset+damped``; a bare selection under ``rep_weight: one``."""
    if opt.get("rep_selection") is None:
        return None
    rule = opt.get("rep_weight")
    return str(opt["rep_selection"]) + {"shard": "+w", "one": "", None: ""}.get(rule, f"+{rule}")


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _pick(*values: Any) -> Any:
    """The first value that is not None (a NaN counts as None)."""
    return next((v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))), None)


def _notes(run: Run) -> str:
    s, notes = run.summary or {}, list(run.problems)
    if not run.path.is_dir():
        notes.append("not a directory" if run.path.exists() else "no such directory")
    elif run.status == "missing":
        notes.append(f"no {', '.join(RUN_FILES)}" + (" (see job.log)" if (run.path / "job.log").exists() else ""))
    elif run.summary is None and not run.problems:
        notes.append("no summary.json" + ("" if run.has_metrics else " nor metrics.csv"))
        if run.has_metrics and not run.metrics:
            notes.append("metrics.csv has no rows")
    if s.get("status") == "running" and s.get("pid"):
        notes.append(f"summary still says running (pid {s['pid']})")
    if s.get("status") == "failed":
        notes.append(f"exit {s.get('exit_code', '?')}")
    if run.problems and s.get("status"):
        notes.append(f"summary says {s['status']}")
    return "; ".join(notes)


def _row(run: Run) -> dict[str, Any]:
    s = run.summary or {}
    ex, opt, data = run.section("executor"), run.section("optimizer"), run.section("data")
    last = run.metrics[-1] if run.metrics else {}
    first = run.metrics[0] if run.metrics else {}
    faults = run.config.get("faults") if run.config else None
    if isinstance(faults, list):
        faults = ",".join(str(f) for f in faults) or "none"
    fails = s.get("failures")
    wire = last.get("bytes_sent", math.nan) + last.get("bytes_recv", math.nan) if last else None
    mb = _pick(_num(s.get("bytes_total")), wire)
    row = {
        "run": run.name,
        "status": run.status,
        "workers": _pick(_num(s.get("workers")), first.get("alive_workers")),
        "comm_period": _pick(_num(s.get("comm_period")), _num(ex.get("comm_period"))),
        "quantize": _pick(_num(s.get("quantize")), _num(ex.get("quantize"))),
        "remap": _pick(s.get("remap"), ex.get("remap")),
        "detector": _pick(s.get("detector"), ex.get("failure_detector")),
        "partition": _pick(s.get("partition"), data.get("partition")),
        "rep_selection": _rep(opt),
        "faults": faults,
        "detected": len(fails) if isinstance(fails, list) else _pick(last.get("failures")),
        "final_acc": _pick(_num(s.get("final_test_acc")), last.get("test_acc")),
        "wall_s": _pick(_num(s.get("wall_seconds")), last.get("wall")),
        "rounds": _pick(_num(s.get("rounds")), last["round"] + 1 if last else None),
        "mb": mb / 1e6 if mb is not None else None,
        "max_recovery_s": _num(s.get("max_recovery_time")),
        "coverage": _pick(_num(s.get("coverage")), last.get("coverage")),
        "points_handed": _num(s.get("points_handed")),
        "scenario": _pick(s.get("scenario") or None, ex.get("scenario") or None),
        "note": _notes(run),
        "dataset": _pick(s.get("dataset"), data.get("dataset")),
        "path": str(run.path),
    }
    for k in _INT_KEYS:
        if isinstance(row[k], float):
            row[k] = round(row[k])
    return row


def collect(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run dir, in the order given; see :data:`COLUMNS` for the keys.

    Args:
        run_dirs: Run dirs (use :func:`expand_run_dirs` first for folders of runs).

    Returns:
        Rows with ``None`` for every value that could not be found (plus ``dataset`` and ``path``).
    """
    return [_row(load_run(p)) for p in run_dirs]


def _mb(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


_INT = "{:.0f}".format
#: (row key, header, formatter for numbers or None for text); numbers are right-aligned.
COLUMNS: list[tuple[str, str, Any]] = [
    ("run", "run", None), ("status", "status", None), ("workers", "W", _INT), ("comm_period", "period", _INT),
    ("quantize", "bits", lambda v: "off" if v == 0 else _INT(v)), ("remap", "remap", None),
    ("detector", "detector", None), ("partition", "partition", None), ("rep_selection", "rep", None),
    ("faults", "injected", None), ("detected", "detected", _INT), ("final_acc", "acc", "{:.4f}".format),
    ("wall_s", "wall s", "{:.1f}".format), ("rounds", "rounds", _INT), ("mb", "MB", _mb),
    ("max_recovery_s", "recovery s", "{:.3f}".format), ("coverage", "coverage", "{:.3f}".format),
    ("points_handed", "handed", _INT), ("scenario", "scenario", None), ("note", "note", None),
]


def _grid(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[bool], list[list[str]]]:
    def cell(v: Any, fmt: Any) -> str:
        if v is None or v == "" or (isinstance(v, float) and not math.isfinite(v)):
            return MISSING
        return fmt(v) if fmt is not None and isinstance(v, (int, float)) else str(v)
    cells = [[cell(r.get(k), fmt) for k, _, fmt in COLUMNS] for r in rows]
    return [h for _, h, _ in COLUMNS], [fmt is not None for _, _, fmt in COLUMNS], cells


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub table of ``rows`` (numbers right-aligned, "—" where a value is missing)."""
    heads, right, cells = _grid(rows)
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_text(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned plain-text table; columns missing in every row are left out (run and status stay)."""
    heads, right, cells = _grid(rows)
    keep = [i for i in range(len(heads)) if i < 2 or any(row[i] != MISSING for row in cells)]
    width = {i: max(len(r[i]) for r in [heads, *cells]) for i in keep}

    def line(vals: list[str]) -> str:
        return "  ".join(vals[i].rjust(width[i]) if right[i] else vals[i].ljust(width[i]) for i in keep).rstrip()
    return "\n".join([line(heads), line(["-" * width.get(i, 0) for i in range(len(heads))])]
                     + [line(row) for row in cells]) + "\n"


def failure_lines(run_dirs: Sequence[Path]) -> list[str]:
    """One line per failure recorded in the runs' summaries (rank, round, how, latency, recovery, rows)."""
    out = []
    for p in run_dirs:
        run = load_run(p)
        for f in (run.summary or {}).get("failures") or []:
            if not isinstance(f, dict):
                continue
            seen = "its process seen ending on the coordinator's host" if f.get("how") == "exited" \
                else f"seen by {f.get('how')}"
            text = (f"{run.name}: rank {f.get('rank')} lost at round {f.get('round')} "
                    f"({f.get('kind') or 'not injected'}, {seen})")
            for key, label in (("detection_latency", "detected after"), ("recovery_time", "recovered after")):
                text += f", {label} {f[key]:.3f}s" if _num(f.get(key)) is not None else ""
            if f.get("rows_handed") is not None:
                text += f", {f['rows_handed']} rows handed"
                if _num(f.get("row_weight")) is not None:
                    text += f" (each weighing {f['row_weight']:.1f})"
                if f.get("rows_prefetched"):
                    text += f", {f['rows_prefetched']} of them read ahead"
                if _num(f.get("handoff_time")) is not None and f["rows_handed"]:
                    text += f", training on them {1000 * f['handoff_time']:.0f} ms after detection"
                text += f", {f.get('rows_dropped')} dropped"
            if f.get("spare") is not None:
                text += f", its whole shard ({f.get('rows_to_spare', '?')} rows) to spare {f['spare']}"
            out.append(text + (f", reason: {f['reason']}" if f.get("reason") else ""))
    return out


def spare_lines(run_dirs: Sequence[Path]) -> list[str]:
    """One line per run that had hot spares (``executor.spares``, summary ``spares``): how many, which spare
    took which lost worker's shard and from which round it trained, the spares lost and those idle at the end."""
    out = []
    for p in run_dirs:
        run = load_run(p)
        s = run.summary or {}
        sp = s.get("spares")
        if not isinstance(sp, dict) or not sp.get("configured"):
            continue
        starts = {f.get("spare"): f.get("recovered_round") for f in s.get("failures") or []
                  if isinstance(f, dict) and f.get("spare") is not None}
        parts = [f"{sp['configured']} configured"]
        for u in sp.get("used") or []:
            if not isinstance(u, dict):
                continue
            if u.get("at_deal"):
                parts.append(f"spare {u.get('spare')} stood in for worker {u.get('took')} (lost before the deal)")
                continue
            start = _pick(starts.get(u.get("spare")), u["round"] + 1 if isinstance(u.get("round"), int) else None)
            parts.append(f"spare {u.get('spare')} took worker {u.get('took')}'s shard ({u.get('rows', '?')} rows) "
                         f"at round {u.get('round')}, training from round {start if start is not None else '?'}")
        for g in sp.get("given_back") or []:
            if isinstance(g, dict):
                parts.append(f"resumed at round {g.get('round')}: spare {g.get('spare')}'s place back to worker "
                             f"{g.get('to')}")
        lost = [d for d in sp.get("lost") or [] if isinstance(d, dict)]
        parts.append("lost: " + (", ".join(f"spare {d.get('spare')} at round {d.get('round')} ({d.get('how')})"
                                           for d in lost) or "none"))
        idle = sp.get("idle") or []
        parts.append("idle at the end: " + (", ".join(str(r) for r in idle) or "none"))
        out.append(f"{run.name}: " + "; ".join(parts))
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV: every key of :data:`COLUMNS` plus ``dataset`` and ``path``, full precision.

    Args:
        rows: Rows from :func:`collect`.
        path: Destination; parent folders are created.

    Returns:
        The path written.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k, _, _ in COLUMNS] + ["dataset", "path"]
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: "" if r.get(k) is None else r[k] for k in keys} for r in rows)
    return dest


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``report`` arguments to ``parser`` (a subparser of the ftmpi CLI, or a fresh one)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run dirs, or folders of run dirs (expanded one level)")
    parser.add_argument("--csv", metavar="OUT", help="also write the table as CSV to OUT")
    parser.add_argument("--markdown", action="store_true", help="print a GitHub markdown table instead")
    return parser


def run_report(ns: argparse.Namespace) -> int:
    """Print the report for parsed arguments (see :func:`add_report_args`); returns the exit code.

    A path given on the command line that does not exist is an error (one line on stderr, exit 2), not a
    row: it is a typo far more often than a run that never started. The table of the paths that do exist
    is still printed. Runs found inside a folder of runs that wrote nothing keep their ``missing`` row.
    """
    absent = [p for p in ns.run_dirs if not Path(p).exists()]
    for p in absent:
        print(f"ftmpi: error: report: {p}: no such file or directory", file=sys.stderr)
    present = [p for p in ns.run_dirs if Path(p).exists()]
    if not present:
        return 2
    dirs = expand_run_dirs(present)
    rows = collect(dirs)
    fails = [] if ns.markdown else failure_lines(dirs)
    spares = [] if ns.markdown else spare_lines(dirs)
    text = to_markdown(rows) if ns.markdown else to_text(rows)
    text += "\nfailures:\n" + "".join(f"  {f}\n" for f in fails) if fails else ""
    text += "\nspares:\n" + "".join(f"  {f}\n" for f in spares) if spares else ""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `ftmpi report runs | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if ns.csv:
        try:
            write_csv(rows, ns.csv)
        except OSError as exc:
            print(f"ftmpi: error: report: cannot write {ns.csv}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 2 if absent else 0


def main_report(args: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m ftmpi.observe.report RUN_DIR... [--csv OUT] [--markdown]``."""
    parser = add_report_args(argparse.ArgumentParser(prog="ftmpi report", description=__doc__.splitlines()[0]))
    return run_report(parser.parse_args(args))


if __name__ == "__main__":
    raise SystemExit(main_report())
