"""Secure aggregation of keep-vote counts (Bonawitz et al. 2017) with dropout recovery.

Transport-independent: `SecAggClient` and `SecAggServer` are state machines that exchange the plain
message objects of `privacy.secagg.messages`; `aggregate_in_process` runs a whole session in one
process. See docs/SECURE_AGGREGATION.md.
"""

from privacy.secagg.client import ClientState, SecAggClient
from privacy.secagg.driver import DropPoint, SessionRun, aggregate_in_process, run_session
from privacy.secagg.errors import (
    AuthenticationError,
    ContextReplayError,
    ContradictoryViewError,
    CoordinatorMisbehaviour,
    ForgedRelayError,
    InconsistentViewError,
    InsufficientParticipantsError,
    InvalidAggregateError,
    InvalidMessageError,
    ReplayError,
    ShamirError,
    ThresholdBypassError,
    WrongStateError,
)
from privacy.secagg.history import SessionHistory, keep_votes_digest
from privacy.secagg.messages import require_sender, sender_of
from privacy.secagg.parameters import (
    DEFAULT_CHUNK_COORDINATES,
    NOTHING_PUBLISHED,
    PROTOCOL_VERSION,
    SessionContext,
    SessionParameters,
    check_threshold,
    default_threshold,
    minimum_threshold,
    published_view,
    resolve_threshold,
    ring_bit_width,
    tolerated_colluders,
)
from privacy.secagg.server import AggregateResult, SecAggServer, ServerState

__all__ = [
    "DEFAULT_CHUNK_COORDINATES",
    "NOTHING_PUBLISHED",
    "PROTOCOL_VERSION",
    "AggregateResult",
    "AuthenticationError",
    "ClientState",
    "ContextReplayError",
    "ContradictoryViewError",
    "CoordinatorMisbehaviour",
    "DropPoint",
    "ForgedRelayError",
    "InconsistentViewError",
    "InsufficientParticipantsError",
    "InvalidAggregateError",
    "InvalidMessageError",
    "ReplayError",
    "SecAggClient",
    "SecAggServer",
    "ServerState",
    "SessionContext",
    "SessionHistory",
    "SessionParameters",
    "SessionRun",
    "ShamirError",
    "ThresholdBypassError",
    "WrongStateError",
    "aggregate_in_process",
    "check_threshold",
    "keep_votes_digest",
    "default_threshold",
    "minimum_threshold",
    "published_view",
    "require_sender",
    "resolve_threshold",
    "ring_bit_width",
    "run_session",
    "sender_of",
    "tolerated_colluders",
]
