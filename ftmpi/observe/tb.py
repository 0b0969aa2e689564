"""TensorBoard event files for a run (``executor.tensorboard`` / ``train --tensorboard``), written by rank 0.

:class:`TBWriter` wraps ``tensorboardX.SummaryWriter`` (or, without it, ``torch.utils.tensorboard``) behind
four calls, so the coordinator never imports either and a run without the option never needs them::

    tb = TBWriter(run_dir / "tb")
    tb.scalars(rnd, row_scalars(row))           # one metrics row -> train/loss, test/accuracy, ...
    tb.event(rnd, "worker 2 lost (ulfm)")        # text, and the events/failures count
    tb.close()

Steps are rounds. Non-finite values (the loss of a round nobody answered) are left out rather than
written as NaN, which TensorBoard would draw as a gap anyway but some tools choke on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmpi.errors import ConfigError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["NEED_TB", "TBWriter", "row_scalars"]

NEED_TB = "tensorboard output needs tensorboardX: pip install 'ftmpi[tensorboard]'"

#: metrics.csv column -> TensorBoard tag (see :func:`row_scalars`).
TAGS = {
    "train_loss": "train/loss",
    "test_acc": "test/accuracy",
    "alive_workers": "cluster/alive_workers",
    "failures": "cluster/failures",
    "coverage": "cluster/coverage",
    "stale_dropped": "cluster/stale_dropped",
    "round_time": "time/round_seconds",
    "wall": "time/wall_seconds",
    "epoch": "cluster/epoch",
}


def _summary_writer() -> Any:
    """The SummaryWriter class of tensorboardX, else of torch, else a ConfigError."""
    try:
        from tensorboardX import SummaryWriter  # type: ignore[import-untyped]
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter  # type: ignore[import-not-found,no-redef]
        except ImportError:
            raise ConfigError(NEED_TB) from None
    return SummaryWriter


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Map one metrics row (the dict written to metrics.csv) to TensorBoard tags.

    Besides the columns of :data:`TAGS` this adds ``wire/bytes`` (sent + received so far),
    ``wire/bytes_sent``, ``wire/bytes_recv`` and ``test/accuracy_class{c}`` for each ``acc_class{c}``.

    Args:
        row: Column name -> value; missing or non-numeric columns are skipped.

    Returns:
        Tag -> value.
    """
    out: dict[str, float] = {}
    for col, tag in TAGS.items():
        if (v := _as_float(row.get(col))) is not None:
            out[tag] = v
    sent, recv = _as_float(row.get("bytes_sent")), _as_float(row.get("bytes_recv"))
    if sent is not None and recv is not None:
        out["wire/bytes"], out["wire/bytes_sent"], out["wire/bytes_recv"] = sent + recv, sent, recv
    for col, value in row.items():
        if str(col).startswith("acc_class") and (v := _as_float(value)) is not None:
            out[f"test/accuracy_class{str(col)[len('acc_class'):]}"] = v
    return out


def _as_float(v: Any) -> float | None:
    """``v`` as a float if it is a finite number (not a bool), else None."""
    return float(v) if _finite(v) else None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class TBWriter:
    """A small TensorBoard writer: scalars by step, text events, and a running count of events by kind.

    Args:
        log_dir: Folder for the event files (created if missing); ``RUN_DIR/tb`` by convention.
        flush_secs: How often the backend flushes on its own, in seconds.

    Raises:
        ConfigError: If neither tensorboardX nor torch is installed.
    """

    def __init__(self, log_dir: str | Path, flush_secs: int = 10) -> None:
        writer_cls = _summary_writer()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._w = writer_cls(str(self.log_dir), flush_secs=flush_secs)
        self.counts: dict[str, int] = {}
        self._closed = False

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write one scalar per tag at ``step``; non-finite values are skipped.

        Args:
            step: The round.
            values: Tag (``"train/loss"``, ``"test/accuracy"``, ``"wire/bytes"``...) -> value.
        """
        for tag, v in values.items():
            if _finite(v):
                self._w.add_scalar(tag, float(v), int(step))

    def event(self, step: int, text: str, kind: str = "failure") -> None:
        """Record an event at ``step``: the text under tag ``events``, and the count of ``kind`` so far.

        Args:
            step: The round the event belongs to.
            text: A one-line description, e.g. ``"worker 2 declared dead (ulfm)"``.
            kind: ``"failure"`` or ``"remap"`` (any word works); the count goes to ``events/<kind>s``.
        """
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._w.add_text("events", f"round {int(step)}: {text}", int(step))
        self._w.add_scalar(f"events/{kind}s", float(self.counts[kind]), int(step))

    def flush(self) -> None:
        """Write pending events to disk."""
        self._w.flush()

    def close(self) -> None:
        """Flush and close the event file; later calls do nothing."""
        if not self._closed:
            self._closed = True
            self._w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
