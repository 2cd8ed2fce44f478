"""The participant's connection to the coordinator: protobuf on the wire, domain types to the run logic.

``WireClient`` turns any object with the coordinator's protobuf calls (``WireCalls``: ``GrpcWire`` over a
mutual-TLS channel, an in-process servicer, a scripted test coordinator) into ``participant.calls``'
``CoordinatorCalls``: every request and answer goes through ``proto.convert``, and every failed call
becomes a domain error, classified by its status code: FAILED_PRECONDITION is ``CoordinatorRefusedError``,
INVALID_ARGUMENT ``MessageRejectedError``, PERMISSION_DENIED and UNAUTHENTICATED ``ConfigurationError``,
the transient codes ``CoordinatorUnreachableError``, anything else ``CoordinatorFailedError``.
``CoordinatorClient`` is ``WireClient`` over ``GrpcWire``, what the daemon uses.

``GrpcWire`` puts a deadline on every call and retries only transient failures: UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED, with jittered exponential backoff bounded by
``max_backoff_s`` and given up after ``max_retry_time_s`` without success (clock and sleep are injectable
for tests). A refused TLS handshake, a name not in the run (PERMISSION_DENIED, UNAUTHENTICATED) or a
refused run is a configuration error: it is raised at once as ``ConfigurationError`` saying which. So is
a message over a size limit (RESOURCE_EXHAUSTED saying "larger than max", from this client's own gRPC
limit or the coordinator's, or the coordinator's own "exceeds ... bytes"; the status code alone cannot
tell it from the coordinator's call caps, which are transient): the same message is as large on every
retry (``MessageTooLargeError``).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from participant.calls import (
    ConfigurationError,
    CoordinatorCallError,
    CoordinatorFailedError,
    CoordinatorRefusedError,
    CoordinatorUnreachableError,
    MalformedReplyError,
    MalformedTaskError,
    MessageRejectedError,
    MessageTooLargeError,
    StreamTooLargeError,
)
from privacy.secagg.messages import (
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    ShareKeys,
    SurvivorSignature,
    UnmaskResponse,
)
from proto import convert
from proto.domain import (
    Assigned,
    BlockMask,
    BlockWeights,
    JoinReply,
    JoinRequest,
    SessionRef,
    SignedStatement,
)
from proto.fedprune.v1 import service_pb2 as pb
from proto.fedprune.v1 import service_pb2_grpc
from proto.tls import TlsPaths, secure_channel

logger = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# What gRPC says when the TLS handshake fails; it reports that as UNAVAILABLE, which would otherwise be
# retried for an hour although no retry can succeed.
_HANDSHAKE_SIGNS = (
    "handshake",
    "certificate",
    "ssl_error",
    "tlsv1 alert",
    "tls alert",
    "peer did not return",
)


# What gRPC (its own message limit) and the coordinator (its payload limits) say about an over-size message.
_SIZE_SIGNS = ("larger than max", "exceeds")


def message_too_large(error: grpc.RpcError) -> bool:
    """Return True when a failed call says a message was over a size limit (RESOURCE_EXHAUSTED)."""
    details = (error.details() or "").lower() if hasattr(error, "details") else ""
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and any(sign in details for sign in _SIZE_SIGNS)


C = TypeVar("C")


def collect_mask_stream(chunks: Iterable[pb.BlockMaskChunk], *, max_bytes: int) -> list[pb.BlockMaskChunk]:
    """Return the chunks of a global-mask stream; raise StreamTooLargeError once it passes ``max_bytes``.

    Checked chunk by chunk, so a stream longer than the mask the participant derives from its own model
    is refused as soon as it is, never buffered whole.
    """
    return _collect(chunks, lambda chunk: len(chunk.packed), max_bytes=max_bytes, what="global mask")


def collect_weights_stream(
    chunks: Iterable[pb.BlockWeightsChunk], *, max_bytes: int
) -> list[pb.BlockWeightsChunk]:
    """Return the chunks of a block-weights stream; raise StreamTooLargeError once it passes ``max_bytes``
    (the most the block's weights can take, from the participant's own model), never buffering more."""
    return _collect(chunks, lambda chunk: len(chunk.data), max_bytes=max_bytes, what="block weights")


def _collect(chunks: Iterable[C], size: Callable[[C], int], *, max_bytes: int, what: str) -> list[C]:
    collected: list[C] = []
    received = 0
    for chunk in chunks:
        received += size(chunk)
        if received > max_bytes:
            raise StreamTooLargeError(
                f"the {what} stream carries more than the {max_bytes} bytes this block's {what} can take"
            )
        collected.append(chunk)
    return collected


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How patiently transient failures are retried."""

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 60.0
    max_retry_time_s: float | None = 3600.0

    def backoff(self, attempt: int) -> float:
        """Return the jittered wait before retry ``attempt`` (1-based): uniform in [0.5, 1] of the cap."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1)))
        return cap * (0.5 + secrets.randbelow(1 << 16) / float(1 << 17))


# Under TLS 1.3 the client finishes its half of the handshake before the server checks the client
# certificate, so a refused certificate reads only as a connection the server closes at once. A coordinator
# that is down refuses the TCP connection instead; one that restarts closes a connection once, not always.
CLOSED_CONNECTIONS_BEFORE_REFUSAL = 4


def handshake_refused(error: grpc.RpcError) -> bool:
    """Return True when a failed call's details say the TLS handshake was refused."""
    details = (error.details() or "").lower() if hasattr(error, "details") else ""
    return error.code() is grpc.StatusCode.UNAVAILABLE and any(sign in details for sign in _HANDSHAKE_SIGNS)


def connection_closed(error: grpc.RpcError) -> bool:
    """Return True when the server accepted the connection and closed it before answering."""
    details = (error.details() or "").lower() if hasattr(error, "details") else ""
    return error.code() is grpc.StatusCode.UNAVAILABLE and "socket closed" in details


R = TypeVar("R")


def with_retries(
    call: Callable[[], R],
    *,
    what: str,
    policy: RetryPolicy,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> R:
    """Return ``call()``'s result, retrying transient failures under ``policy``; raise the others."""
    started = clock()
    attempt = closed = 0
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if handshake_refused(error):
                raise ConfigurationError(
                    f"{what}: the coordinator refused the TLS handshake: check tls.certificate (issued by "
                    f"the run's CA?) and tls.ca ({error.details()})"
                ) from None
            closed = closed + 1 if connection_closed(error) else 0
            if closed >= CLOSED_CONNECTIONS_BEFORE_REFUSAL:
                raise ConfigurationError(
                    f"{what}: the coordinator closed every connection during the TLS handshake: it refuses "
                    "this participant's certificate (tls.certificate not issued by the run's CA?)"
                ) from None
            if message_too_large(error):
                raise MessageTooLargeError(
                    f"{what}: a message is over a size limit, which no retry changes ({error.details()})"
                ) from None
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise ConfigurationError(
                    f"{what}: the coordinator refused this participant ({code.name}): {error.details()}"
                ) from None
            if code not in RETRYABLE:
                raise
            attempt += 1
            elapsed = clock() - started
            if policy.max_retry_time_s is not None and elapsed >= policy.max_retry_time_s:
                raise CoordinatorUnreachableError(
                    f"{what}: still failing after {elapsed:.0f} s ({code.name}: {error.details()})"
                ) from None
            delay = policy.backoff(attempt)
            if policy.max_retry_time_s is not None:
                delay = min(delay, max(0.0, policy.max_retry_time_s - elapsed))
            logger.info("%s: %s, retrying in %.1f s", what, code.name, delay)
            sleep(delay)


class WireCalls(Protocol):
    """The coordinator's RPCs in protobuf messages: ``GrpcWire`` over gRPC, or an in-memory transport
    (``fedprune.inprocess``) that hands them to the servicer in the same process."""

    def join(self, request: pb.JoinRequest) -> pb.JoinReply: ...

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task: ...

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None: ...

    def share_keys(self, request: pb.ShareKeysRequest) -> None: ...

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply: ...

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None: ...

    def unmask(self, request: pb.UnmaskSubmission) -> None: ...

    def block_mask(self, request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]: ...

    def block_weights(
        self, request: pb.BlockWeightsRequest, *, max_bytes: int
    ) -> list[pb.BlockWeightsChunk]: ...

    def owl_allocation(self, request: pb.OwlAllocationRequest) -> pb.OwlAllocationReply: ...

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None: ...


def call_error(error: grpc.RpcError, what: str) -> CoordinatorCallError:
    """Return the domain error of a failed call, by its status code (and, for size limits, its details)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = (error.details() or "") if callable(getattr(error, "details", None)) else str(error)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return CoordinatorRefusedError(what, code.name, details)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return MessageRejectedError(what, code.name, details)
    if code is not None and message_too_large(error):
        return MessageTooLargeError(
            f"{what}: a message is over a size limit, which no retry changes ({details})"
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        assert code is not None
        return ConfigurationError(
            f"{what}: the coordinator refused this participant ({code.name}): {details}"
        )
    if code in RETRYABLE:
        assert code is not None
        return CoordinatorUnreachableError(f"{what}: {code.name}: {details}")
    status = code.name if code is not None else "failed"
    return CoordinatorFailedError(f"{what}: {status}: {details}")


class WireClient:
    """``participant.calls.CoordinatorCalls`` over a ``WireCalls``: converts, and classifies failures."""

    def __init__(self, wire: WireCalls) -> None:
        self.wire = wire

    def _call(self, what: str, call: Callable[[], R]) -> R:
        try:
            return call()
        except grpc.RpcError as error:
            raise call_error(error, what) from None

    def join(self, request: JoinRequest) -> JoinReply:
        """Return the run's parameters and this participant's id (MalformedReplyError: unreadable)."""
        message = convert.join_request_to_proto(request)
        reply = self._call("Join", lambda: self.wire.join(message))
        try:
            return convert.join_reply_from_proto(reply)
        except ValueError as error:
            raise MalformedReplyError(f"Join: the coordinator's answer cannot be read: {error}") from None

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> Assigned:
        """Return the next task (MalformedTaskError naming its kind when it cannot be read)."""
        message = self._call("Await", lambda: self.wire.await_task(run_id, max_wait_s=max_wait_s))
        try:
            return convert.task_from_proto(message)
        except ValueError as error:
            raise MalformedTaskError(message.WhichOneof("kind") or "task", str(error)) from None

    def advertise_keys(self, session: SessionRef, advertisement: KeyAdvertisement) -> None:
        """Send round 0."""
        request = convert.advertise_keys_request_to_proto(session, advertisement)
        self._call("AdvertiseKeys", lambda: self.wire.advertise_keys(request))

    def share_keys(self, session: SessionRef, message: ShareKeys) -> None:
        """Send round 1."""
        request = convert.share_keys_request_to_proto(session, message)
        self._call("ShareKeys", lambda: self.wire.share_keys(request))

    def masked_input(
        self, session: SessionRef, messages: Sequence[MaskedInputChunk | MaskedInputDone]
    ) -> None:
        """Stream round 2 (the same parts again on each retry)."""
        parts = convert.masked_input_parts_to_proto(session, messages)
        self._call("MaskedInput", lambda: self.wire.masked_input(lambda: iter(parts)))

    def sign_survivors(self, session: SessionRef, signature: SurvivorSignature) -> None:
        """Send the consistency signature."""
        request = convert.sign_survivors_request_to_proto(session, signature)
        self._call("SignSurvivors", lambda: self.wire.sign_survivors(request))

    def unmask(self, session: SessionRef, response: UnmaskResponse) -> None:
        """Send round 3."""
        request = convert.unmask_submission_to_proto(session, response)
        self._call("Unmask", lambda: self.wire.unmask(request))

    def block_mask(self, run_id: bytes, block: int, *, max_bytes: int) -> BlockMask:
        """Return one block's global mask as it arrived; StreamTooLargeError past ``max_bytes`` packed bytes."""
        request = convert.block_mask_request_to_proto(run_id, block)
        chunks = self._call("BlockMask", lambda: self.wire.block_mask(request, max_bytes=max_bytes))
        return convert.block_mask_from_chunks(block, chunks)

    def block_weights(self, run_id: bytes, block: int, *, max_bytes: int) -> BlockWeights:
        """Return one block's final weights as they arrived; StreamTooLargeError past ``max_bytes`` bytes."""
        request = convert.block_weights_request_to_proto(run_id, block)
        chunks = self._call("BlockWeights", lambda: self.wire.block_weights(request, max_bytes=max_bytes))
        return convert.block_weights_from_chunks(block, chunks)

    def owl_allocation(self, run_id: bytes) -> tuple[float, ...]:
        """Return the run's per-block OWL sparsities as announced (the caller checks them)."""
        request = convert.owl_allocation_request_to_proto(run_id)
        reply = self._call("OwlAllocation", lambda: self.wire.owl_allocation(request))
        return convert.owl_allocation_from_proto(reply)

    def submit_statement(self, statement: SignedStatement) -> None:
        """Send the signed privacy statement."""
        request = convert.signed_statement_to_proto(statement)
        self._call("SubmitStatement", lambda: self.wire.submit_statement(request))


class GrpcWire:
    """The coordinator's RPCs over a mutual-TLS channel, with deadlines and retries; protobufs in and out."""

    def __init__(
        self,
        address: str,
        tls: TlsPaths,
        *,
        call_timeout_s: float,
        stream_timeout_s: float,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._channel = secure_channel(address, tls)
        self._stub = service_pb2_grpc.CoordinatorStub(self._channel)
        self.call_timeout_s = call_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.policy = policy
        self._clock = clock
        self._sleep = sleep

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _unary(self, what: str, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        return with_retries(
            lambda: method(request, timeout=timeout or self.call_timeout_s),
            what=what,
            policy=self.policy,
            clock=self._clock,
            sleep=self._sleep,
        )

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        """Return the run's parameters and this participant's id."""
        return self._unary("Join", self._stub.Join, request)

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task:
        """Return the next task (a long poll of at most ``max_wait_s``)."""
        request = pb.AwaitRequest(run_id=run_id, max_wait_ms=int(max_wait_s * 1000))
        return self._unary("Await", self._stub.Await, request, timeout=max_wait_s + self.call_timeout_s)

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        """Send round 0."""
        self._unary("AdvertiseKeys", self._stub.AdvertiseKeys, request)

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        """Send round 1."""
        self._unary("ShareKeys", self._stub.ShareKeys, request)

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        """Stream the masked input; ``parts`` makes a fresh iterator for each attempt."""
        return with_retries(
            lambda: self._stub.MaskedInput(parts(), timeout=self.stream_timeout_s),
            what="MaskedInput",
            policy=self.policy,
            clock=self._clock,
            sleep=self._sleep,
        )

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None:
        """Send the consistency signature."""
        self._unary("SignSurvivors", self._stub.SignSurvivors, request)

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        """Send round 3."""
        self._unary("Unmask", self._stub.Unmask, request)

    def block_mask(self, request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]:
        """Return every chunk of one block's global mask; StreamTooLargeError past ``max_bytes`` packed bytes."""

        def fetch() -> list[pb.BlockMaskChunk]:
            stream = self._stub.BlockMask(request, timeout=self.stream_timeout_s)
            try:
                return collect_mask_stream(stream, max_bytes=max_bytes)
            except StreamTooLargeError:
                stream.cancel()
                raise

        return with_retries(
            fetch,
            what="BlockMask",
            policy=self.policy,
            clock=self._clock,
            sleep=self._sleep,
        )

    def block_weights(self, request: pb.BlockWeightsRequest, *, max_bytes: int) -> list[pb.BlockWeightsChunk]:
        """Return every chunk of one block's final weights; StreamTooLargeError past ``max_bytes`` bytes."""

        def fetch() -> list[pb.BlockWeightsChunk]:
            stream = self._stub.BlockWeights(request, timeout=self.stream_timeout_s)
            try:
                return collect_weights_stream(stream, max_bytes=max_bytes)
            except StreamTooLargeError:
                stream.cancel()
                raise

        return with_retries(
            fetch,
            what="BlockWeights",
            policy=self.policy,
            clock=self._clock,
            sleep=self._sleep,
        )

    def owl_allocation(self, request: pb.OwlAllocationRequest) -> pb.OwlAllocationReply:
        """Return the run's OWL allocation."""
        return self._unary("OwlAllocation", self._stub.OwlAllocation, request)  # type: ignore[no-any-return]

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        """Send the signed privacy statement."""
        self._unary("SubmitStatement", self._stub.SubmitStatement, request)


class CoordinatorClient(WireClient):
    """The daemon's client: ``WireClient`` over ``GrpcWire`` (deadlines, retries, mutual TLS)."""

    wire: GrpcWire

    def __init__(
        self,
        address: str,
        tls: TlsPaths,
        *,
        call_timeout_s: float,
        stream_timeout_s: float,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            GrpcWire(
                address,
                tls,
                call_timeout_s=call_timeout_s,
                stream_timeout_s=stream_timeout_s,
                policy=policy,
                clock=clock,
                sleep=sleep,
            )
        )

    def close(self) -> None:
        """Close the channel."""
        self.wire.close()


__all__ = [
    "ConfigurationError",
    "CoordinatorClient",
    "CoordinatorUnreachableError",
    "GrpcWire",
    "MessageTooLargeError",
    "RetryPolicy",
    "StreamTooLargeError",
    "WireCalls",
    "WireClient",
    "call_error",
    "collect_mask_stream",
    "collect_weights_stream",
    "with_retries",
]
