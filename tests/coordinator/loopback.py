"""An in-memory transport for tests: participants call the real servicer directly, identified by a CN.

``LoopbackClient`` has the methods of ``participant.client.CoordinatorClient`` and calls
``coordinator.servicer.CoordinatorServicer`` in the same process with a fake servicer context whose TLS
auth context carries the participant's certificate common name. An aborted call raises a ``grpc.RpcError``
with the status the servicer chose, exactly what a participant would see over the network. No socket, no
TLS: what this proves is the run logic and the error mapping, never the transport.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from coordinator.servicer import CoordinatorServicer
from proto.fedprune.v1 import service_pb2 as pb


class LoopbackRpcError(grpc.RpcError):
    """What ``context.abort`` raises: a status code and details, as a failed call carries them."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeContext:
    """A servicer context whose caller presented a client certificate with common name ``name``."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.name is None:
            return {"transport_security_type": [b"ssl"]}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.name.encode()]}

    def time_remaining(self) -> float | None:
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise LoopbackRpcError(code, details)


class Loopback:
    """The servicer every client talks to; swapped when a test 'restarts' the coordinator."""

    def __init__(self, servicer: CoordinatorServicer) -> None:
        self.servicer = servicer
        self.lock = threading.Lock()

    def call(self, name: str | None, method: str, request: Any) -> Any:
        return getattr(self.servicer, method)(request, FakeContext(name))


class LoopbackClient:
    """``CoordinatorClient``'s methods over a ``Loopback`` (no retries: nothing is transient here)."""

    def __init__(self, loopback: Loopback, name: str) -> None:
        self.loopback = loopback
        self.name = name

    def _call(self, method: str, request: Any) -> Any:
        return self.loopback.call(self.name, method, request)

    def close(self) -> None:
        pass

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        return self._call("Join", request)

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task:
        return self._call("Await", pb.AwaitRequest(run_id=run_id, max_wait_ms=int(max_wait_s * 1000)))

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        self._call("AdvertiseKeys", request)

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        self._call("ShareKeys", request)

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        return self._call("MaskedInput", parts())

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None:
        self._call("SignSurvivors", request)

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        self._call("Unmask", request)

    def block_mask(self, request: pb.BlockMaskRequest) -> list[pb.BlockMaskChunk]:
        return list(self._call("BlockMask", request))

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        self._call("SubmitStatement", request)
