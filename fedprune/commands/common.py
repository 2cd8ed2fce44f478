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
