"""Errors the pruning core raises for bad user input (the CLI prints them as one line)."""


class PruningInputError(ValueError):
    """Bad input to the pruning core: a model, data file or option that cannot be used as given."""
