"""Whole sessions in one process: real keys, real envelopes, real masks, no transport.

`run_session` plays every participant and the server, optionally making participants drop out at a
chosen point, and returns the server (with its recorded view) and the clients for inspection.
`aggregate_in_process` is the plain entry point for simulators.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.errors import PrivacyError, ProtocolAbort
from privacy.secagg.client import SecAggClient
from privacy.secagg.history import SessionHistory
from privacy.secagg.messages import MaskedInputChunk
from privacy.secagg.parameters import (
    DEFAULT_CHUNK_COORDINATES,
    MAX_BIT_WIDTH,
    SessionContext,
    SessionParameters,
    resolve_threshold,
)
from privacy.secagg.server import AggregateResult, SecAggServer

logger = logging.getLogger(__name__)


class DropPoint(enum.Enum):
    """Where a simulated participant goes silent (it sends nothing from that point on)."""

    BEFORE_ADVERTISE_KEYS = "before_advertise_keys"
    BEFORE_SHARE_KEYS = "before_share_keys"
    BEFORE_MASKED_INPUT = "before_masked_input"
    MID_MASKED_INPUT = "mid_masked_input"  # sends the first max(1, chunks // 2) chunks, never the digest
    BEFORE_SIGNING = "before_signing"  # masked input complete, never signs the survivor set
    BEFORE_UNMASK = "before_unmask"  # signed the survivor set, never answers the unmask request


@dataclass
class SessionRun:
    """What a simulated session produced: the result or the abort, and every party for inspection."""

    result: AggregateResult | None
    abort: ProtocolAbort | None
    server: SecAggServer
    clients: dict[int, SecAggClient]

    def contributors(self) -> tuple[int, ...]:
        """Return the participants whose masked input is in the sum (empty after an abort)."""
        return self.result.contributors if self.result is not None else ()


def identity_keys_for(
    participant_ids: Sequence[int],
) -> tuple[dict[int, Ed25519PrivateKey], dict[int, Ed25519PublicKey]]:
    """Return fresh long-term Ed25519 identities (private, public) for simulated participants."""
    private = {p: Ed25519PrivateKey.generate() for p in participant_ids}
    return private, {p: key.public_key() for p, key in private.items()}


def run_session(
    parameters: SessionParameters,
    keep_votes: Mapping[int, np.ndarray],
    *,
    drops: Mapping[int, DropPoint] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    record_masked_payloads: bool = False,
    identities: tuple[Mapping[int, Ed25519PrivateKey], Mapping[int, Ed25519PublicKey]] | None = None,
    histories: Mapping[int, SessionHistory] | None = None,
    names: Mapping[int, str] | None = None,
) -> SessionRun:
    """Return a SessionRun after playing one whole session among parameters.participant_ids.

    `histories` carries participants' SessionHistory across sessions (fresh ones by default); `names`
    names the people behind the ids in those histories (`SecAggClient`'s `identity_names`). A
    ProtocolAbort raised by the server (fewer than `threshold` left) is caught and returned in
    `abort`; every other error propagates.
    """
    drops = dict(drops or {})
    ids = parameters.participant_ids
    private, public = identities if identities is not None else identity_keys_for(ids)
    clients = {
        p: SecAggClient(
            participant=p,
            parameters=parameters,
            identity_key=private[p],
            identity_keys=public,
            identity_names=names,
            history=histories[p] if histories is not None and p in histories else SessionHistory(),
        )
        for p in ids
    }
    server = SecAggServer(
        parameters=parameters,
        identity_keys=public,
        workdir=workdir,
        record_masked_payloads=record_masked_payloads,
    )

    def active(party: int, stage: DropPoint) -> bool:
        point = drops.get(party)
        order = list(DropPoint)
        return point is None or order.index(point) > order.index(stage)

    try:
        for p in ids:
            if active(p, DropPoint.BEFORE_ADVERTISE_KEYS):
                server.receive_advertisement(clients[p].advertise_keys())
        roster = server.close_advertisements()
        for p in ids:
            if active(p, DropPoint.BEFORE_SHARE_KEYS) and any(
                a.participant == p for a in roster.advertisements
            ):
                server.receive_shares(clients[p].share_keys(roster))
        for p, delivery in server.close_shares().items():
            clients[p].receive_shares(delivery)
        for p in server.share_holders:
            if not active(p, DropPoint.BEFORE_MASKED_INPUT):
                continue
            stream = clients[p].masked_input(keep_votes[p])
            if not active(p, DropPoint.MID_MASKED_INPUT):
                for _ in range(max(1, parameters.chunk_count // 2)):
                    message = next(stream)
                    assert isinstance(message, MaskedInputChunk)
                    server.receive_masked_chunk(message)
                continue
            for message in stream:
                if isinstance(message, MaskedInputChunk):
                    server.receive_masked_chunk(message)
                else:
                    server.receive_masked_done(message)
        check = server.close_masked_input()
        for p in check.survivors:
            if active(p, DropPoint.BEFORE_SIGNING):
                server.receive_survivor_signature(clients[p].sign_survivors(check))
        request = server.close_signatures()
        for signature in request.signatures:
            if active(signature.sender, DropPoint.BEFORE_UNMASK):
                server.receive_unmask(clients[signature.sender].unmask(request))
        result = server.finalize()
    except ProtocolAbort as exc:
        server.close()
        return SessionRun(result=None, abort=exc, server=server, clients=clients)
    return SessionRun(result=result, abort=None, server=server, clients=clients)


def _validated_inputs(vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(vectors) == 0:
        raise PrivacyError("aggregate_in_process needs at least one vector")
    arrays = [np.asarray(v) for v in vectors]
    shape = arrays[0].shape
    for index, array in enumerate(arrays):
        if array.ndim != 1 or array.shape != shape or array.size == 0:
            raise PrivacyError(f"vector {index} must be 1-D, non-empty and as long as the others")
        if array.dtype != np.bool_ and array.dtype.kind not in "iu":
            raise PrivacyError(f"vector {index} must hold integers or booleans, got {array.dtype}")
        if array.dtype.kind == "i" and int(array.min()) < 0:
            raise PrivacyError(f"vector {index} has negative entries")
    return arrays


def aggregate_in_process(
    vectors: Sequence[np.ndarray],
    *,
    threshold: int | None = None,
    chunk_coordinates: int = DEFAULT_CHUNK_COORDINATES,
    drop_before_masked_input: Collection[int] = (),
    workdir: str | os.PathLike[str] | None = None,
    context: SessionContext | None = None,
    colluders: int = 0,
    max_input: int | None = None,
    max_bit_width: int = MAX_BIT_WIDTH,
) -> np.ndarray:
    """Return the exact per-coordinate sums (int64) of `vectors`, computed by a full secure aggregation.

    Participant i (0-based position in `vectors`) takes id i + 1. Inputs are 0/1 keep-votes or small
    non-negative integers; the session's max_input is the largest entry (at least 1) unless the caller
    gives a public bound `max_input` (it must, when the largest entry would itself reveal something, as
    for fixed-point values), which sets the ring width b = ceil(log2(2 * n * max_input + 1)), at most
    `max_bit_width` (16 by default; up to 64 for a wide ring). `threshold` defaults to
    `default_threshold(n, colluders=colluders)` (1 for a lone participant, where the sum is that
    participant's input and nothing can be hidden); an explicit one must satisfy t > (n + colluders)/2
    and is checked before anything runs. `context` defaults to a fresh one (run id "in-process", a new
    nonce); callers that run several sessions pass their own run, round and block.
    `chunk_coordinates` must be a multiple of 64. Participants at the positions in
    `drop_before_masked_input` go silent after sharing their keys; the result is then the sum over the
    others, or InsufficientParticipantsError (a ProtocolAbort) when fewer than `threshold` remain.
    `workdir` puts the server's accumulator (memory-mapped) and upload spools in files there.
    """
    arrays = _validated_inputs(vectors)
    n, dimension = len(arrays), arrays[0].size
    resolved = resolve_threshold(threshold, participants=n, colluders=colluders)
    dropped = set(drop_before_masked_input)
    if not dropped <= set(range(n)):
        raise PrivacyError(f"drop_before_masked_input must hold positions in [0, {n})")
    largest = max(1, *(int(a.max()) for a in arrays))
    if max_input is None:
        max_input = largest
    elif largest > max_input:
        raise PrivacyError(f"an input entry ({largest}) exceeds max_input ({max_input})")
    ids = tuple(range(1, n + 1))
    if context is None:
        context = SessionContext.fresh(run_id="in-process", round=0, block=0)
    parameters = SessionParameters(
        participant_ids=ids,
        threshold=resolved,
        dimension=dimension,
        chunk_coordinates=chunk_coordinates,
        max_input=max_input,
        context=context.encode(),
        colluders=colluders,
        max_bit_width=max_bit_width,
    )
    if n == 1:
        logger.warning(
            "secure aggregation with a single participant: the sum is its input, nothing is hidden"
        )
    run = run_session(
        parameters,
        {p: arrays[p - 1] for p in ids},
        drops={p + 1: DropPoint.BEFORE_MASKED_INPUT for p in dropped},
        workdir=workdir,
    )
    if run.abort is not None:
        raise run.abort
    assert run.result is not None
    return run.result.keep_votes.astype(np.int64)
