"""Why a participant leaves a run: the errors its run logic raises (the daemon maps them to exit codes)."""

from __future__ import annotations

from privacy.errors import PrivacyError
from privacy.secagg import CoordinatorMisbehaviour


class RunRefusedError(Exception):
    """This participant refuses the run (or the coordinator refused its model); the message says why."""


class PeerKeyError(RunRefusedError):
    """A session's roster holds an identity key that this participant's pins (or first sight) refuse."""


class UnaccountableRunError(RunRefusedError, PrivacyError):
    """The run's privacy parameters cannot be accounted (the accountants fail on them): refused at join."""


class RunAbortedError(Exception):
    """The coordinator aborted the run."""


class CoordinatorLiedError(RunRefusedError):
    """The coordinator failed a check that only a deviating coordinator can fail; this site left the run.

    ``check`` names the check (docs/SECURE_AGGREGATION.md, "Proof of a lying coordinator").
    """

    def __init__(self, proof: CoordinatorMisbehaviour) -> None:
        super().__init__(
            f"the coordinator deviated from the protocol (check {proof.check}): {proof.detail}; this site wiped its "
            "session secrets, sends nothing more and leaves the run"
        )
        self.check = proof.check


__all__ = [
    "CoordinatorLiedError",
    "PeerKeyError",
    "RunAbortedError",
    "RunRefusedError",
    "UnaccountableRunError",
]
