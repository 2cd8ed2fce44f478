"""A scripted hostile coordinator: real secure-aggregation sessions, with the lies a test chooses.

It speaks the participant's wire vocabulary (the protobuf requests and tasks of ``fedprune.v1``), so a
real ``ParticipantRun`` drives it in-process through the participant's own conversions (it has
``participant.client.WireCalls``' methods: ``WireClient(coordinator)``), and
``HostileServicer`` puts it behind a real gRPC server with mutual TLS for a ``fedprune participant``
process. The other sites are simulated with ``SecAggClient`` and the sums are computed by a real
``SecAggServer``, so every answer the participant gets is what a coordinator could really send. Every
request the participant makes is recorded (``calls``), which is what a test asserts on: which answers left
the site, and for which session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.report import tolerated_colluders
from privacy.secagg import (
    NOTHING_PUBLISHED,
    SecAggClient,
    SecAggServer,
    SessionContext,
    SessionHistory,
    SessionParameters,
    minimum_threshold,
    published_view,
)
from privacy.secagg.messages import MaskedInputChunk, UnmaskRequest
from privacy.signing import raw_public_key
from proto import convert
from proto.domain import OWL_ALLOCATION_ROUND
from proto.fedprune.v1 import service_pb2 as pb
from proto.fedprune.v1 import service_pb2_grpc
from pruning.adapters import decoder_blocks
from pruning.layout import VoteLayout, base_model_fingerprint

SITE = "site-a"
SITE_ID = 1
RUN_ID = b"\x42" * 16
MAX_CALLS = 200
SPARE_NAMES = ("site-b", "site-c", "site-d", "site-e")
"""Sites the coordinator can put in a roster whether or not the run announced them."""


@dataclasses.dataclass(frozen=True)
class Session:
    """One session the coordinator starts; ``members`` are (name, id, whose identity key it relays)."""

    block: int = 0
    members: tuple[tuple[str, int, str], ...] = ()
    threshold: int | None = None
    colluders: int | None = None
    chunk_coordinates: int | None = None
    max_input: int | None = None
    dimension: int | None = None
    context_block: int | None = None
    """The block the session context names (default: the session's block)."""
    context_round: int | None = None
    """The round the session context names (default: the session's block)."""
    max_bit_width: int | None = None
    """The widest ring the session may use (default: the narrow one)."""
    absent: frozenset[str] = frozenset()
    """Members that never send their masked input (the server marks them dropped)."""
    other_survivors_at_unmask: bool = False
    """The unmask request names another survivor set than the one the site signed."""
    abort_after_advertise: bool = False
    """The coordinator aborts the run once the site advertised its keys (the site's process ends)."""
    published: bytes | None = None
    """The published view the session context binds (default: the script's own, as an honest
    coordinator's: its OWL allocation and the masks it serves for the blocks before the session's)."""


def members(*names: str, start: int = 1) -> tuple[tuple[str, int, str], ...]:
    """Return members with ids in order from ``start`` and each name's own key."""
    return tuple((name, start + i, name) for i, name in enumerate(names))


class HostileCoordinator:
    """Answers one participant (``SITE``) with a scripted run; thread-safe, so a gRPC server can host it."""

    def __init__(
        self,
        model: Any,
        *,
        names: tuple[str, ...],
        threshold: int,
        sessions: Iterable[Session],
        colluders: int | None = None,
        chunk_coordinates: int = 1024,
        keys: dict[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        """``keys``: the other sites' identity keys (default: fresh ones), to script a second process."""
        self.model = model
        self.names = names
        others = sorted({*names, *SPARE_NAMES} - {SITE})
        self.keys = keys or {name: Ed25519PrivateKey.generate() for name in others}
        self.run = pb.RunParameters(
            run_id=RUN_ID,
            method=pb.METHOD_MAGNITUDE,
            pattern=pb.SparsityPattern(sparsity=0.5),
            group=pb.COMPARISON_GROUP_LAYER,
            mode=pb.MODE_ONE_SHOT,
            nsamples=4,
            seqlen=8,
            privacy=pb.PrivacyParameters(delta=1e-5, sample_rate=1.0),
            participants=len(names),
            min_participants=len(names),
            threshold=threshold,
            colluders=tolerated_colluders(len(names), threshold) if colluders is None else colluders,
            max_input=1,
            participant_names=sorted(names),
            chunk_coordinates=chunk_coordinates,
            blocks=len(decoder_blocks(model)),
            vote_layout_fingerprint=VoteLayout.for_model(model).fingerprint(),
            base_model_fingerprint=base_model_fingerprint(model),
            recipe=pb.RECIPE_FEDPRLLM,
        )
        self.script = list(sessions)
        self.allocation: list[float] | None = None
        """What OwlAllocation answers (None: the call fails as before the allocation is decided)."""
        self.masks: dict[int, bytes] = {
            block: bytes(-(-VoteLayout.for_block(model, block).dimension // 8))
            for block in range(len(decoder_blocks(model)))
        }
        """What BlockMask serves for each block (packed bits; default: nothing pruned)."""
        self.calls: list[tuple[str, int]] = []
        """(call, index of the session it answered) for every call the participant made."""
        self.sums: list[np.ndarray] = []
        self.signed: list[tuple[int, ...]] = []
        self._lock = threading.Lock()
        self._tasks: list[pb.Task] = []
        self._sequence = 0
        self._session = -1
        self._site_key: bytes | None = None
        self._server: SecAggServer | None = None
        self._peers: dict[int, SecAggClient] = {}
        self._current: Session | None = None
        self._sid = b""

    # ------------------------------------------------------------------ what the participant calls
    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        with self._lock:
            self.calls.append(("Join", self._session))
            self._site_key = bytes(request.identity_public_key)
            return pb.JoinReply(run=self.run, participant_id=SITE_ID, name=SITE)

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task:
        with self._lock:
            self.calls.append(("Await", self._session))
            if len(self.calls) > MAX_CALLS:
                # The site refused a task and keeps waiting: the script is over.
                return self._task(run_aborted=pb.RunAborted(run_id=RUN_ID, reason="script over"))
            if not self._tasks:
                if self._current is None and self._session + 1 < len(self.script):
                    self._start(self.script[self._session + 1])
                elif self._current is None:
                    return self._task(run_complete=pb.RunComplete(run_id=RUN_ID))
                else:
                    return self._task(wait=pb.Wait(retry_after_ms=10, reason="waiting"))
            return self._tasks.pop(0)

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        with self._lock:
            self.calls.append(("AdvertiseKeys", self._session))
            server = self._require_server()
            server.receive_advertisement(convert.key_advertisement_from_proto(request.advertisement))
            assert self._current is not None
            if self._current.abort_after_advertise:
                self._end()
                self._push(run_aborted=pb.RunAborted(run_id=RUN_ID, reason="coordinator stopped"))
                return
            for peer in self._peers.values():
                server.receive_advertisement(peer.advertise_keys())
            roster = server.close_advertisements()
            self._roster = roster
            self._sid = server.session_id
            self._push(
                share_keys=pb.ShareKeysTask(session=self._ref(), roster=convert.roster_to_proto(roster))
            )

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        with self._lock:
            self.calls.append(("ShareKeys", self._session))
            server = self._require_server()
            server.receive_shares(convert.share_keys_from_proto(request.share_keys))
            for peer in self._peers.values():
                server.receive_shares(peer.share_keys(self._roster))
            deliveries = server.close_shares()
            for pid, peer in self._peers.items():
                peer.receive_shares(deliveries[pid])
            self._push(
                masked_input=pb.MaskedInputTask(
                    session=self._ref(), delivery=convert.share_delivery_to_proto(deliveries[SITE_ID])
                )
            )

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        return self.masked_input_stream(parts())

    def masked_input_stream(self, parts: Iterator[pb.MaskedInputPart]) -> pb.MaskedInputReply:
        with self._lock:
            self.calls.append(("MaskedInput", self._session))
            server = self._require_server()
            for part in parts:
                if part.WhichOneof("part") == "chunk":
                    server.receive_masked_chunk(convert.masked_input_chunk_from_proto(part.chunk))
                else:
                    server.receive_masked_done(convert.masked_input_done_from_proto(part.done))
            assert self._current is not None
            absent = {pid for pid, name in self._names.items() if name in self._current.absent}
            params = server.parameters
            for pid, peer in self._peers.items():
                if pid in absent:
                    continue
                votes = np.random.default_rng(pid).integers(0, 2, params.dimension).astype(np.uint8)
                for message in peer.masked_input(votes):
                    if isinstance(message, MaskedInputChunk):
                        server.receive_masked_chunk(message)
                    else:
                        server.receive_masked_done(message)
            check = server.close_masked_input()
            self._check = check
            self._push(
                sign_survivors=pb.SignSurvivorsTask(
                    session=self._ref(), check=convert.consistency_check_to_proto(check)
                )
            )
            return pb.MaskedInputReply(chunks_received=params.chunk_count)

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None:
        with self._lock:
            self.calls.append(("SignSurvivors", self._session))
            server = self._require_server()
            server.receive_survivor_signature(convert.survivor_signature_from_proto(request.signature))
            self.signed.append(tuple(self._check.survivors))
            for pid in self._check.survivors:
                if pid in self._peers:
                    server.receive_survivor_signature(self._peers[pid].sign_survivors(self._check))
            unmask = server.close_signatures()
            self._unmask_request = unmask
            assert self._current is not None
            if self._current.other_survivors_at_unmask:
                unmask = UnmaskRequest(
                    session_id=unmask.session_id,
                    survivors=unmask.survivors[1:],
                    dropped=tuple(sorted(unmask.dropped + unmask.survivors[:1])),
                    signatures=unmask.signatures,
                )
            self._push(
                unmask=pb.UnmaskTask(session=self._ref(), request=convert.unmask_request_to_proto(unmask))
            )

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        with self._lock:
            self.calls.append(("Unmask", self._session))
            server = self._require_server()
            server.receive_unmask(convert.unmask_response_from_proto(request.response))
            for signature in self._unmask_request.signatures:
                if signature.sender in self._peers:
                    server.receive_unmask(self._peers[signature.sender].unmask(self._unmask_request))
            self.sums.append(server.finalize().keep_votes.copy())
            self._end()

    def block_mask(self, request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]:
        with self._lock:
            self.calls.append(("BlockMask", self._session))
            block = int(request.block)
            layout = VoteLayout.for_block(self.model, block)
            mask = convert.block_mask_of(
                block, self.masks[block], bit_count=layout.dimension, layout_fingerprint=layout.fingerprint()
            )
            return convert.block_mask_to_chunks(mask)

    def published_view(self, block: int, *, allocation_session: bool = False) -> bytes:
        """Return the view an honest coordinator binds in a session of ``block``: what it serves."""
        if allocation_session:
            return NOTHING_PUBLISHED
        owl = self.run.HasField("owl") and self.allocation is not None
        return published_view(
            allocation=self.allocation if owl else None,
            blocks=[(hashlib.sha256(self.masks[b]).digest(), None) for b in range(block)],
        )

    def owl_allocation(self, request: pb.OwlAllocationRequest) -> pb.OwlAllocationReply:
        with self._lock:
            self.calls.append(("OwlAllocation", self._session))
            if self.allocation is None:
                raise grpc.RpcError("no allocation")
            return pb.OwlAllocationReply(sparsities=self.allocation)

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        raise AssertionError("the scripted run never asks for a statement")

    # ------------------------------------------------------------------ what the test reads
    def sent(self, call: str) -> list[int]:
        """Return the sessions for which the participant made ``call``."""
        return [session for name, session in self.calls if name == call]

    # ------------------------------------------------------------------ scripting
    def _task(self, **kind: Any) -> pb.Task:
        self._sequence += 1
        return pb.Task(sequence=self._sequence, **kind)

    def _push(self, **kind: Any) -> None:
        self._tasks.append(self._task(**kind))

    def _ref(self) -> pb.SessionRef:
        assert self._current is not None
        return pb.SessionRef(run_id=RUN_ID, block=self._current.block, session_id=self._sid)

    def _require_server(self) -> SecAggServer:
        if self._server is None:
            raise grpc.RpcError("no session in progress")
        return self._server

    def _identity(self, owner: str) -> Ed25519PublicKey:
        if owner == SITE:
            assert self._site_key is not None
            return Ed25519PublicKey.from_public_bytes(self._site_key)
        return self.keys[owner].public_key()

    def _start(self, session: Session) -> None:
        self._session += 1
        self._current = session
        self._sid = b""
        run = self.run
        dimension = VoteLayout.for_block(self.model, min(session.block, run.blocks - 1)).dimension
        self._names = {pid: name for name, pid, _ in session.members}
        owners = {pid: owner for _, pid, owner in session.members}
        threshold = session.threshold or run.threshold
        colluders = run.colluders if session.colluders is None else session.colluders
        parameters = SessionParameters(
            participant_ids=tuple(sorted(owners)),
            threshold=threshold,
            colluders=colluders,
            dimension=session.dimension or dimension,
            context=SessionContext.fresh(
                run_id=RUN_ID.hex(),
                round=session.block if session.context_round is None else session.context_round,
                block=session.block if session.context_block is None else session.context_block,
                published=(
                    self.published_view(
                        session.block, allocation_session=session.context_round == OWL_ALLOCATION_ROUND
                    )
                    if session.published is None
                    else session.published
                ),
            ).encode(),
            chunk_coordinates=session.chunk_coordinates or run.chunk_coordinates,
            max_input=session.max_input or run.max_input,
            **({} if session.max_bit_width is None else {"max_bit_width": session.max_bit_width}),
            # The coordinator may try anything; the site must refuse it. (The flag is in the digest, so an
            # honest-looking session leaves it off.)
            allow_unsafe_threshold=threshold < minimum_threshold(len(owners), colluders=colluders),
        )
        identity_keys = {pid: self._identity(owner) for pid, owner in owners.items()}
        self._server = SecAggServer(parameters=parameters, identity_keys=identity_keys)
        self._peers = {}
        for pid, owner in owners.items():
            if owner == SITE:
                continue
            # One key under several ids makes no peer: the site must refuse before any peer would act.
            with contextlib.suppress(ValueError):
                self._peers[pid] = SecAggClient(
                    participant=pid,
                    parameters=parameters,
                    identity_key=self.keys[owner],
                    identity_keys=identity_keys,
                    history=SessionHistory(),
                )
        wire = convert.session_parameters_to_proto(parameters)
        members_pb = [
            pb.Member(participant_id=pid, name=name, identity_public_key=raw_public_key(identity_keys[pid]))
            for name, pid, _ in session.members
        ]
        self._push(start_session=pb.StartSession(session=self._ref(), parameters=wire, members=members_pb))

    def _end(self) -> None:
        if self._server is not None:
            self._server.close()
        self._server = None
        self._current = None
        self._peers = {}


class HostileServicer(service_pb2_grpc.CoordinatorServicer):
    """``HostileCoordinator`` behind the generated gRPC service (for a ``fedprune participant`` process)."""

    def __init__(self, coordinator: HostileCoordinator) -> None:
        self.coordinator = coordinator

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        return self.coordinator.join(request)

    def Await(self, request: pb.AwaitRequest, context: grpc.ServicerContext) -> pb.Task:  # noqa: N802
        return self.coordinator.await_task(request.run_id, max_wait_s=request.max_wait_ms / 1000)

    def AdvertiseKeys(self, request: Any, context: grpc.ServicerContext) -> pb.AdvertiseKeysReply:  # noqa: N802
        self.coordinator.advertise_keys(request)
        return pb.AdvertiseKeysReply()

    def ShareKeys(self, request: Any, context: grpc.ServicerContext) -> pb.ShareKeysReply:  # noqa: N802
        self.coordinator.share_keys(request)
        return pb.ShareKeysReply()

    def MaskedInput(self, request_iterator: Any, context: grpc.ServicerContext) -> pb.MaskedInputReply:  # noqa: N802
        return self.coordinator.masked_input_stream(request_iterator)

    def SignSurvivors(self, request: Any, context: grpc.ServicerContext) -> pb.SignSurvivorsReply:  # noqa: N802
        self.coordinator.sign_survivors(request)
        return pb.SignSurvivorsReply()

    def Unmask(self, request: Any, context: grpc.ServicerContext) -> pb.UnmaskReply:  # noqa: N802
        self.coordinator.unmask(request)
        return pb.UnmaskReply()

    def BlockMask(
        self, request: pb.BlockMaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BlockMaskChunk]:  # noqa: N802
        yield from self.coordinator.block_mask(request, max_bytes=0)
