"""Where demo models are cached, and how a build is published there atomically under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# A finished build contains this file, written last; a directory without it is not a model.
MANIFEST_NAME = "manifest.json"


def default_cache_dir() -> Path:
    """Return ``$FEDPRUNE_CACHE``, else ``$XDG_CACHE_HOME/fedprune``, else ``~/.cache/fedprune``."""
    explicit = os.environ.get("FEDPRUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedprune"


def model_directory(cache_dir: Path, key: str) -> Path:
    """Return the directory that holds the finished demo model with cache key ``key``."""
    return cache_dir / f"demo-model-{key}"


def is_complete(directory: Path) -> bool:
    """Return whether ``directory`` holds a finished build (its manifest exists)."""
    return (directory / MANIFEST_NAME).is_file()


@contextlib.contextmanager
def build_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on building key ``key`` in ``cache_dir`` for the ``with`` block.

    ``flock`` locks die with their process, so a killed build never leaves a stale lock behind.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f"demo-model-{key}.lock"
    with open(lock_path, "a+b") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is building %s; waiting for it", lock_path.stem)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_directory(cache_dir: Path, key: str) -> Iterator[Path]:
    """Yield an empty temporary directory next to the final one; it is removed when the block raises.

    Must be used under :func:`build_lock`: it first removes staging and retired directories that killed
    builds of the same key left behind, which is safe only while no other build of that key runs.
    """
    # Staging and retired directories of killed builds: ``.demo-model-<key>.staging-*`` / ``.retired-*``.
    for leftover in cache_dir.glob(f".demo-model-{key}.*"):
        logger.info("removing %s left by an interrupted build", leftover.name)
        shutil.rmtree(leftover, ignore_errors=True)
    remove_abandoned_builds(cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".demo-model-{key}.staging-", dir=cache_dir))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_abandoned_builds(cache_dir: Path) -> list[str]:
    """Return the names of leftover staging/retired directories removed from ``cache_dir``.

    A leftover of key ``k`` is removed only if ``k``'s lock can be taken at once, i.e. no build of ``k``
    is running (a killed process holds no ``flock``). Keys whose lock is busy, ours included, are skipped.
    """
    removed = []
    for leftover in sorted(cache_dir.glob(".demo-model-*.*-*")):
        key = leftover.name.removeprefix(".demo-model-").split(".", 1)[0]
        lock_path = cache_dir / f"demo-model-{key}.lock"
        with open(lock_path, "a+b") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                logger.info("removing %s left by an interrupted build", leftover.name)
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover.name)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    return removed


def publish(staging: Path, final: Path) -> None:
    """Move the finished ``staging`` directory to ``final``, replacing an older build there.

    ``rename`` is atomic, so readers see either the old complete build or the new one, never a mix.
    """
    if not is_complete(staging):
        raise RuntimeError(f"refusing to publish {staging}: it has no {MANIFEST_NAME}")
    retired = None
    if final.exists():
        retired = final.with_name(f".{final.name}.retired-{os.getpid()}")
        os.rename(final, retired)
    os.rename(staging, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
