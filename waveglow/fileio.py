"""The one atomic writer: every file the toolkit produces (checkpoints, mels, WAVs, splits,
manifests, reports, configs) is written through a temp file in the same folder and a rename.

Readers, a resumed run and a crash therefore see either the old file or the new one, never
half of it. Temp files are named `.<name>.<pid>.<random>.tmp`, so a later run can tell a
leftover of a dead process (`remove_stale_temps`) from one being written right now.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # A rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, durable: bool = False) -> Path:
    """Create or replace `path` with what `write(f)` writes into a binary file object.

    Args:
        path: the destination; its folder is created if missing.
        write: fills the open temp file (e.g. `lambda f: torch.save(obj, f)`).
        durable: fsync the file and its folder (checkpoints: survive a power cut, not only a crash).

    Returns:
        The destination path.

    Raises:
        Whatever `write` or the file system raised; the destination is then untouched and the
        temp file removed. torch.save reports a failed write (disk full) as a RuntimeError
        around the OSError: that OSError is raised instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Create or replace the UTF-8 text file `path` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Create or replace `path` with `data` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def is_temp_name(name: str) -> bool:
    """True for a temp-file name of `atomic_write`."""
    return _TEMP_RE.match(name) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, recursive: bool = False) -> int:
    """Delete temp files in `directory` left by processes that are no longer running.

    Returns:
        How many were removed. Temp files of live processes (a concurrent writer) are kept.
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    removed = 0
    for p in root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"):
        m = _TEMP_RE.match(p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
