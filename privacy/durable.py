"""Atomic, fsync'd file writes for the state a role resumes from and the privacy claims rest on.

A file written with :func:`write_durably` is either the old one or the new one after any crash or power
cut: the bytes go to a temporary file beside it, are fsync'd, renamed over the target, and the directory is
fsync'd so that the rename itself survives. The coordinator's block masks and weights, a participant's
session history and release marker, and the lifetime budget ledger are written this way.

:class:`DirectoryLock` keeps one process per state directory: a second daemon started on a directory another
one is using would drive the same run from the same files and overwrite what the first relies on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE_NAME = ".lock"


class DirectoryInUseError(RuntimeError):
    """Another process holds a state directory's lock."""


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.lock``, held until :meth:`release` or the process ends.

    The kernel drops the lock when the holder dies, so a crashed daemon never leaves a stale lock behind; the
    file keeps the holder's process id for the error a second process gets. ``what`` names the directory in
    that error (e.g. "output.state"). The lock belongs to this object: a second lock on the same directory
    is refused even within one process, until this one is released.
    """

    def __init__(self, directory: Path, *, what: str) -> None:
        self.path = directory / LOCK_FILE_NAME
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise DirectoryInUseError(
                f"{what} {directory} is in use by another process (pid {holder}); stop it first, or use "
                "another directory"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the flock
            self._descriptor = None


def fsync_directory(directory: Path) -> None:
    """Return once ``directory``'s entries (a rename into it) are on disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` atomically and durably; a new file gets ``mode`` (less the umask).

    The temporary file carries the process id, so two processes writing the same target never share one;
    it is removed if the write fails.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # atomic: readers see the old file or the new one
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_directory(path.parent)
