"""Files that hold secrets: written atomically with mode 0600, and locked between processes.

Atomic write is the classic temp-file-in-the-same-directory + fsync + rename, so a reader
(or a crash) sees either the old file or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agora.errors import CredentialsBusy, LocalError


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing, with mode 0700 for the leaf."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def opening_database(path: Path | str | None, connection: sqlite3.Connection,
                     ) -> Iterator[None]:
    """Around the first statements on a database file: SQLite's refusal (a damaged or
    foreign file, a directory that cannot be written) becomes one line naming the file, and
    the connection is closed. The file is left exactly as it is: it may be all a broker knows
    of its principals, so nothing here replaces or repairs it."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise LocalError(f"cannot open the database {path}: {exc} (left as it is)") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the file never exists with wider mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class InstanceLock:
    """One running process per data directory, as a PID file: an exclusive ``flock`` on
    ``path`` held for as long as the process runs, with its pid written in the file for the
    refusal message. The kernel drops the lock when the process ends, even by kill -9, so a
    crash never leaves a stale lock behind: the file staying on disk means nothing."""

    def __init__(self, path: Path, what: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise LocalError(f"another {what} is already running on {Path(path).parent}"
                             + (f" ({holder})" if holder else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 10.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created 0600 if missing).

    Bounded: raises CredentialsBusy after ``timeout`` seconds instead of waiting forever.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CredentialsBusy(
                        f"another agora process holds {path.name}; try again"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
