"""Errors of the secure-aggregation protocol, refined from `privacy.errors`."""

from __future__ import annotations

from privacy.errors import PrivacyError, ProtocolAbort


class WrongStateError(PrivacyError):
    """A client or server method was called in a state where it is not allowed."""


class InvalidMessageError(PrivacyError):
    """A message was malformed, unexpected, duplicated or failed a check; it was rejected."""


class AuthenticationError(ProtocolAbort):
    """A signature or an authenticated ciphertext did not verify; the session is aborted."""


class InsufficientParticipantsError(ProtocolAbort):
    """Fewer than `threshold` participants remain; the session is aborted and nothing is revealed."""


class InconsistentViewError(ProtocolAbort):
    """Survivor and dropout sets contradict each other or the session's history; the session is aborted."""


class ShamirError(PrivacyError):
    """Shares that cannot reconstruct a secret: too few, duplicated, or not on one polynomial."""


class InvalidAggregateError(PrivacyError):
    """The unmasked sum has counts above what the contributors could have produced (invalid input)."""

    def __init__(self, message: str, *, invalid_coordinates: int, first_invalid_index: int) -> None:
        super().__init__(message)
        self.invalid_coordinates = invalid_coordinates
        self.first_invalid_index = first_invalid_index


class ReplayError(ProtocolAbort):
    """A session context, or a keep-vote vector with another survivor set, was offered a second time.

    Two sums of one vector over different survivor sets differ by other participants' contributions,
    so a participant never agrees to that; the session is aborted and nothing is revealed.
    """


class CoordinatorMisbehaviour(ProtocolAbort):
    """Proof that the coordinator deviated: a check that a coordinator following the protocol never fails.

    `check` names the check (docs/SECURE_AGGREGATION.md, "Proof of a lying coordinator", lists them).
    A participant that sees one stops taking part in the run: it wipes its secrets and sends nothing more.
    Transient faults (timeouts, an unreachable coordinator) and faults a peer alone can cause (a tampered
    envelope) are never of this class.
    """

    def __init__(self, message: str, *, check: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message


class ContradictoryViewError(CoordinatorMisbehaviour, InconsistentViewError):
    """The coordinator relayed a view that contradicts itself or what it relayed before (a proof)."""


class ThresholdBypassError(CoordinatorMisbehaviour, InsufficientParticipantsError):
    """The coordinator went on with fewer than `threshold` participants where it must abort (a proof)."""


class ForgedRelayError(CoordinatorMisbehaviour, AuthenticationError):
    """The coordinator relayed a signature or advertisement that it must have rejected itself (a proof)."""


class ContextReplayError(CoordinatorMisbehaviour, ReplayError):
    """The coordinator reused a session context instead of drawing a fresh nonce (a proof)."""
