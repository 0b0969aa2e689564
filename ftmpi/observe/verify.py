"""Compare two runs: ``python -m ftmpi verify RUN_A RUN_B [--fields F,...] [--json]``.

Two runs of the same config, seed and workers are exact copies of each other, whatever recovered in between
(a resume with the same workers, a takeover by a standby coordinator): this says whether they are, and where
they first differ. It compares

- ``metrics.csv`` round by round, on the fields that training decides (:data:`FIELDS`: loss, accuracy per
  class, iterations, workers, coverage, screening), as written (six significant digits); times, bytes and the
  membership epoch (a resume opens one) are not compared;
- the parameters of every checkpoint round both runs still hold, bit for bit (the earliest one that differs
  is named);
- the final parameters: each run's newest checkpoint, bit for bit.

Exit code: 0 identical, 1 different (the first differing round and field are printed), 2 a run dir that
cannot be read (no metrics.csv, no checkpoint). Also printed: what each run's ``summary.json`` says of its
recoveries (``exact``).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftmpi.errors import EXIT_BAD_INPUT, CheckpointError
from ftmpi.storage.checkpoint import list_checkpoints, load

__all__ = ["FIELDS", "Verdict", "add_verify_args", "compare", "run_verify"]

#: metrics.csv columns that training decides (the ``acc_class*`` columns are added)
FIELDS = ("iters", "train_loss", "test_acc", "alive_workers", "coverage", "rejected", "norm_ratio")


@dataclass
class Verdict:
    """What :func:`compare` found. ``first``: the first difference of the metrics, ``{"round", "field", "a",
    "b"}`` (a round missing from one run has field ``"row"``), or None; ``checkpoint``: the earliest
    checkpoint round both hold whose parameters differ, or None; ``final``: the final parameters compared."""

    rounds: int = 0
    fields: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # training fields only one of the two files has
    first: dict[str, Any] | None = None
    rows_differing: int = 0
    checkpoint: int | None = None
    checkpoints_compared: list[int] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    exact: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.first is None and self.checkpoint is None and bool(self.final.get("equal"))

    def record(self) -> dict[str, Any]:
        return {"identical": self.identical, "rounds": self.rounds, "fields": self.fields, "skipped": self.skipped,
                "first": self.first,
                "rows_differing": self.rows_differing, "checkpoint": self.checkpoint,
                "checkpoints_compared": self.checkpoints_compared, "final": self.final, "exact": self.exact}


def _rows(run: Path) -> tuple[list[str], dict[int, dict[str, str]]]:
    try:
        with open(run / "metrics.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = {int(r["round"]): r for r in reader}
            return list(reader.fieldnames or []), rows
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{run}: cannot read metrics.csv ({' '.join(str(exc).split())})") from None


def _params(path: Path) -> np.ndarray:
    try:
        return load(path).params
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None


def _round_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _exact(run: Path) -> Any:
    try:
        return json.loads((run / "summary.json").read_text()).get("exact")
    except (OSError, ValueError, AttributeError):
        return None


def compare(a: Path, b: Path, fields: list[str] | None = None) -> Verdict:
    """Compare runs ``a`` and ``b`` (see the module docstring).

    Raises:
        ValueError: A run dir without a readable metrics.csv or without a valid checkpoint (one line).
    """
    a, b = Path(a), Path(b)
    cols_a, rows_a = _rows(a)
    cols_b, rows_b = _rows(b)
    skipped: list[str] = []
    if fields is None:  # the training fields both files have (a column added by a later version is skipped)
        wanted = [*FIELDS, *(c for c in cols_a if c.startswith("acc_class"))]
        fields = [f for f in wanted if f in cols_a and f in cols_b]
        skipped = [f for f in wanted if (f in cols_a) != (f in cols_b)]
    v = Verdict(fields=list(fields), skipped=skipped)
    for rnd in sorted(set(rows_a) | set(rows_b)):
        v.rounds += 1
        ra, rb = rows_a.get(rnd), rows_b.get(rnd)
        diff = None
        if ra is None or rb is None:
            diff = {"round": rnd, "field": "row", "a": "present" if ra else "missing",
                    "b": "present" if rb else "missing"}
        else:
            for f in fields:
                if ra.get(f) != rb.get(f):
                    diff = {"round": rnd, "field": f, "a": ra.get(f), "b": rb.get(f)}
                    break
        if diff is not None:
            v.rows_differing += 1
            v.first = v.first or diff
    cks_a, cks_b = list_checkpoints(a), list_checkpoints(b)
    if not cks_a or not cks_b:
        raise ValueError(f"{a if not cks_a else b}: no checkpoint to compare the parameters of")
    by_round = {_round_of(p): p for p in cks_b}
    for p in cks_a:
        q = by_round.get(_round_of(p))
        if q is None or p == cks_a[-1] or q == cks_b[-1]:
            continue
        v.checkpoints_compared.append(_round_of(p))
        if v.checkpoint is None and not np.array_equal(_params(p), _params(q)):
            v.checkpoint = _round_of(p)
    pa, pb = _params(cks_a[-1]), _params(cks_b[-1])
    same_shape = pa.shape == pb.shape
    equal = same_shape and np.array_equal(pa, pb)
    v.final = {"a": cks_a[-1].name, "b": cks_b[-1].name, "equal": bool(equal),
               "max_abs_diff": float(np.max(np.abs(pa - pb))) if same_shape and pa.size else None,
               "values_differing": int(np.count_nonzero(pa != pb)) if same_shape else None, "n": int(pa.size)}
    v.exact = {"a": _exact(a), "b": _exact(b)}
    return v


def to_text(v: Verdict, a: Path, b: Path) -> str:
    lines = [f"ftmpi verify {a} {b}"]
    if v.skipped:
        lines.append(f"  not compared: {', '.join(v.skipped)} (in one metrics.csv only: another ftmpi version?)")
    if v.first is None:
        lines.append(f"  metrics     : {v.rounds} rounds identical ({', '.join(v.fields)})")
    elif v.first["field"] == "row":
        lines.append(f"  metrics     : first differ at round {v.first['round']}: the row is {v.first['a']} in A, "
                     f"{v.first['b']} in B ({v.rows_differing} of {v.rounds} rounds differ)")
    else:
        lines.append(f"  metrics     : first differ at round {v.first['round']}, {v.first['field']}: "
                     f"{v.first['a']} (A) vs {v.first['b']} (B) ({v.rows_differing} of {v.rounds} rounds differ)")
    if v.checkpoints_compared:
        said = "identical" if v.checkpoint is None else f"first differ at round {v.checkpoint}"
        lines.append(f"  checkpoints : rounds {', '.join(map(str, v.checkpoints_compared))}: parameters {said}")
    f = v.final
    said = "identical" if f["equal"] else (f"differ: {f['values_differing']} of {f['n']} values, max |A-B| "
                                          f"{f['max_abs_diff']:.3g}" if f["max_abs_diff"] is not None
                                          else "differ in shape")
    lines.append(f"  final params: {f['a']} vs {f['b']}: {said}")
    for who in ("a", "b"):
        ex = v.exact.get(who)
        if not ex:
            continue
        notes = ([f"resume at round {ex['resume']['round']}: "
                  + ("exact" if ex["resume"]["exact"] else f"not exact ({ex['resume']['why']})")]
                 if ex.get("resume") else [])
        notes += [f"takeover at round {t.get('round')}: " + ("exact" if t.get("exact") else
                                                                f"not exact ({t.get('why') or 'not recorded'})")
                  for t in ex.get("takeovers") or []]
        if notes:
            lines.append(f"  run {who.upper()}       : " + "; ".join(notes))
    lines.append("identical" if v.identical else "different")
    return "\n".join(lines)


def add_verify_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run_a", type=Path, help="a run dir")
    p.add_argument("run_b", type=Path, help="another run dir")
    p.add_argument("--fields", help=f"metrics.csv columns to compare, comma-separated (default: {', '.join(FIELDS)}"
                                    ", acc_class*)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def run_verify(args: argparse.Namespace) -> int:
    """``ftmpi verify``: 0 identical, 1 different, 2 unreadable."""
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    try:
        v = compare(args.run_a, args.run_b, fields)
    except ValueError as exc:
        sys.stderr.write(f"ftmpi: error: {exc}\n")
        return int(EXIT_BAD_INPUT)
    print(json.dumps(v.record(), indent=2) if args.json else to_text(v, args.run_a, args.run_b))
    return 0 if v.identical else 1
