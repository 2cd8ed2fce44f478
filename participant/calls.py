"""What a participant asks of its coordinator, in domain types, and the ways a call can fail.

``CoordinatorCalls`` is all the run logic (``participant.run``) knows of its coordinator: requests and
answers are ``proto.domain`` types and secure-aggregation messages, failures are the errors below. A
transport implements it: ``participant.client.CoordinatorClient`` over gRPC, or ``WireClient`` over any
object with the coordinator's protobuf calls (an in-process servicer, a scripted test coordinator); the
transport classifies its own failures into these errors, so the run logic never sees a status code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from privacy.secagg.messages import (
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    ShareKeys,
    SurvivorSignature,
    UnmaskResponse,
)
from proto.domain import (
    Assigned,
    BlockMask,
    BlockWeights,
    JoinReply,
    JoinRequest,
    SessionRef,
    SignedStatement,
)


class CoordinatorCallError(Exception):
    """A call to the coordinator failed; the message says which call and why."""


class NotTakenError(CoordinatorCallError):
    """The coordinator answered, and did not take this message (no retry changes that).

    ``status`` names the coordinator's verdict (for the log), ``details`` is its message.
    """

    def __init__(self, what: str, status: str, details: str) -> None:
        super().__init__(f"{what}: {status}: {details}")
        self.what = what
        self.status = status
        self.details = details


class CoordinatorRefusedError(NotTakenError):
    """The coordinator refused the message in its current state (another run, a stale session, a closed run,
    another base model at Join)."""


class MessageRejectedError(NotTakenError):
    """The coordinator found the message malformed or inconsistent."""


class CoordinatorFailedError(CoordinatorCallError):
    """The coordinator failed the call for a reason that is neither a refusal nor transient."""


class ConfigurationError(CoordinatorCallError):
    """The coordinator refused this participant for a reason no retry fixes; the message says which."""


class CoordinatorUnreachableError(CoordinatorCallError):
    """Transient failures lasted longer than the client's retry budget."""


class MessageTooLargeError(ConfigurationError):
    """A message exceeded a size limit: no retry can succeed, since it is as large every time."""


class MalformedReplyError(CoordinatorCallError):
    """The coordinator's answer cannot be read (a field this version does not know, an unnamed enum)."""


class StreamTooLargeError(ValueError):
    """A server stream carried more bytes than the participant expects of it; it was cut off there."""


class MalformedTaskError(ValueError):
    """The coordinator handed over a task this participant cannot read; ``kind`` names the task."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class CoordinatorCalls(Protocol):
    """The calls a participant makes to its coordinator, in domain types."""

    def join(self, request: JoinRequest) -> JoinReply: ...

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> Assigned: ...

    def advertise_keys(self, session: SessionRef, advertisement: KeyAdvertisement) -> None: ...

    def share_keys(self, session: SessionRef, message: ShareKeys) -> None: ...

    def masked_input(
        self, session: SessionRef, messages: Sequence[MaskedInputChunk | MaskedInputDone]
    ) -> None: ...

    def sign_survivors(self, session: SessionRef, signature: SurvivorSignature) -> None: ...

    def unmask(self, session: SessionRef, response: UnmaskResponse) -> None: ...

    def block_mask(self, run_id: bytes, block: int, *, max_bytes: int) -> BlockMask: ...

    def block_weights(self, run_id: bytes, block: int, *, max_bytes: int) -> BlockWeights: ...

    def owl_allocation(self, run_id: bytes) -> tuple[float, ...]: ...

    def submit_statement(self, statement: SignedStatement) -> None: ...


__all__ = [
    "ConfigurationError",
    "CoordinatorCallError",
    "CoordinatorCalls",
    "CoordinatorFailedError",
    "CoordinatorRefusedError",
    "CoordinatorUnreachableError",
    "MalformedReplyError",
    "MalformedTaskError",
    "MessageRejectedError",
    "MessageTooLargeError",
    "NotTakenError",
    "StreamTooLargeError",
]
