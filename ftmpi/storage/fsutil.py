"""Safe file replacement: a private temp file beside the target, then ``os.replace``. No MPI.

Every file ftmpi writes that a reader may open at any time (summary.json, config.yaml, checkpoints,
metrics after a resume) is written the same way, so a crash, a full disk or a concurrent reader never sees
a partial file:

- the temp file is created by :func:`tempfile.mkstemp` in the target's folder (``O_CREAT | O_EXCL |
  O_NOFOLLOW``, an unpredictable name): another user cannot plant a symlink or a file under the name first;
- its mode follows the umask, like any file a user expects to read (``mkstemp`` alone makes it 0600);
- on any failure (``ENOSPC`` included) the temp file is removed and the target is left as it was.
"""
from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["TEMP_RE", "file_mode", "fsync_dir", "identity", "replace_atomic", "temp_beside", "umask", "write_error"]

#: Names of the temp files :func:`temp_beside` makes for ``name``: ``.name.XXXXXXXX.tmp``.
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{6,}\.tmp$")

_lock = threading.Lock()
_umask: int | None = None


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """Which file, as it is now: (device, inode, size, modification time); a file rewritten, replaced, or an
    inode freed and reused for another file has another."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def umask() -> int:
    """The process umask, read once (from /proc where possible: setting it to read it races other threads)."""
    global _umask
    with _lock:
        if _umask is None:
            try:
                with open("/proc/self/status") as fh:
                    line = next(x for x in fh if x.startswith("Umask:"))
                _umask = int(line.split()[1], 8)
            except (OSError, StopIteration, ValueError, IndexError):
                _umask = os.umask(0o022)
                os.umask(_umask)
        return _umask


def file_mode() -> int:
    """Mode of a new regular file under the umask (0644 under the usual 022)."""
    return 0o666 & ~umask()


def temp_beside(dest: str | os.PathLike[str]) -> tuple[int, Path]:
    """Create a fresh temp file in ``dest``'s folder for writing ``dest``; returns ``(fd, path)``.

    The name is ``.<dest name>.<random>.tmp`` (see :data:`TEMP_RE`), the mode follows the umask.
    """
    import tempfile  # here: a worker that never writes a file does not import it

    d = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{d.name}.", suffix=".tmp", dir=d.parent)
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        pass
    return fd, Path(tmp)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable; a folder that cannot be fsync'd is left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomic(dest: str | os.PathLike[str], write: Callable[[IO[Any]], object], text: bool = True,
                   durable: bool = True) -> Path:
    """Write ``dest`` through ``write(fh)`` on a temp file, then rename it over ``dest``.

    Args:
        dest: The file to replace; its folder must exist.
        write: Called once with the open temp file (text mode, UTF-8, or binary when ``text`` is False).
        durable: fsync the file before the rename and the folder after it.

    Raises:
        OSError: As the write raised it (e.g. ``ENOSPC``); ``dest`` is then unchanged and no temp file is left.
    """
    d = Path(dest)
    fd, tmp = temp_beside(d)
    try:
        fh: IO[Any] = (os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb"))
        with fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, d)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(d.parent)
    return d


_ERRNO_RE = re.compile(r"errno = (\d+)")


def write_error(exc: BaseException, dest: str | os.PathLike[str], what: str) -> OSError:
    """A one-line ``OSError`` for a failed write of ``dest`` (HDF5's own messages run over several lines and
    name the temp file); keeps ``errno`` so callers can tell a full disk (``ENOSPC``) from other errors.
    h5py reports some failed flushes as ``RuntimeError`` with ``errno = N`` in the text: that is used too."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        m = _ERRNO_RE.search(str(exc))
        code = int(m.group(1)) if m else None
    reason = os.strerror(code) if code else " ".join(str(exc).split())[:200]
    return OSError(code or errno.EIO, f"cannot write {what} {dest}: {reason}")
