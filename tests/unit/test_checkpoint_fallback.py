"""When a failed checkpoint write ends the run, in-process: only when no valid checkpoint is in the run dir,
whichever process wrote it. A deputy that took over has written none itself, but the coordinator it replaced
has; the run dir is what a resume starts from."""
from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftmpi.coordinator.lifecycle import Lifecycle
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.errors import EXIT_DISK, WriteFailed
from ftmpi.storage.checkpoint import ckpt_path, save
from tests.unit.test_checkpoint import flip_byte, make_snapshot


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def coordinators_writer(run_dir: Path) -> BackgroundWriter:
    """The background writer of a coordinator that did not resume (a fresh run, or a deputy that took over),
    as its lifecycle part sets it up."""
    writer = BackgroundWriter()
    Lifecycle(SimpleNamespace(writer=writer, run_dir=run_dir), None, None, None)  # type: ignore[arg-type]
    return writer


def test_a_takeovers_first_failed_checkpoint_is_a_warning_when_the_run_dir_holds_a_valid_one(tmp_path):
    save(ckpt_path(tmp_path, 20), make_snapshot(round=20))  # written by the coordinator that was lost
    w = coordinators_writer(tmp_path)
    w.submit("checkpoint", enospc)  # the new coordinator's first checkpoint
    assert w.wait() is True, "not the end of the run: a resume can start from round 20"
    warnings = w.take_warnings()
    assert len(warnings) == 1 and "still valid" in warnings[0] and "No space left" in warnings[0]
    assert w.error_summary()["checkpoint"]["count"] == 1


@pytest.mark.parametrize("held", ["nothing", "a corrupt checkpoint"])
def test_a_failed_checkpoint_ends_the_run_when_no_valid_one_is_in_the_run_dir(tmp_path, held):
    if held != "nothing":
        save(ckpt_path(tmp_path, 20), make_snapshot(round=20))
        flip_byte(ckpt_path(tmp_path, 20), "optimizer/m")
    w = coordinators_writer(tmp_path)
    w.submit("checkpoint", enospc)
    with pytest.raises(WriteFailed) as err:
        w.wait()
    assert err.value.exit_code == EXIT_DISK == 7 and "no earlier checkpoint is valid" in str(err.value)
