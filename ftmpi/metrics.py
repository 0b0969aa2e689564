"""Outputs of a run on rank 0: metrics CSV (one row per round, flushed), progress line, summary.json."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

FIELDS = [
    "round", "epoch", "wall", "iters", "train_loss", "test_acc", "bytes_sent", "bytes_recv",
    "alive_workers", "stale_dropped", "failures", "coverage", "round_time",
]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp name, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_jsonable)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_status(code: int) -> None:
    """Leave rank 0's verdict in ``$FTMPI_STATUS_FILE`` when set (jobs/local.sh reads it): mpirun's own exit
    code also counts ranks that died on the way, even when training went on and completed."""
    status = os.environ.get("FTMPI_STATUS_FILE")
    if status:
        try:
            Path(status).write_text(f"{code}\n")
        except OSError:
            pass


def truncate_metrics(path: Path, before_round: int) -> None:
    """Keep only the rows of rounds before ``before_round`` (a resumed run rewrites the later ones)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    head, body = rows[0], rows[1:]
    keep = [r for r in body if r and r[0].isdigit() and int(r[0]) < before_round]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows(keep)
    os.replace(tmp, path)


class MetricsCSV:
    """Append-only metrics table; every row is flushed so a crash loses at most the row being written."""

    def __init__(self, path: Path, extra: list[str] | None = None, append: bool = False) -> None:
        self.fields = FIELDS + list(extra or [])
        exists = append and Path(path).exists()
        self._fh: TextIO = open(path, "a" if exists else "w", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
        if not exists:
            self._w.writeheader()

    def row(self, values: dict[str, Any]) -> None:
        clean = {k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in values.items()}
        self._w.writerow(clean)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Progress:
    """One status line on rank 0: rewritten in place on a terminal, one line per ``every`` rounds otherwise.

    Events (a failure, a remap) are always printed on a line of their own so they stay visible.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None, every: int = 10) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self._open = False
        self.t0 = time.monotonic()

    def update(self, round_: int, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        line = f"[ftmpi {time.monotonic() - self.t0:7.2f}s] round {round_:4d} {text}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100))
            self._open = True
        elif force or round_ % self.every == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def event(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(f"[ftmpi {time.monotonic() - self.t0:7.2f}s] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
