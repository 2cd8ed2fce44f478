"""coordinator.servicer.status_for: one table from each domain error to the status a participant sees."""

from __future__ import annotations

import grpc
import pytest

from coordinator.errors import (
    CoordinatorError,
    MalformedMessageError,
    ModelMismatchError,
    RunClosedError,
    StaleMessageError,
    TooLargeError,
    UnknownParticipantError,
)
from coordinator.servicer import STATUS_TABLE, status_for
from privacy.errors import PrivacyError
from privacy.secagg.errors import InvalidMessageError
from proto.tls import PeerIdentityError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PeerIdentityError("no client certificate"), grpc.StatusCode.UNAUTHENTICATED),
        (UnknownParticipantError("not listed"), grpc.StatusCode.PERMISSION_DENIED),
        (ModelMismatchError("other weights"), grpc.StatusCode.FAILED_PRECONDITION),
        (StaleMessageError("session over"), grpc.StatusCode.FAILED_PRECONDITION),
        (RunClosedError("started without you"), grpc.StatusCode.FAILED_PRECONDITION),
        (TooLargeError("chunk too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (MalformedMessageError("bad field"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidMessageError("bad secagg message"), grpc.StatusCode.INVALID_ARGUMENT),
        (PrivacyError("bad privacy value"), grpc.StatusCode.INVALID_ARGUMENT),
        (ValueError("bad value"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
        (KeyError("a bug"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.name,
)
def test_each_domain_error_maps_to_one_status(error: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(error) is code


def test_every_coordinator_error_has_a_row_and_none_is_internal() -> None:
    kinds = {kind for kind, _ in STATUS_TABLE}
    for error in CoordinatorError.__subclasses__():
        assert error in kinds, f"{error.__name__} has no status"
        assert status_for(error("x")) is not grpc.StatusCode.INTERNAL


def test_no_domain_error_is_mapped_to_a_status_the_participant_would_retry() -> None:
    retried = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
    # Only "too large" is retryable (the participant may resend smaller); no refusal loops forever.
    assert {code for _, code in STATUS_TABLE} & retried == {grpc.StatusCode.RESOURCE_EXHAUSTED}
