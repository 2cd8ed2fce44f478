"""Atomic, fsync'd file writes for the state a role resumes from and the privacy claims rest on.

A file written with :func:`write_durably` is either the old one or the new one after any crash or power
cut: the bytes go to a temporary file beside it, are fsync'd, renamed over the target, and the directory is
fsync'd so that the rename itself survives. The coordinator's block masks and weights, a participant's
session history and release marker, and the lifetime budget ledger are written this way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


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
