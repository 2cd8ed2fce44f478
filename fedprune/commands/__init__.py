"""Subcommands of ``fedprune``; each module exposes ``register(subparsers)``."""
