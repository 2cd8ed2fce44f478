"""participant.client.with_retries: only transient failures are retried, jittered, bounded, on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from participant.client import (
    CLOSED_CONNECTIONS_BEFORE_REFUSAL,
    RETRYABLE,
    ConfigurationError,
    CoordinatorUnreachableError,
    MessageTooLargeError,
    RetryPolicy,
    StreamTooLargeError,
    collect_mask_stream,
    with_retries,
)
from proto.fedprune.v1 import service_pb2 as pb


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _failing(codes: list[grpc.StatusCode | Failure], result: str = "ok") -> tuple[list[int], object]:
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if codes:
            failure = codes.pop(0)
            raise failure if isinstance(failure, Failure) else Failure(failure)
        return result

    return calls, call


@pytest.mark.parametrize("code", sorted(RETRYABLE, key=lambda c: c.name), ids=lambda c: c.name)
def test_transient_failures_are_retried_until_the_call_succeeds(code: grpc.StatusCode) -> None:
    time = FakeTime()
    calls, call = _failing([code, code, code])
    assert with_retries(call, what="Join", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep) == "ok"
    assert calls[0] == 4 and len(time.sleeps) == 3


def test_exactly_four_codes_are_transient() -> None:
    assert {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    } == RETRYABLE


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL],
    ids=lambda c: c.name,
)
def test_other_failures_are_raised_at_once(code: grpc.StatusCode) -> None:
    time = FakeTime()
    calls, call = _failing([code])
    with pytest.raises(grpc.RpcError) as raised:
        with_retries(call, what="Join", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep)
    assert raised.value.code() is code and calls[0] == 1 and time.sleeps == []


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED], ids=lambda c: c.name
)
def test_a_refused_identity_is_a_configuration_error_not_a_retry(code: grpc.StatusCode) -> None:
    time = FakeTime()
    calls, call = _failing([Failure(code, "'outsider' is not in run.participants")])
    with pytest.raises(ConfigurationError, match=f"refused this participant \\({code.name}\\).*outsider"):
        with_retries(call, what="Join", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep)
    assert calls[0] == 1


def test_a_refused_handshake_is_a_configuration_error() -> None:
    time = FakeTime()
    _, call = _failing(
        [Failure(grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED")]
    )
    with pytest.raises(ConfigurationError, match="refused the TLS handshake"):
        with_retries(call, what="Join", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep)
    closed = [Failure(grpc.StatusCode.UNAVAILABLE, "Socket closed")] * CLOSED_CONNECTIONS_BEFORE_REFUSAL
    _, call = _failing(list(closed))
    with pytest.raises(ConfigurationError, match="closed every connection during the TLS handshake"):
        with_retries(call, what="Join", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep)


def test_retries_stop_after_max_retry_time_and_never_sleep_past_it() -> None:
    time = FakeTime()
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0, max_retry_time_s=30.0)
    calls, call = _failing([grpc.StatusCode.UNAVAILABLE] * 1000)
    with pytest.raises(CoordinatorUnreachableError, match="Await: still failing after 30 s"):
        with_retries(call, what="Await", policy=policy, clock=time.clock, sleep=time.sleep)
    assert time.now == pytest.approx(30.0)
    assert max(time.sleeps) <= 8.0 and calls[0] < 1000


def test_backoff_is_exponential_capped_and_jittered_within_half_to_full() -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=4.0)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = {policy.backoff(attempt) for _ in range(50)}
        assert all(cap * 0.5 <= wait <= cap for wait in waits), (attempt, waits)
        assert len(waits) > 1, "the wait is jittered"


@pytest.mark.parametrize(
    "details",
    [
        "Received message larger than max (8388708 vs. 4259840)",
        "Sent message larger than max (5000000 vs. 4259840)",
        "chunk payload exceeds 4194304 bytes",
    ],
)
def test_a_message_over_a_size_limit_is_not_retried(details: str) -> None:
    # The same message is as large on every attempt: retrying it for an hour helps no one.
    time = FakeTime()
    calls, call = _failing([Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, details)] * 3)
    with pytest.raises(MessageTooLargeError, match="over a size limit"):
        with_retries(call, what="MaskedInput", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep)
    assert calls[0] == 1 and time.sleeps == []


def test_resource_exhausted_without_a_size_reason_stays_transient() -> None:
    time = FakeTime()
    calls, call = _failing([Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams")])
    assert with_retries(call, what="Await", policy=RetryPolicy(), clock=time.clock, sleep=time.sleep) == "ok"
    assert calls[0] == 2


def test_a_mask_stream_is_cut_off_as_soon_as_it_passes_its_size() -> None:
    pulled: list[int] = []

    def stream() -> Iterator[pb.BlockMaskChunk]:
        for index in range(1000):
            pulled.append(index)
            yield pb.BlockMaskChunk(chunk_index=index, packed=b"\xff" * 64)

    assert len(collect_mask_stream(iter([pb.BlockMaskChunk(packed=b"\x01" * 100)]), max_bytes=100)) == 1
    with pytest.raises(StreamTooLargeError, match="more than the 100 bytes"):
        collect_mask_stream(stream(), max_bytes=100)
    assert len(pulled) == 2  # never buffered whole
