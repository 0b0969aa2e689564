"""Outputs of a run on rank 0: metrics CSV (one row per round, flushed), progress line, summary.json.

Disk trouble never ends a run here: a metrics row that cannot be written (``ENOSPC``, ``EIO``) is counted
and skipped, the file is cut back to its last complete row, and the caller is told once (see
:class:`MetricsCSV`); later rows are written again as soon as the disk allows. summary.json and the
rewritten metrics of a resume are replaced atomically (:mod:`ftmpi.storage.fsutil`): a failed write leaves the
previous file whole.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ftmpi.storage.fsutil import file_mode, replace_atomic

FIELDS = [
    "round", "epoch", "wall", "iters", "train_loss", "test_acc", "bytes_sent", "bytes_recv",
    "alive_workers", "stale_dropped", "failures", "coverage", "round_time",
    "term",  # the coordinator term the round was decided under (ftmpi.storage.term; 1 until a takeover)
    # the round's screening (ftmpi.core.screen): updates rejected, and the largest accepted update's norm over
    # its reference (how close honest updates came to executor.screen_factor; empty when none had one)
    "rejected", "norm_ratio",
    # quorum rounds (ftmpi.core.quorum): late replies folded into this round, late replies dropped so far (later
    # than executor.max_staleness), workers rebalanced (given fewer local iterations) at the round's end
    "late_folded", "late_dropped", "rebalanced",
]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a fresh temp file beside ``path``, then rename it over ``path``.

    Raises:
        OSError: If the write failed (e.g. ``ENOSPC``); ``path`` is then unchanged and no temp file is left.
        TypeError: If ``obj`` holds something JSON cannot represent (checked before touching the disk).
    """
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    replace_atomic(path, lambda fh: fh.write(text))


def _to_stderr(line: str) -> None:
    try:
        sys.stderr.write(f"ftmpi: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


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

    def write(fh: Any) -> None:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows(keep)

    replace_atomic(path, write)


class MetricsCSV:
    """Append-only metrics table; every row goes to disk at once, so a crash loses at most that row.

    A row that cannot be written (disk full, I/O error) does not end the run: the file is cut back to its
    last complete row, the row is counted in ``missed``, and ``warn`` (if given) is called with one line the
    first time and again whenever writing recovers or fails anew. Rows are whole lines written with one
    ``write`` on an ``O_APPEND`` descriptor, never buffered across rounds.

    Attributes:
        missed: Rows that could not be written.
        last_error: The last write error, one line, or None.
    """

    def __init__(self, path: Path, extra: list[str] | None = None, append: bool = False,
                 warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.fields = FIELDS + list(extra or [])
        self.warn = warn if warn is not None else _to_stderr
        self.missed = 0
        self.last_error: str | None = None
        self._failing = False
        exists = append and self.path.exists()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if exists else os.O_TRUNC)
        self._fd: int | None = os.open(self.path, flags, file_mode())
        self._header_due = not exists
        if self._header_due:
            self._put(None)

    def _line(self, values: dict[str, Any] | None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        if values is None:
            w.writeheader()
        else:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
                        for k, v in values.items()})
        return buf.getvalue()

    def _put(self, values: dict[str, Any] | None) -> bool:
        if self._fd is None:
            return False
        data = ((self._line(None) if self._header_due and values is not None else "")
                + self._line(values)).encode("utf-8")
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            size = None
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(28, "No space left on device (short write)")
        except OSError as exc:
            if size is not None:
                try:
                    os.ftruncate(self._fd, size)  # never leave half a row behind
                except OSError:
                    pass
            self.missed += 1
            self.last_error = f"{self.path}: {exc.strerror or exc}"
            if not self._failing and self.warn is not None:
                self.warn(f"warning: cannot write metrics ({self.last_error}); training goes on, rows are "
                          "skipped until the disk accepts them again")
            self._failing = True
            return False
        self._header_due = False
        if self._failing and self.warn is not None:
            self.warn(f"metrics: writing {self.path} again ({self.missed} row(s) missed so far)")
        self._failing = False
        return True

    def row(self, values: dict[str, Any]) -> bool:
        """Append one row; False when it could not be written (counted in ``missed``, never raised)."""
        return self._put(values)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


class Progress:
    """One status line on rank 0: rewritten in place on a terminal, one line per ``every`` rounds otherwise.

    Events (a failure, a remap) are always printed on a line of their own so they stay visible.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None, every: int = 10) -> None:
        self.enabled = enabled
        self.who = "rank 0"  # the coordinator's rank, in lines printed on stderr
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

    def warn(self, text: str) -> None:
        """A warning: printed like an event, and on stderr even when the progress stream is off (--quiet)."""
        if self.enabled:
            self.event(text)
        else:
            sys.stderr.write(f"ftmpi: {self.who}: {text}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
