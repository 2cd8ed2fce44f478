"""Argument helpers shared by the model commands."""

from __future__ import annotations

import argparse


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device cpu|cuda|cuda:N|auto``."""
    parser.add_argument(
        "--device",
        default="auto",
        help="compute device: cpu, cuda, cuda:N or auto (CUDA when available) [auto]",
    )


def positive_int(value: str) -> int:
    """Return ``value`` as an int >= 1, or raise an argparse error."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {number}")
    return number


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs; the commands report progress themselves."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


MMAP_THRESHOLD_BYTES = 64 * 1024
"""Heap blocks at least this large are mapped on their own and unmapped when freed (glibc ``mallopt``)."""


def return_large_buffers_to_the_os() -> bool:
    """Make glibc map every buffer of at least 64 KiB on its own, so freeing one returns it to the OS.

    By default glibc raises its mmap threshold each time a mapped buffer is freed, up to 32 MiB, after
    which buffers of a block's size come from the heap and freed ones stay resident: a participant that
    alternates scoring a block with that block's secure-aggregation session grew by about 100 MiB on a
    90 MiB model that way (docs/BENCHMARKS.md, "The service: participant memory"). Setting the threshold
    turns that adjustment off. Returns False where there is no glibc (nothing is changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES))
