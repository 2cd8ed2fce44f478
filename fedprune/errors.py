"""Errors of the command layer."""


class CommandError(ValueError):
    """A command cannot run as asked (bad option combination, unusable path)."""
