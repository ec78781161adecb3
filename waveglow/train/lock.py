"""One training process per run directory: an OS lock on `<run_dir>/.train.lock`.

Two `waveglow-train` processes on one run directory would both write last.pt and each
resume from the other's state. The first holds an exclusive `flock` on the lock file for as
long as it runs; a second is refused at once with the holder's PID. The kernel drops the lock
when the holder exits in any way (SIGKILL included), so a crash never leaves a stale lock;
the file itself may stay behind and means nothing when no process holds it.

A `flock` belongs to the open file, which a fork shares: a DataLoader worker forked by the
trainer would keep the lock after the trainer died (for the ~5 s a worker takes to notice, or
for good if it hangs), and a restart would be refused naming a dead PID. So every forked child
closes its copy of a held lock's descriptor at once (`os.register_at_fork`); the lock then lives
exactly as long as the trainer. (POSIX record locks, `fcntl.lockf`, are not inherited, but any
`close` of the file in the holder's process drops them, and they never refuse a second lock
taken in the same process.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import weakref
from pathlib import Path

from waveglow.errors import UserError

LOCK_NAME = ".train.lock"

# The locks this process holds, closed in every child it forks (registered on the first acquire).
_HELD: weakref.WeakSet[RunDirLock] = weakref.WeakSet()
_fork_hook_registered = False


def _close_in_child() -> None:
    """After a fork, in the child: drop its copies of the parent's lock descriptors (the parent
    keeps the lock; it is released when the parent's own descriptor closes)."""
    for lock in list(_HELD):
        if lock.fd is not None:
            try:
                os.close(lock.fd)
            except OSError:
                pass
            lock.fd = None
    _HELD.clear()


class RunDirLock:
    """The lock of one run directory (rank 0 of a run takes it; see module doc).

    Args:
        run_dir: the run directory (created if missing).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> None:
        """Take the lock, or refuse at once.

        Raises:
            UserError: another process holds it (naming the run directory and its PID), or
                the directory cannot be created, or its lock file cannot be opened or written.
        """
        try:
            self.created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"run_dir={self.run_dir}: cannot create the run directory ({e.strerror})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(f"run_dir={self.run_dir.absolute()}: cannot open its lock file {LOCK_NAME} "
                                f"({e.strerror}); expected a run directory this process can write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(f"run_dir={self.run_dir.absolute()}: another waveglow-train ({holder}) is training "
                                "in this run directory; wait for it to end, stop it, or use another run_dir") from None
            # A holder that was releasing may have removed the file between our open and flock:
            # then this lock is on an orphaned inode and means nothing; take the new file's.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        global _fork_hook_registered
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_close_in_child)
            _fork_hook_registered = True
        self.fd = fd
        _HELD.add(self)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:
            self.release()
            raise UserError(f"run_dir={self.run_dir.absolute()}: cannot write its lock file {LOCK_NAME} "
                            f"({e.strerror})") from None

    def release(self) -> None:
        """Drop the lock. A run directory this lock created and that holds nothing else (setup
        failed before anything was written) is removed with it."""
        if self.fd is None:
            return
        try:
            others = [p for p in self.run_dir.iterdir() if p.name != LOCK_NAME]
            if self.created_dir and not others:
                self.path.unlink(missing_ok=True)
                self.run_dir.rmdir()
        except OSError:
            pass  # best effort: an unlocked lock file is harmless
        finally:
            _HELD.discard(self)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _read_holder(fd: int) -> str:
    """What the holder wrote into the lock file ("pid 1234 on host"), or a stand-in."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its PID yet"
