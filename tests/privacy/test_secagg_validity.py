"""What one cheating participant can do to a count (issue 10, finding 2), end to end.

A participant may submit any ring element r in Z_(2^b) per coordinate instead of a 0/1 vote. The server
sees only the sum, which stays consistent with a valid world whenever the honest count H absorbs the
shift, so no check on sums can stop "negative votes" that stay in range. What the ring's headroom bit
guarantees (docs/SECURE_AGGREGATION.md): every accepted count is H + delta with delta the signed value
of r and 0 <= H + delta <= n'; a shift that would leave [0, n'] never wraps into range unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    InvalidAggregateError,
    SecAggClient,
    SecAggServer,
    SessionContext,
    SessionHistory,
    SessionParameters,
    ring_bit_width,
)
from privacy.secagg.messages import MaskedInputChunk, MaskedInputDone, chunk_hash, stream_digest
from privacy.secagg.packing import BitPacker

CHEATER = 1


def session_with_a_cheater(
    honest_votes: dict[int, np.ndarray],
    residues: np.ndarray,
) -> np.ndarray | InvalidAggregateError:
    """Return the published counts (or the InvalidAggregateError) when participant 1 adds `residues`.

    The cheater runs the real client (votes all zero) and adds its residues to every masked chunk before
    sending, with a matching stream digest: nothing in its messages differs from an honest one's.
    """
    ids = (CHEATER, *sorted(honest_votes))
    n = len(ids)
    dimension = residues.size
    params = SessionParameters(
        participant_ids=ids,
        threshold=n // 2 + 1,
        dimension=dimension,
        chunk_coordinates=64,
        context=SessionContext.fresh(run_id="validity", round=0, block=0).encode(),
    )
    private = {p: Ed25519PrivateKey.generate() for p in ids}
    public = {p: k.public_key() for p, k in private.items()}
    clients = {
        p: SecAggClient(
            participant=p,
            parameters=params,
            identity_key=private[p],
            identity_keys=public,
            history=SessionHistory(),
        )
        for p in ids
    }
    server = SecAggServer(parameters=params, identity_keys=public)
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    for p, delivery in server.close_shares().items():
        clients[p].receive_shares(delivery)
    packer = BitPacker(params.bit_width, params.chunk_coordinates)
    hashes = []
    clients[CHEATER].bind_votes(np.zeros(params.dimension, dtype=np.uint8))
    for index in range(params.chunk_count):
        start, count = index * 64, params.chunk_length(index)
        chunk = clients[CHEATER].masked_chunk(index)
        lanes = packer.unpack(np.frombuffer(chunk.payload, dtype=np.uint8)).copy()
        lanes[:count] += residues[start : start + count].astype(lanes.dtype)
        payload = packer.pack(lanes).tobytes()
        hashes.append(chunk_hash(index, payload))
        server.receive_masked_chunk(
            MaskedInputChunk(
                session_id=chunk.session_id, participant=CHEATER, chunk_index=index, payload=payload
            )
        )
    clients[CHEATER].finish_masked_input()
    server.receive_masked_done(
        MaskedInputDone(
            session_id=server.session_id,
            participant=CHEATER,
            chunk_count=len(hashes),
            digest=stream_digest(session_id=server.session_id, participant=CHEATER, chunk_hashes=hashes),
        )
    )
    for p, votes in honest_votes.items():
        for message in clients[p].masked_input(votes):
            if isinstance(message, MaskedInputChunk):
                server.receive_masked_chunk(message)
            else:
                server.receive_masked_done(message)
    check = server.close_masked_input()
    for p in check.survivors:
        server.receive_survivor_signature(clients[p].sign_survivors(check))
    request = server.close_signatures()
    for p in request.survivors:
        server.receive_unmask(clients[p].unmask(request))
    try:
        return server.finalize().keep_votes.astype(np.int64)
    except InvalidAggregateError as exc:
        return exc


def signed(residues: np.ndarray, modulus: int) -> np.ndarray:
    """Return the representatives of `residues` in (-modulus/2, modulus/2]."""
    values = residues.astype(np.int64) % modulus
    return np.where(values > modulus // 2, values - modulus, values)


def test_negative_votes_lower_counts_undetected_while_the_honest_count_absorbs_them() -> None:
    # The corrected claim of SECURITY.md: a cheater is not limited to its own 0/1 vote. Subtracting 2
    # where at least two honest participants voted 1 goes through, and the count drops by 2.
    honest = {p: np.ones(128, dtype=np.uint8) for p in (2, 3, 4, 5)}
    modulus = 1 << ring_bit_width(5)
    counts = session_with_a_cheater(honest, np.full(128, modulus - 2, dtype=np.int64))
    assert isinstance(counts, np.ndarray) and (counts == 4 - 2).all()


@pytest.mark.parametrize("n", [3, 4, 7, 8])
def test_a_subtraction_larger_than_the_honest_count_is_detected_for_every_n(n: int) -> None:
    # Before the headroom bit, n = 3 or 7 filled the ring (2^b = n + 1): -1 on a coordinate nobody
    # voted for wrapped to n and passed as "everyone keeps this weight". Now it is always caught.
    rng = np.random.default_rng(n)
    honest = {p: rng.integers(0, 2, 256).astype(np.uint8) for p in range(2, n + 1)}
    honest_count = np.sum(list(honest.values()), axis=0)
    honest_count[:8] = 0  # make sure some coordinates have no honest keep-vote
    for p in honest:
        honest[p][:8] = 0
    shift = n - 1
    modulus = 1 << ring_bit_width(n)
    outcome = session_with_a_cheater(honest, np.full(256, modulus - shift, dtype=np.int64))
    assert isinstance(outcome, InvalidAggregateError)
    assert outcome.invalid_coordinates == int(np.sum(honest_count < shift))
    assert outcome.first_invalid_index == 0


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_accepted_count_is_the_honest_count_plus_an_in_range_signed_shift(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 8), label="n")
    modulus = 1 << ring_bit_width(n)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    dimension = 128
    honest = {p: rng.integers(0, 2, dimension).astype(np.uint8) for p in range(2, n + 1)}
    # Mostly small shifts of either sign (the interesting ones), sometimes anything in the ring.
    small = rng.integers(-n, n + 1, dimension)
    residues = np.where(rng.random(dimension) < 0.8, small, rng.integers(0, modulus, dimension)) % modulus
    honest_count = np.sum(list(honest.values()), axis=0).astype(np.int64)
    shifted = honest_count + signed(residues, modulus)
    outcome = session_with_a_cheater(honest, residues)
    out_of_range = (shifted < 0) | (shifted > n)
    if out_of_range.any():
        assert isinstance(outcome, InvalidAggregateError)
        assert outcome.invalid_coordinates == int(out_of_range.sum())
    else:
        assert isinstance(outcome, np.ndarray)
        assert np.array_equal(outcome, shifted)  # no wrap-around: the count moved by exactly the signed shift
