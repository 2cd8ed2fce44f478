"""The participant's connection to the coordinator: deadlines on every call, retries only transient failures.

A call is retried on UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED, with jittered
exponential backoff bounded by ``max_backoff_s`` and given up after ``max_retry_time_s`` without success
(clock and sleep are injectable for tests). A refused TLS handshake, a name not in the run
(PERMISSION_DENIED, UNAUTHENTICATED) or a refused run is a configuration error: it is raised at once as
``ConfigurationError`` saying which. So is a message over a size limit (RESOURCE_EXHAUSTED saying
"larger than max", from this client's own gRPC limit or the coordinator's, or the coordinator's own
"exceeds ... bytes"): the same message is as large on every retry (``MessageTooLargeError``).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import grpc

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


class ConfigurationError(Exception):
    """The coordinator refused this participant for a reason no retry fixes; the message says which."""


class CoordinatorUnreachableError(Exception):
    """Transient failures lasted longer than ``max_retry_time_s``."""


class MessageTooLargeError(ConfigurationError):
    """A message exceeded a size limit: no retry can succeed, since it is as large every time."""


class StreamTooLargeError(ValueError):
    """A server stream carried more bytes than the participant expects of it; it was cut off there."""


# What gRPC (its own message limit) and the coordinator (its payload limits) say about an over-size message.
_SIZE_SIGNS = ("larger than max", "exceeds")


def message_too_large(error: grpc.RpcError) -> bool:
    """Return True when a failed call says a message was over a size limit (RESOURCE_EXHAUSTED)."""
    details = (error.details() or "").lower() if hasattr(error, "details") else ""
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and any(sign in details for sign in _SIZE_SIGNS)


def collect_mask_stream(chunks: Iterable[pb.BlockMaskChunk], *, max_bytes: int) -> list[pb.BlockMaskChunk]:
    """Return the chunks of a global-mask stream; raise StreamTooLargeError once it passes ``max_bytes``.

    Checked chunk by chunk, so a stream longer than the mask the participant derives from its own model
    is refused as soon as it is, never buffered whole.
    """
    collected: list[pb.BlockMaskChunk] = []
    received = 0
    for chunk in chunks:
        received += len(chunk.packed)
        if received > max_bytes:
            raise StreamTooLargeError(
                f"the global mask stream carries more than the {max_bytes} bytes of the mask it announces"
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


class CoordinatorCalls(Protocol):
    """The calls a participant makes to its coordinator: ``CoordinatorClient`` over gRPC, or an in-memory
    transport (``fedprune.inprocess``) that hands them to the servicer in the same process."""

    def join(self, request: pb.JoinRequest) -> pb.JoinReply: ...

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task: ...

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None: ...

    def share_keys(self, request: pb.ShareKeysRequest) -> None: ...

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply: ...

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None: ...

    def unmask(self, request: pb.UnmaskSubmission) -> None: ...

    def block_mask(self, request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]: ...

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None: ...


class CoordinatorClient:
    """The coordinator's RPCs with deadlines and retries; messages in and out are protobufs."""

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

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        """Send the signed privacy statement."""
        self._unary("SubmitStatement", self._stub.SubmitStatement, request)
