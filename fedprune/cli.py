"""The one command-line entry point: ``fedprune <command> ...``.

Each command lives in its own module under ``fedprune.commands`` and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function of the parsed namespace returning an exit code).
Domain errors derived from ``ValueError`` in our packages are printed as one line and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules under fedprune.commands, in the order their commands appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "prune",
    "eval",
    "simulate",
    "demo",
    "demo_model",
    "privacy_cmd",
    "audit",
    "certs",
    "coordinator",
    "participant",
)

EXIT_USER_ERROR = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pruning.errors import PruningInputError

    types: list[type[BaseException]] = [PruningInputError]
    for module, name in (("privacy.errors", "PrivacyError"), ("fedprune.errors", "CommandError")):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every command registered."""
    from fedprune import __version__

    parser = argparse.ArgumentParser(
        prog="fedprune", description="Privacy-hardened federated pruning of large language models."
    )
    parser.add_argument("--version", action="version", version=f"fedprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"fedprune.commands.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(handler(args) or 0)
    except _user_error_types() as error:
        print(f"fedprune {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"fedprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
