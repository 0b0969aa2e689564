"""TensorBoard writer: write scalars and events, read the event files back, check tags and values."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from ftmpi.errors import ConfigError

pytest.importorskip("tensorboardX")

from ftmpi.observe.tb import NEED_TB, TBWriter, row_scalars


def read_events(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str, str]]]:
    """Scalars ``{tag: [(step, value)]}`` and texts ``[(step, tag, text)]`` from the TFRecord event files.

    Each record is: uint64 length, uint32 masked CRC of the length, the Event protobuf, uint32 masked CRC.
    """
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: list[tuple[int, str, str]] = []
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            assert pos + 12 <= len(data), "truncated record header"
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            pos += 12
            assert pos + length + 4 <= len(data), "truncated record body"
            ev = event_pb2.Event.FromString(data[pos:pos + length])
            pos += length + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
                elif v.HasField("tensor") and v.tensor.string_val:
                    texts.append((ev.step, v.tag, v.tensor.string_val[0].decode()))
    return scalars, texts


def read_with_accumulator(log_dir: Path) -> dict[str, list[tuple[int, float]]] | None:
    """The same scalars through TensorBoard's own reader, when tensorboard is installed."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


ROWS = [
    {"round": 0, "epoch": 0, "wall": 1.5, "iters": 10, "train_loss": 1.25, "test_acc": 0.5, "bytes_sent": 100,
     "bytes_recv": 300, "alive_workers": 4, "stale_dropped": 0, "failures": 0, "coverage": 1.0,
     "round_time": 0.25, "acc_class0": 0.25, "acc_class1": 0.75},
    {"round": 1, "epoch": 1, "wall": 2.0, "iters": 20, "train_loss": float("nan"), "test_acc": 0.625,
     "bytes_sent": 200, "bytes_recv": 500, "alive_workers": 3, "stale_dropped": 1, "failures": 1,
     "coverage": 0.75, "round_time": 0.5, "acc_class0": 0.5, "acc_class1": 0.75},
]


def test_row_scalars_maps_columns_to_tags():
    tags = row_scalars(ROWS[0])
    assert tags["train/loss"] == 1.25 and tags["test/accuracy"] == 0.5
    assert tags["cluster/alive_workers"] == 4 and tags["time/round_seconds"] == 0.25
    assert tags["wire/bytes"] == 400 and tags["wire/bytes_sent"] == 100
    assert tags["test/accuracy_class1"] == 0.75
    assert "train/loss" not in row_scalars(ROWS[1]), "NaN must be left out"
    assert row_scalars({"round": 3, "name": "x"}) == {}


def test_write_then_read_back(tmp_path):
    log = tmp_path / "tb"
    with TBWriter(log) as tb:
        for row in ROWS:
            tb.scalars(int(row["round"]), row_scalars(row))
        tb.event(1, "worker 2 declared dead (ulfm)")
        tb.event(1, "handed 50 rows of worker 2 to [1, 3, 4]", kind="remap")
        tb.event(3, "worker 3 declared dead (timeout)")
        tb.scalars(4, {"custom/value": 2.5, "custom/skip": math.inf})
        tb.flush()
    tb.close()  # a second close is harmless
    scalars, texts = read_events(log)
    assert scalars["train/loss"] == [(0, 1.25)]
    assert scalars["test/accuracy"] == [(0, 0.5), (1, 0.625)]
    assert scalars["cluster/alive_workers"] == [(0, 4.0), (1, 3.0)]
    assert scalars["wire/bytes"] == [(0, 400.0), (1, 700.0)]
    assert scalars["time/round_seconds"] == [(0, 0.25), (1, 0.5)]
    assert scalars["test/accuracy_class0"] == [(0, 0.25), (1, 0.5)]
    assert scalars["events/failures"] == [(1, 1.0), (3, 2.0)]
    assert scalars["events/remaps"] == [(1, 1.0)]
    assert scalars["custom/value"] == [(4, 2.5)] and "custom/skip" not in scalars
    assert [(s, t) for s, _, t in texts] == [
        (1, "round 1: worker 2 declared dead (ulfm)"),
        (1, "round 1: handed 50 rows of worker 2 to [1, 3, 4]"),
        (3, "round 3: worker 3 declared dead (timeout)"),
    ]
    assert all(tag.startswith("events") for _, tag, _ in texts)
    other = read_with_accumulator(log)
    if other is not None:
        assert other["test/accuracy"] == scalars["test/accuracy"]


def test_clear_error_without_any_backend(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tb(name, *args, **kwargs):
        if name.startswith(("tensorboardX", "torch")):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ConfigError) as info:
        TBWriter(tmp_path / "tb")
    assert str(info.value) == NEED_TB and "pip install" in NEED_TB
