"""The gRPC face of the coordinator: converts messages, calls ``CoordinatorRun``, maps errors in one table.

Identity is the verified client certificate's common name (``proto.tls.peer_common_name``), never a field
of a message. Nothing here holds run state; ``serve`` starts a mutual-TLS server with explicit message
sizes and keepalive (``proto.tls``) and the standard health service.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.admission import UNAUTHENTICATED_CALLERS, Admission, CallLimits, RefusalLog
from coordinator.errors import (
    CoordinatorError,
    MalformedMessageError,
    ModelMismatchError,
    RunClosedError,
    StaleMessageError,
    TooLargeError,
    UnknownParticipantError,
)
from coordinator.run import CoordinatorRun
from privacy.secagg.errors import InvalidMessageError
from privacy.signing import ParticipantStatement
from proto import convert
from proto.domain import Assigned, JoinReply
from proto.fedprune.v1 import service_pb2 as pb
from proto.fedprune.v1 import service_pb2_grpc
from proto.tls import MAX_CHUNK_PAYLOAD_BYTES, PeerIdentityError, add_secure_port, server_options

logger = logging.getLogger(__name__)

SERVICE_NAME = "fedprune.v1.Coordinator"
MAX_STATEMENT_BYTES = 1 << 20

# One table: every domain error the run raises, and the status a participant sees.
STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (PeerIdentityError, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownParticipantError, grpc.StatusCode.PERMISSION_DENIED),
    (ModelMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleMessageError, grpc.StatusCode.FAILED_PRECONDITION),
    (RunClosedError, grpc.StatusCode.FAILED_PRECONDITION),
    (TooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MalformedMessageError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """Return the gRPC status of a domain error (INTERNAL for anything unexpected)."""
    for kind, code in STATUS_TABLE:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


R = TypeVar("R")


def _call(context: grpc.ServicerContext, what: str, body: Callable[[str], R], refusals: RefusalLog) -> R:
    name: str | None = None
    try:
        name = _peer(context)
        return body(name)
    except grpc.RpcError:
        # Raised by the request stream: the caller cancelled, its deadline passed or the call was cut for
        # idling. gRPC already ended the call; ``coordinator.admission`` logged it in one line.
        raise
    except (CoordinatorError, PeerIdentityError, ValueError) as error:
        code = status_for(error)
        refusals.refused(
            UNAUTHENTICATED_CALLERS if name is None else name, "%s refused (%s): %s", what, code.name, error
        )
        context.abort(code, str(error))
    except Exception:
        logger.exception("%s failed", what)
        context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error (see the coordinator's log)")
    raise AssertionError("unreachable")  # context.abort raises


def _peer(context: grpc.ServicerContext) -> str:
    from proto.tls import peer_common_name

    return peer_common_name(context)


def task_to_proto(run: CoordinatorRun, assigned: Assigned) -> pb.Task:
    """Return the wire form of an assigned task, its session references naming ``run``."""
    return convert.task_to_proto(dataclasses.replace(assigned, run_id=bytes.fromhex(run.run_id)))


class CoordinatorServicer(service_pb2_grpc.CoordinatorServicer):
    """Implements ``fedprune.v1.Coordinator`` on a ``CoordinatorRun``."""

    def __init__(self, run: CoordinatorRun) -> None:
        self.run = run
        self.refusals = RefusalLog(logger)
        """Refusal lines, bounded per participant (every caller here passed ``Admission``)."""

    def _check_run(self, run_id: bytes) -> None:
        if run_id != bytes.fromhex(self.run.run_id):
            raise StaleMessageError("the message names another run (did the coordinator's state change?)")

    def _check_session(self, ref: pb.SessionRef, session_id: bytes | None = None) -> int:
        self._check_run(ref.run_id)
        if session_id is not None and ref.session_id and bytes(ref.session_id) != bytes(session_id):
            raise MalformedMessageError(
                "session.session_id differs from the session id of the message it carries"
            )
        return int(ref.block)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        def body(name: str) -> pb.JoinReply:
            joining = convert.join_request_from_proto(request)
            answer = self.run.join(
                name,
                model_fingerprint=joining.base_model_fingerprint,
                identity_key=joining.identity_public_key,
                max_blocks=joining.max_blocks,
            )
            reply = JoinReply(
                run=self.run.run_parameters(), participant_id=answer.participant_id, name=answer.name
            )
            return convert.join_reply_to_proto(reply)

        return _call(context, "Join", body, self.refusals)

    def Await(self, request: pb.AwaitRequest, context: grpc.ServicerContext) -> pb.Task:  # noqa: N802
        def body(name: str) -> pb.Task:
            if request.run_id:
                self._check_run(request.run_id)
            wait_s = max(0.0, request.max_wait_ms / 1000.0)
            remaining = context.time_remaining()
            if remaining is not None:
                wait_s = min(wait_s, max(0.0, remaining - 1.0))
            return task_to_proto(self.run, self.run.await_task(name, max_wait_s=wait_s))

        return _call(context, "Await", body, self.refusals)

    def AdvertiseKeys(self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.AdvertiseKeysReply:
            block = self._check_session(request.session)
            advertisement = convert.key_advertisement_from_proto(request.advertisement)
            self.run.advertise(name, block, advertisement)
            return pb.AdvertiseKeysReply()

        return _call(context, "AdvertiseKeys", body, self.refusals)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.ShareKeysReply:
            block = self._check_session(request.session, request.share_keys.session_id)
            self.run.share_keys(name, block, convert.share_keys_from_proto(request.share_keys))
            return pb.ShareKeysReply()

        return _call(context, "ShareKeys", body, self.refusals)

    def MaskedInput(
        self, request_iterator: Iterator[pb.MaskedInputPart], context: grpc.ServicerContext
    ) -> Any:  # noqa: N802
        def body(name: str) -> pb.MaskedInputReply:
            self.run.check_member(name)  # before the first message is read
            blocks: list[int] = []

            def parts() -> Iterator[Any]:
                for part in request_iterator:
                    kind = part.WhichOneof("part")
                    carried = part.chunk.session_id if kind == "chunk" else part.done.session_id
                    block = self._check_session(part.session, carried if kind else None)
                    if blocks and blocks[0] != block:
                        raise MalformedMessageError("one masked-input stream carries one block")
                    blocks.append(block)
                    if kind == "chunk":
                        if len(part.chunk.payload) > MAX_CHUNK_PAYLOAD_BYTES:
                            raise TooLargeError(f"chunk payload exceeds {MAX_CHUNK_PAYLOAD_BYTES} bytes")
                        yield convert.masked_input_chunk_from_proto(part.chunk)
                    elif kind == "done":
                        yield convert.masked_input_done_from_proto(part.done)
                    else:
                        raise MalformedMessageError("MaskedInputPart carries neither chunk nor done")

            stream = parts()  # the block is known once the first part is read
            head = next(stream, None)
            if head is None:
                raise MalformedMessageError("empty masked-input stream")

            def chained() -> Iterator[Any]:
                yield head
                yield from stream

            chunks, digest = self.run.masked_input(name, blocks[0], chained())
            return pb.MaskedInputReply(chunks_received=chunks, digest=digest)

        return _call(context, "MaskedInput", body, self.refusals)

    def SignSurvivors(self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.SignSurvivorsReply:
            block = self._check_session(request.session, request.signature.session_id)
            self.run.sign_survivors(name, block, convert.survivor_signature_from_proto(request.signature))
            return pb.SignSurvivorsReply()

        return _call(context, "SignSurvivors", body, self.refusals)

    def Unmask(self, request: pb.UnmaskSubmission, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.UnmaskReply:
            block = self._check_session(request.session, request.response.session_id)
            self.run.unmask(name, block, convert.unmask_response_from_proto(request.response))
            return pb.UnmaskReply()

        return _call(context, "Unmask", body, self.refusals)

    def BlockMask(
        self, request: pb.BlockMaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BlockMaskChunk]:  # noqa: N802
        def body(name: str) -> tuple[bytes, int, bytes]:
            self._check_run(request.run_id)
            return self.run.block_mask(name, int(request.block))

        packed, bits, layout = _call(context, "BlockMask", body, self.refusals)
        mask = convert.block_mask_of(int(request.block), packed, bit_count=bits, layout_fingerprint=layout)
        yield from convert.block_mask_to_chunks(mask, chunk_bytes=MAX_CHUNK_PAYLOAD_BYTES)

    def BlockWeights(
        self, request: pb.BlockWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BlockWeightsChunk]:  # noqa: N802
        def body(name: str) -> bytes:
            self._check_run(request.run_id)
            return self.run.block_weights(name, int(request.block))

        data = _call(context, "BlockWeights", body, self.refusals)
        weights = convert.block_weights_of(int(request.block), data)
        yield from convert.block_weights_to_chunks(weights, chunk_bytes=MAX_CHUNK_PAYLOAD_BYTES)

    def OwlAllocation(self, request: pb.OwlAllocationRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.OwlAllocationReply:
            self._check_run(request.run_id)
            return convert.owl_allocation_to_proto(self.run.owl_allocation(name))

        return _call(context, "OwlAllocation", body, self.refusals)

    def SubmitStatement(self, request: pb.SubmitStatementRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body(name: str) -> pb.SubmitStatementReply:
            signed = convert.signed_statement_from_proto(request)
            self._check_run(signed.run_id)
            if len(signed.statement) > MAX_STATEMENT_BYTES:
                raise TooLargeError(f"statement exceeds {MAX_STATEMENT_BYTES} bytes")
            try:
                statement = ParticipantStatement.model_validate_json(signed.statement)
            except ValueError as error:
                raise MalformedMessageError(f"statement: {error}") from None
            if bytes.fromhex(statement.signature) != signed.signature:
                raise MalformedMessageError(
                    "SignedStatement.signature differs from the statement's signature"
                )
            self.run.submit_statement(name, statement)
            return pb.SubmitStatementReply()

        return _call(context, "SubmitStatement", body, self.refusals)


def serve(run: CoordinatorRun, *, address: str) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Return a started mutual-TLS server for ``run`` (with the health service) and its bound port.

    Every call passes ``coordinator.admission.Admission`` first (identity, membership, caps, bounded
    reads); the thread pool has a thread for every call the caps admit (``config.worker_threads``).
    """
    section = run.config.server
    admission = Admission(
        participants=frozenset(run.config.run.participants),
        monitors=frozenset(section.monitors),
        limits=CallLimits(
            max_calls_per_participant=section.max_calls_per_participant,
            max_monitoring_calls=section.max_monitoring_calls,
            idle_timeout_s=section.idle_timeout_s,
        ),
    )
    workers = run.config.worker_threads
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coordinator-call"),
        interceptors=[admission],
        options=server_options(),
        # A bound on queued calls (memory), far above what the caps admit: refusals are answered at once.
        maximum_concurrent_rpcs=4 * workers,
    )
    service_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(run), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = add_secure_port(server, address, run.config.tls)
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer
