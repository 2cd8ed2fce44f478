"""The coordinator's domain errors; ``coordinator.servicer.status_for`` maps each to one gRPC status."""

from __future__ import annotations


class CoordinatorError(Exception):
    """A call the coordinator refuses; the message says why, for the participant's operator."""


class UnknownParticipantError(CoordinatorError):
    """The caller's certificate name is not in ``run.participants`` (or bound to another identity key)."""


class ModelMismatchError(CoordinatorError):
    """The caller's base model is not the coordinator's; the message names both fingerprints."""


class MalformedMessageError(CoordinatorError):
    """A message is malformed or does not belong to its sender."""


class StaleMessageError(CoordinatorError):
    """A message answers a task of a session or phase that is over (the participant goes back to Await)."""


class TooLargeError(CoordinatorError):
    """A message or stream is larger than the run allows."""


class RunClosedError(CoordinatorError):
    """The run started without the caller, or is finished or aborted."""
