"""Data safety of rank 0's writes, in one process: full disks, failed writes, lineage-aware pruning,
temp files that follow no symlink, file modes that follow the umask, and the background writer's policy.

A real small tmpfs is used as the run dir when this process may mount one (root); otherwise that test is
skipped with the reason, and the injected ``OSError(ENOSPC)`` tests still cover the same code paths.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.errors import EXIT_DISK, WriteFailed
from ftmpi.observe.metrics import MetricsCSV, truncate_metrics, write_json_atomic
from ftmpi.storage import checkpoint as ck
from ftmpi.storage.checkpoint import SET_ASIDE, ckpt_path, list_checkpoints, load, newest_valid, prune, save
from tests.unit.test_checkpoint import assert_same, flip_byte, make_snapshot


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name)


# ------------------------------------------------------------------------------------------ item 7: prune
def test_prune_after_resume_past_a_corrupt_checkpoint_keeps_the_valid_lineage(tmp_path):
    """The sequence of issue 14, item 7: a run wrote rounds 15 and 20, round 20 is corrupt; the next launch
    resumes from 15 and writes round 18; prune(keep=1) must keep 18 (and never the corrupt 20)."""
    snaps = {r: make_snapshot(round=r, seed=r) for r in (15, 20)}
    for r, snap in snaps.items():
        save(ckpt_path(tmp_path, r), snap)
        prune(tmp_path, 2)
    flip_byte(ckpt_path(tmp_path, 20), "model/layer0/W")
    path, snap, warnings = newest_valid(tmp_path)
    assert path == ckpt_path(tmp_path, 15) and len(warnings) == 1  # resumed from 15, 20 skipped
    s18 = make_snapshot(round=18, seed=18)
    save(ckpt_path(tmp_path, 18), s18)
    deleted = prune(tmp_path, 1)
    assert deleted == [ckpt_path(tmp_path, 15)]
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 18)], "only the valid checkpoint of this run"
    aside = list((tmp_path / "ckpt" / SET_ASIDE).iterdir())
    assert [p.name.split("-")[1] for p in aside] == ["000020"], "the abandoned future is kept aside, not deleted"
    path, snap, warnings = newest_valid(tmp_path)
    assert path == ckpt_path(tmp_path, 18) and warnings == []
    assert_same(snap, s18)
    save(ckpt_path(tmp_path, 20), make_snapshot(round=20, seed=99))  # the run goes on past round 20
    prune(tmp_path, 1, newest=ckpt_path(tmp_path, 20))
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 20)] and load(ckpt_path(tmp_path, 20)).round == 20


def test_prune_never_deletes_the_only_valid_checkpoint(tmp_path):
    save(ckpt_path(tmp_path, 15), s15 := make_snapshot(round=15))
    save(ckpt_path(tmp_path, 18), make_snapshot(round=18))
    flip_byte(ckpt_path(tmp_path, 18), "optimizer/m")  # the newest write went bad on disk
    assert prune(tmp_path, 1) == []
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 15)]
    assert_same(load(ckpt_path(tmp_path, 15)), s15)
    for p in list_checkpoints(tmp_path):  # nothing valid at all: nothing is deleted either
        flip_byte(p, "optimizer/m")
    assert prune(tmp_path, 1) == [] and list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 15)]


# ---------------------------------------------------------------------------- item 8: background writer
def test_optional_write_failures_never_end_the_run_and_every_error_is_kept():
    w = BackgroundWriter()
    for i in range(3):
        w.submit("stage", enospc if i != 1 else (lambda: None))
    assert w.wait() is True  # no exception: staging is only a speed-up
    warnings = w.take_warnings()
    assert len(warnings) == 2 and all("stage write failed" in x and "training goes on" in x for x in warnings)
    assert w.error_summary() == {"stage": {"count": 2, "first": "[Errno 28] No space left on device",
                                           "last": "[Errno 28] No space left on device"}}


def test_first_checkpoint_failing_is_one_clear_error_later_ones_are_warnings(tmp_path):
    w = BackgroundWriter()
    w.submit("checkpoint", enospc)
    with pytest.raises(WriteFailed) as err:
        w.wait()
    assert err.value.exit_code == EXIT_DISK == 7 and "\n" not in str(err.value)
    assert "no earlier checkpoint is valid" in str(err.value) and "No space left" in str(err.value)
    assert w.wait() is True, "raised once"
    w.submit("checkpoint", save, ckpt_path(tmp_path, 10), make_snapshot(round=10))
    w.submit("checkpoint", enospc)

    def boom() -> None:
        raise RuntimeError("second failure")
    w.submit("checkpoint", boom)
    assert w.wait() is True
    assert [("still valid" in x) for x in w.take_warnings()] == [True, True]
    errs = w.error_summary()["checkpoint"]
    assert errs["count"] == 3 and "No space" in errs["first"] and errs["last"] == "second failure"
    resumed = BackgroundWriter()
    resumed.mark_ok("checkpoint")  # a resumed run has a valid checkpoint already
    resumed.submit("checkpoint", enospc)
    assert resumed.wait() is True and len(resumed.take_warnings()) == 1


def test_wait_with_a_timeout_returns_while_a_write_is_stuck():
    w = BackgroundWriter()
    release = threading.Event()
    w.submit("checkpoint", release.wait)
    w.submit("stage", lambda: None)
    assert w.wait(timeout=0.05) is False and w.pending == 2
    release.set()
    assert w.wait(timeout=30) is True and w.pending == 0 and w.done["stage"] == 1


# ------------------------------------------------------------------------------- item 10: ENOSPC, injected
def test_checkpoint_enospc_keeps_the_previous_one_and_resume_continues(tmp_path, monkeypatch):
    first = make_snapshot(round=10)
    save(ckpt_path(tmp_path, 10), first)
    w = BackgroundWriter()
    w.mark_ok("checkpoint")
    real_put = ck._put
    calls = []

    def put(f, name, data):
        calls.append(name)
        if len(calls) == 3:
            enospc()
        real_put(f, name, data)
    monkeypatch.setattr(ck, "_put", put)
    w.submit("checkpoint", save, ckpt_path(tmp_path, 20), make_snapshot(round=20))
    assert w.wait() is True and "No space left" in w.take_warnings()[0]
    monkeypatch.setattr(ck, "_put", real_put)
    assert temps(tmp_path / "ckpt") == [] and list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 10)]
    path, snap, warnings = newest_valid(tmp_path)  # what --resume does
    assert (path, warnings) == (ckpt_path(tmp_path, 10), [])
    assert_same(snap, first)
    save(ckpt_path(tmp_path, 20), make_snapshot(round=20))  # the disk has room again
    assert prune(tmp_path, 1) == [ckpt_path(tmp_path, 10)]


def test_handoff_write_enospc_leaves_no_partial_file(tmp_path, monkeypatch):
    from ftmpi.storage.shards import handoff_path, read_shard, write_handoff

    X, y, ids = np.ones((6, 3), np.float32), np.arange(6) % 2, np.arange(6)
    good = write_handoff(handoff_path(tmp_path, 1), X, y, ids, {1: 3, 2: 3})
    real = h5py.Group.create_dataset

    def create(self, name, *a, **k):
        if name == "ids":
            enospc()
        return real(self, name, *a, **k)
    monkeypatch.setattr(h5py.Group, "create_dataset", create)
    with pytest.raises(OSError) as err:
        write_handoff(handoff_path(tmp_path, 2), X, y, ids, {1: 3, 2: 3})
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    assert not handoff_path(tmp_path, 2).exists() and temps(handoff_path(tmp_path, 2).parent) == []
    assert np.array_equal(read_shard(good).ids, ids)


def test_metrics_rows_on_a_full_disk_are_skipped_with_one_warning(tmp_path, monkeypatch):
    said: list[str] = []
    m = MetricsCSV(tmp_path / "metrics.csv", ["acc_class0"], warn=said.append)
    assert m.row({"round": 0, "train_loss": 0.5})
    real_write = os.write
    full = {"on": True}

    def write(fd, data):
        if full["on"] and fd == m._fd:
            real_write(fd, data[: len(data) // 2])  # a short write, then the disk is full
            enospc()
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", write)
    assert m.row({"round": 1, "train_loss": 0.4}) is False
    assert m.row({"round": 2, "train_loss": 0.3}) is False
    full["on"] = False
    assert m.row({"round": 3, "train_loss": 0.2}) is True
    m.close()
    assert m.missed == 2 and len(said) == 2
    assert "cannot write metrics" in said[0] and "No space left" in said[0] and "2 row(s) missed" in said[1]
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "3"], "complete rows only: no half row left behind"


def test_summary_json_enospc_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "running"})
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "completed"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "running"} and temps(tmp_path) == []


# ------------------------------------------------------------------- item 13: temp names, symlinks, modes
def test_fixed_temp_names_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".summary.json.tmp").symlink_to(victim)  # the old fixed temp name of write_json_atomic
    (tmp_path / ".metrics.csv.tmp").symlink_to(victim)  # and of truncate_metrics
    write_json_atomic(tmp_path / "summary.json", {"ok": 1})
    MetricsCSV(tmp_path / "metrics.csv").close()
    truncate_metrics(tmp_path / "metrics.csv", 5)
    ck_dir = tmp_path / "ckpt"
    ck_dir.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (ck_dir / f".round-000003.h5.tmp-{pid}").symlink_to(victim)  # the old temp name of save
    save(ckpt_path(tmp_path, 3), make_snapshot(round=3))
    assert victim.read_text() == "precious\n"
    assert json.loads((tmp_path / "summary.json").read_text()) == {"ok": 1}
    assert load(ckpt_path(tmp_path, 3)).round == 3


def test_files_a_user_reads_follow_the_umask(tmp_path):
    from ftmpi.config import dump_config, load_config

    old = os.umask(0o022)
    os.umask(old)
    want = 0o666 & ~old
    write_json_atomic(tmp_path / "summary.json", {"ok": 1})
    dump_config(load_config(None, env={}), tmp_path / "config.yaml")
    MetricsCSV(tmp_path / "metrics.csv").close()
    truncate_metrics(tmp_path / "metrics.csv", 5)
    save(ckpt_path(tmp_path, 1), make_snapshot(round=1))
    modes = {p.name: p.stat().st_mode & 0o777 for p in
             (tmp_path / "summary.json", tmp_path / "config.yaml", tmp_path / "metrics.csv", ckpt_path(tmp_path, 1))}
    assert modes == dict.fromkeys(modes, want), f"umask {old:03o}: {modes}"


# ------------------------------------------------------------------------------- item 10: a real tmpfs
@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Grow a filler file until only about ``leave`` bytes are free."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "ab") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
        except OSError:
            pass
    return filler


def test_full_tmpfs_run_dir(tiny_fs):
    run = tiny_fs / "run"
    run.mkdir()
    big = make_snapshot((300, 600), round=10)  # ~2.2 MB with Adam's moments
    save(ckpt_path(run, 10), big)
    size = ckpt_path(run, 10).stat().st_size
    metrics = MetricsCSV(run / "metrics.csv", warn=(said := []).append)
    assert metrics.row({"round": 9})
    write_json_atomic(run / "summary.json", {"status": "running"})
    filler = fill(run, size // 2)
    w = BackgroundWriter()
    w.mark_ok("checkpoint")
    w.submit("checkpoint", save, ckpt_path(run, 20), make_snapshot((300, 600), round=20))
    assert w.wait(timeout=60) is True
    warnings = w.take_warnings()
    assert len(warnings) == 1 and "No space left" in warnings[0], warnings
    assert temps(run / "ckpt") == [] and list_checkpoints(run) == [ckpt_path(run, 10)]
    fill(run, 0)
    for r in range(10, 2000):  # the file's last page may still hold a few rows
        if not metrics.row({"round": r, "train_loss": 0.123456789}):
            break
    assert metrics.missed >= 1 and len(said) == 1 and "No space left" in said[0]
    with pytest.raises(OSError) as err:
        write_json_atomic(run / "summary.json", {"status": "completed", "pad": "x" * 100_000})
    assert err.value.errno == errno.ENOSPC and temps(run) == []
    assert json.loads((run / "summary.json").read_text()) == {"status": "running"}
    filler.unlink()  # the user makes room, then resumes
    path, snap, skipped = newest_valid(run)
    assert (path, skipped) == (ckpt_path(run, 10), [])
    assert_same(snap, big)
    save(ckpt_path(run, 20), make_snapshot((300, 600), round=20))
    assert prune(run, 1) == [ckpt_path(run, 10)] and load(ckpt_path(run, 20)).round == 20
    assert metrics.row({"round": 12}) is True
    metrics.close()
    with open(run / "metrics.csv", newline="") as fh:
        assert [r["round"] for r in csv.DictReader(fh)][-1] == "12"


# ------------------------------------------------------------------------------------ item 14: bad input
def test_report_of_a_folder_that_does_not_exist_is_one_line_and_exit_2(tmp_path, capsys):
    from ftmpi.observe.report import main_report

    nope = tmp_path / "runs" / "typo"
    assert main_report([str(nope)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == f"ftmpi: error: report: {nope}: no such file or directory\n"
    run = tmp_path / "real"
    run.mkdir()
    write_json_atomic(run / "summary.json", {"status": "completed", "name": "real"})
    assert main_report([str(run), str(nope)]) == 2, "the runs that exist are reported, the exit says one is missing"
    cap = capsys.readouterr()
    assert "real" in cap.out and cap.err.count("\n") == 1 and str(nope) in cap.err


def test_empty_config_file_is_one_line_and_exit_2_from_the_command(tmp_path):
    import sys

    cfg = tmp_path / "blank.yaml"
    cfg.write_text("# nothing yet\n")
    p = subprocess.run([sys.executable, "-m", "ftmpi", "train", str(cfg), "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{cfg}: the config file is empty" in lines[0], p.stderr
    assert not (tmp_path / "run").exists()
