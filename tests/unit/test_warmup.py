"""The numba warm-up's lock and marker: never in the shared temp dir, never through a symlink, never fatal.

In-process: ``_warm`` (the compile) is replaced by a recorder, so these tests check where the warm-up locks
and what it trusts, not numba.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ftmpi.model import models


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    seen: list[tuple] = []
    monkeypatch.setattr(models, "_warm", lambda *a: seen.append(a))
    return seen


def test_names_taken_in_the_shared_temp_dir_do_not_crash_the_warm_up(tmp_path: Path, calls: list,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user who created the old predictable names first (here: a directory where the lock file was
    expected, a symlink where the marker was) made every worker crash at start-up."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    base = shared / f"ftmpi-numba-{os.getuid()}"
    Path(f"{base}.lock").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.symlink(victim, f"{base}.ok")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    models.warmup(0, True, "random")
    assert calls, "the kernels were not warmed up"
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in shared.iterdir()) == sorted([f"{base.name}.lock", f"{base.name}.ok"])


def _own(folder: Path) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def test_lock_dir_is_next_to_the_kernels_or_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = models._lock_dir()
    assert folder is not None
    assert models._private(folder)
    # next to numba's cache of the kernels, or the user's own cache dir: never a name in the shared temp dir
    kernels_cache = Path(models.K.__file__).resolve().parent / "__pycache__"
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftmpi"
    assert folder.resolve() in (kernels_cache, user_cache.resolve()), folder
    assert folder.resolve().parent != Path(tempfile.gettempdir()).resolve()
    # a folder others can write is not private, nor is a symlink to a private one
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert not models._private(open_dir)
    link = tmp_path / "link"
    os.symlink(folder, link)
    assert not models._private(link)


def test_cold_warm_up_compiles_what_the_run_needs_under_the_lock_then_loads_side_by_side(
        tmp_path: Path, calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _own(tmp_path / "cache")
    monkeypatch.setattr(models, "_lock_dir", lambda: folder)
    locked: list[int] = []
    real_flock = models.fcntl.flock
    monkeypatch.setattr(models.fcntl, "flock", lambda fd, op: (locked.append(op), real_flock(fd, op)))
    models.warmup(0, True, "random")
    assert calls == [(0, True, "random")] and len(locked) == 1  # cold: under the lock, only what is needed
    marker = folder / models._MARKER
    assert marker.read_text() == models._kernels_signature() + "\nmlp"
    assert marker.stat().st_mode & 0o777 == 0o600
    models.warmup(0, True, "random")
    assert calls[-1] == (0, True, "random") and len(locked) == 1  # warm: side by side, no lock
    models.warmup(8, True, "loss")  # needs more: the lock again, and the marker grows
    assert len(locked) == 2
    assert marker.read_text().split("\n")[1].split() == ["mlp", "quant", "select-loss"]
    marker.write_text("another signature\nmlp quant select-loss")  # the kernels changed: cold again
    models.warmup(0, True, "random")
    assert len(locked) == 3


def test_a_softmax_regression_that_scores_nothing_needs_no_numba(calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its loss and gradient are numpy (kernels/softmax.py) and rank 0 draws the random rows: no warm-up, not
    even numba's import (the signature of the kernels imports numba)."""
    monkeypatch.setattr(models, "_kernels_signature", lambda: pytest.fail("numba was consulted"))
    models.warmup(0, False, "random")
    assert calls == []
    assert models._parts(0, False, "random") == set()
    assert models._parts(4, False, "random") == {"quant"}
    assert models._parts(0, False, "loss") == {"select-loss"}
    assert models._parts(0, True, "coreset") == {"mlp", "select-coreset"}


def test_a_symlinked_marker_or_lock_is_not_followed(tmp_path: Path, calls: list,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _own(tmp_path / "cache")
    monkeypatch.setattr(models, "_lock_dir", lambda: folder)
    fake = tmp_path / "fake-marker"
    fake.write_text(models._kernels_signature())
    os.symlink(fake, folder / models._MARKER)
    target = tmp_path / "lock-target"
    os.symlink(target, folder / models._LOCK)
    models.warmup(4, True, "loss")
    assert calls == [(4, True, "loss")]  # neither trusted the marker's target nor created the lock's
    assert not target.exists()


def test_no_private_dir_warms_up_unlocked(calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_lock_dir", lambda: None)
    models.warmup(0, True, "stratified")
    assert calls == [(0, True, "stratified")]
