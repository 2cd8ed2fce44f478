"""A whole session in one process: real keys, real envelopes, real masks, no transport."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.errors import PrivacyError
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import MaskedInputChunk
from privacy.secagg.parameters import DEFAULT_CHUNK_COORDINATES, SessionParameters, default_threshold
from privacy.secagg.server import SecAggServer

logger = logging.getLogger(__name__)

IN_PROCESS_CHUNK_COORDINATES = DEFAULT_CHUNK_COORDINATES


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


def aggregate_in_process(vectors: Sequence[np.ndarray], *, threshold: int | None = None,
                         chunk_coordinates: int = IN_PROCESS_CHUNK_COORDINATES,
                         drop_before_masked_input: Collection[int] = (),
                         workdir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Return the exact per-coordinate sums (int64) of `vectors`, computed by a full secure aggregation.

    Participant i (0-based position in `vectors`) takes id i + 1. Inputs are 0/1 keep-votes or small
    non-negative integers; the session's max_input is the largest entry (at least 1), which sets the
    ring width b = ceil(log2(n * max_input + 1)). `threshold` defaults to floor(2n/3) + 1 (1 for a lone
    participant, where the sum is that participant's input and no privacy is possible).
    Participants at the positions in `drop_before_masked_input` go silent after sharing their keys; the
    result is then the sum over the others, or InsufficientParticipantsError (a ProtocolAbort) when fewer
    than `threshold` remain. `workdir` puts the server's accumulator and spools in files there.
    """
    arrays = _validated_inputs(vectors)
    n, dimension = len(arrays), arrays[0].size
    dropped = set(drop_before_masked_input)
    if not dropped <= set(range(n)):
        raise PrivacyError(f"drop_before_masked_input must hold positions in [0, {n})")
    max_input = max(1, *(int(a.max()) for a in arrays))
    ids = tuple(range(1, n + 1))
    parameters = SessionParameters(
        participant_ids=ids, threshold=default_threshold(n) if threshold is None else threshold,
        dimension=dimension, chunk_coordinates=chunk_coordinates, max_input=max_input)
    if n == 1:
        logger.warning("secure aggregation with a single participant: the sum is its input, nothing is hidden")
    identity = {p: Ed25519PrivateKey.generate() for p in ids}
    public = {p: key.public_key() for p, key in identity.items()}
    clients = {p: SecAggClient(participant=p, parameters=parameters, identity_key=identity[p],
                               identity_keys=public) for p in ids}
    with SecAggServer(parameters=parameters, identity_keys=public, workdir=workdir) as server:
        for client in clients.values():
            server.receive_advertisement(client.advertise_keys())
        roster = server.close_advertisements()
        for client in clients.values():
            server.receive_shares(client.share_keys(roster))
        for party, delivery in server.close_shares().items():
            clients[party].receive_shares(delivery)
        for position, party in enumerate(ids):
            if position in dropped:
                continue
            for message in clients[party].masked_input(arrays[position]):
                if isinstance(message, MaskedInputChunk):
                    server.receive_masked_chunk(message)
                else:
                    server.receive_masked_done(message)
        request = server.close_masked_input()
        for party in request.survivors:
            server.receive_unmask(clients[party].unmask(request))
        result = server.finalize()
    return result.keep_votes.astype(np.int64)
