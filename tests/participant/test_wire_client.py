"""participant.client.WireClient: protobuf in and out on the wire, domain types and domain errors to the run.

The run logic never sees a status code: each failed call becomes the domain error its status code means,
whatever the coordinator's wording, and a task or Join answer the participant cannot read becomes an error
that names it.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from participant.calls import (
    ConfigurationError,
    CoordinatorFailedError,
    CoordinatorRefusedError,
    CoordinatorUnreachableError,
    MalformedReplyError,
    MalformedTaskError,
    MessageRejectedError,
    MessageTooLargeError,
)
from participant.client import WireClient
from proto.domain import Assigned, SessionRef, WaitTask
from proto.fedprune.v1 import service_pb2 as pb


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Wire:
    """A coordinator's protobuf face that fails every call with ``error`` (or answers ``task``)."""

    def __init__(self, error: grpc.RpcError | None = None, task: pb.Task | None = None) -> None:
        self.error = error
        self.task = task
        self.requests: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        def call(request: Any = None, *args: Any, **kwargs: Any) -> Any:
            self.requests.append(request)
            if self.error is not None:
                raise self.error
            return self.task

        return call


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "the message names another run", CoordinatorRefusedError),
        (grpc.StatusCode.INVALID_ARGUMENT, "ShareKeys.sender must be a participant id", MessageRejectedError),
        # The wording of the details never decides a refusal: "exceeds" here is not a size limit.
        (grpc.StatusCode.FAILED_PRECONDITION, "the session exceeds its attempts", CoordinatorRefusedError),
        (grpc.StatusCode.PERMISSION_DENIED, "outsider is not a participant of this run", ConfigurationError),
        (grpc.StatusCode.UNAUTHENTICATED, "no client certificate", ConfigurationError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk payload exceeds 4194304 bytes", MessageTooLargeError),
        (grpc.StatusCode.UNAVAILABLE, "connection refused", CoordinatorUnreachableError),
        (grpc.StatusCode.INTERNAL, "internal error", CoordinatorFailedError),
    ],
)
def test_a_failed_call_becomes_the_domain_error_of_its_status_code(
    code: grpc.StatusCode, details: str, expected: type[Exception]
) -> None:
    client = WireClient(_Wire(_Failed(code, details)))
    with pytest.raises(expected, match=details) as failed:
        client.share_keys(SessionRef(run_id=b"\x01" * 16, block=0), _share_keys())
    assert not isinstance(failed.value, grpc.RpcError)  # the run logic never sees gRPC


def test_the_answer_not_taken_carries_the_coordinator_s_verdict_for_the_log() -> None:
    client = WireClient(_Wire(_Failed(grpc.StatusCode.FAILED_PRECONDITION, "stale session")))
    with pytest.raises(CoordinatorRefusedError) as refused:
        client.unmask(SessionRef(run_id=b"\x01" * 16, block=2), _unmask_response())
    assert (refused.value.status, refused.value.details) == ("FAILED_PRECONDITION", "stale session")


def test_a_task_the_participant_cannot_read_names_its_kind() -> None:
    unreadable = pb.Task(sequence=3, unmask=pb.UnmaskTask(session=pb.SessionRef(block=1)))  # no request
    with pytest.raises(MalformedTaskError, match="UnmaskRequest.session_id must be 32 bytes") as malformed:
        WireClient(_Wire(task=unreadable)).await_task(b"\x01" * 16, max_wait_s=1.0)
    assert malformed.value.kind == "unmask"
    assert WireClient(_Wire(task=pb.Task())).await_task(b"", max_wait_s=1.0) == Assigned(
        0, WaitTask(reason="")
    )


def test_a_join_answer_whose_run_cannot_be_read_is_a_malformed_reply() -> None:
    reply = pb.JoinReply(run=pb.RunParameters(method=pb.METHOD_WANDA), participant_id=1, name="a")
    wire = _Wire(task=reply)  # type: ignore[arg-type]
    with pytest.raises(MalformedReplyError, match=r"RunParameters\.group must be one of"):
        WireClient(wire).join(_join_request())
    assert isinstance(wire.requests[0], pb.JoinRequest)


def _share_keys() -> Any:
    from privacy.secagg.messages import ShareKeys

    return ShareKeys(
        session_id=b"\x02" * 32, sender=1, envelopes=(), self_seed_commitment=b"\x03" * 32, share_digests=()
    )


def _unmask_response() -> Any:
    from privacy.secagg.messages import UnmaskResponse

    return UnmaskResponse(session_id=b"\x02" * 32, sender=1, self_seed_shares=(), mask_key_shares=())


def _join_request() -> Any:
    from proto.domain import JoinRequest

    return JoinRequest(
        base_model_fingerprint=b"\x00" * 32, identity_public_key=b"\x01" * 32, software_version="t"
    )
