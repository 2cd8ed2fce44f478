"""The SecAgg rounds end to end: the unmasked sum is the plain sum over the participants whose masked
input arrived, whoever drops where, as long as `threshold` remain; otherwise a clean abort."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import event, given, settings
from hypothesis import strategies as st

from privacy.errors import PrivacyError, ProtocolAbort
from privacy.secagg import (
    ClientState,
    DropPoint,
    InsufficientParticipantsError,
    InvalidAggregateError,
    InvalidMessageError,
    SecAggClient,
    SecAggServer,
    ServerState,
    SessionContext,
    SessionHistory,
    SessionParameters,
    WrongStateError,
    aggregate_in_process,
    default_threshold,
    run_session,
)
from privacy.secagg.messages import MaskedInputChunk, MaskedInputDone, chunk_hash, stream_digest
from privacy.secagg.packing import BitPacker

STAGES = list(DropPoint)
COUNTED_STAGES = (DropPoint.BEFORE_SIGNING, DropPoint.BEFORE_UNMASK)  # after the digest: input is in the sum


def fresh_context(block: int = 0) -> bytes:
    return SessionContext.fresh(run_id="test-protocol", round=0, block=block).encode()


def expected_outcome(
    ids: tuple[int, ...],
    threshold: int,
    drops: dict[int, DropPoint],
) -> tuple[int, ...] | None:
    """Return the contributors a correct session ends with, or None when it must abort."""
    remaining = set(ids)
    contributors: tuple[int, ...] = ()
    for stage in STAGES:
        if stage is COUNTED_STAGES[0]:
            contributors = tuple(sorted(remaining))
        remaining -= {p for p, point in drops.items() if point is stage}
        if len(remaining) < threshold:
            return None
    return contributors


def random_votes(
    rng: np.random.Generator,
    ids: tuple[int, ...],
    dimension: int,
    max_input: int,
) -> dict[int, np.ndarray]:
    return {
        p: rng.integers(0, max_input + 1, dimension).astype(np.uint8 if max_input < 256 else np.uint16)
        for p in ids
    }


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_sum_is_the_plain_sum_over_survivors_or_a_clean_abort(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 20), label="n")
    threshold = data.draw(st.integers(n // 2 + 1 if n > 2 else 2, n), label="t")  # t > n/2
    max_input = data.draw(st.sampled_from([1, 1, 2, 7, 15]), label="max_input")  # b from 1 to 9
    dimension = data.draw(st.integers(1, 400), label="d")
    chunk = data.draw(st.sampled_from([64, 128, 256]), label="chunk")
    ids = tuple(range(1, n + 1))
    # Up to one more dropout than the session can absorb, so both outcomes are common.
    dropouts = data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=n - threshold + 1), label="who")
    drops = {p: data.draw(st.sampled_from(STAGES), label=f"where {p}") for p in dropouts}
    params = SessionParameters(
        participant_ids=ids,
        threshold=threshold,
        dimension=dimension,
        chunk_coordinates=chunk,
        max_input=max_input,
        context=fresh_context(),
    )
    votes = random_votes(np.random.default_rng(data.draw(st.integers(0, 2**32))), ids, dimension, max_input)

    run = run_session(params, votes, drops=drops)

    contributors = expected_outcome(ids, threshold, drops)
    event("abort" if contributors is None else f"sum, {len(ids) - len(contributors)} not counted")
    if contributors is None:
        assert isinstance(run.abort, InsufficientParticipantsError)
        assert run.server.state is ServerState.ABORTED
        return
    assert run.abort is None and run.result is not None
    assert run.result.contributors == contributors
    plain = np.sum([votes[p].astype(np.int64) for p in contributors], axis=0)
    assert np.array_equal(run.result.keep_votes, plain)


@pytest.mark.parametrize("point", STAGES)
def test_one_dropout_at_each_round_boundary(point: DropPoint) -> None:
    ids = (1, 2, 3, 4, 5)
    params = SessionParameters(
        participant_ids=ids, threshold=3, dimension=1000, chunk_coordinates=256, context=fresh_context()
    )
    votes = random_votes(np.random.default_rng(7), ids, 1000, 1)
    run = run_session(params, votes, drops={3: point})
    assert run.result is not None
    counted = ids if point in COUNTED_STAGES else (1, 2, 4, 5)
    assert run.result.contributors == counted
    assert np.array_equal(run.result.keep_votes, np.sum([votes[p] for p in counted], axis=0))


def test_mid_stream_dropout_is_rolled_back_out_of_the_sum(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = (1, 2, 3, 4)
    params = SessionParameters(
        participant_ids=ids, threshold=3, dimension=64 * 9, chunk_coordinates=64, context=fresh_context()
    )
    votes = {p: np.ones(64 * 9, dtype=np.uint8) for p in ids}
    run = run_session(params, votes, drops={2: DropPoint.MID_MASKED_INPUT}, workdir=tmp_path)
    assert run.result is not None and run.result.dropped == (2,)
    assert (run.result.keep_votes == 3).all()
    assert list(tmp_path.iterdir()) == []  # accumulator and spools are cleaned up


def test_fewer_than_threshold_survivors_abort_before_anything_is_revealed() -> None:
    ids = (1, 2, 3, 4, 5)
    params = SessionParameters(
        participant_ids=ids, threshold=4, dimension=100, chunk_coordinates=64, context=fresh_context()
    )
    votes = random_votes(np.random.default_rng(1), ids, 100, 1)
    run = run_session(params, votes, drops={1: DropPoint.BEFORE_MASKED_INPUT, 2: DropPoint.MID_MASKED_INPUT})
    assert isinstance(run.abort, InsufficientParticipantsError) and isinstance(run.abort, ProtocolAbort)
    assert "threshold is 4" in str(run.abort)
    assert not any(type(m).__name__ == "UnmaskResponse" for m in run.server.view)
    assert all(c.state is not ClientState.DONE for c in run.clients.values())


def test_aggregate_in_process_sums_votes_and_small_integers() -> None:
    rng = np.random.default_rng(3)
    votes = [rng.integers(0, 2, 3000).astype(bool) for _ in range(7)]
    assert np.array_equal(aggregate_in_process(votes, chunk_coordinates=1024), np.sum(votes, axis=0))
    counts = [rng.integers(0, 5, 100) for _ in range(4)]
    result = aggregate_in_process(counts, chunk_coordinates=64)
    assert result.dtype == np.int64 and np.array_equal(result, np.sum(counts, axis=0))


def test_aggregate_in_process_with_dropouts_and_a_workdir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    votes = [rng.integers(0, 2, 700).astype(np.uint8) for _ in range(9)]
    result = aggregate_in_process(
        votes, chunk_coordinates=128, drop_before_masked_input={0, 5}, workdir=tmp_path
    )
    assert np.array_equal(result, np.sum([v for i, v in enumerate(votes) if i not in (0, 5)], axis=0))
    with pytest.raises(InsufficientParticipantsError):
        aggregate_in_process(votes, chunk_coordinates=128, drop_before_masked_input={0, 1, 2, 3})


def test_a_single_participant_is_allowed_with_threshold_one() -> None:
    vector = np.array([0, 1, 1, 0, 1], dtype=np.uint8)
    assert np.array_equal(aggregate_in_process([vector]), vector)
    assert default_threshold(1) == 1 and default_threshold(2) == 2 and default_threshold(16) == 11


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1}, "threshold must be >= 2"),
        ({"threshold": 6}, "threshold must be in"),
        ({"threshold": 2}, r"threshold must be > \(participants \+ colluders\) / 2"),
        ({"threshold": 3, "colluders": 1}, r"i.e. >= 4 for 5 participants and 1 colluders"),
        ({"chunk_coordinates": 100}, "multiple of 64"),
        ({"max_input": 20000}, "bit width"),
        ({"context": b""}, "SessionContext"),
    ],
)
def test_parameters_are_validated_up_front(kwargs: dict[str, object], match: str) -> None:
    base = {"participant_ids": (1, 2, 3, 4, 5), "threshold": 3, "dimension": 10, "context": fresh_context()}
    with pytest.raises(PrivacyError, match=match):
        SessionParameters(**(base | kwargs))  # type: ignore[arg-type]


def _parties(
    n: int = 3, dimension: int = 200, chunk: int = 64
) -> tuple[SessionParameters, dict[int, SecAggClient], SecAggServer]:
    ids = tuple(range(1, n + 1))
    params = SessionParameters(
        participant_ids=ids,
        threshold=n // 2 + 1,
        dimension=dimension,
        chunk_coordinates=chunk,
        context=fresh_context(),
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
    return params, clients, SecAggServer(parameters=params, identity_keys=public)


def _unmasked(clients: dict[int, SecAggClient], server: SecAggServer):  # type: ignore[no-untyped-def]
    check = server.close_masked_input()
    for p in check.survivors:
        server.receive_survivor_signature(clients[p].sign_survivors(check))
    request = server.close_signatures()
    for p in request.survivors:
        server.receive_unmask(clients[p].unmask(request))
    return server.finalize()


def _to_masking(clients: dict[int, SecAggClient], server: SecAggServer) -> None:
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    for p, delivery in server.close_shares().items():
        clients[p].receive_shares(delivery)


def test_methods_called_in_the_wrong_state_raise() -> None:
    _, clients, server = _parties()
    client = clients[1]
    with pytest.raises(WrongStateError):
        client.finish_masked_input()
    with pytest.raises(WrongStateError):
        server.close_shares()
    with pytest.raises(WrongStateError):
        server.finalize()
    client.advertise_keys()
    with pytest.raises(WrongStateError):
        client.advertise_keys()  # keys are fresh once per session
    assert client.state is ClientState.KEYS_ADVERTISED


def test_a_stream_resumes_from_a_regenerated_chunk_and_rejects_other_votes() -> None:
    params, clients, server = _parties(dimension=300, chunk=64)
    _to_masking(clients, server)
    votes = {p: np.random.default_rng(p).integers(0, 2, 300).astype(np.uint8) for p in clients}
    clients[1].bind_votes(votes[1])
    first = clients[1].masked_chunk(0)
    server.receive_masked_chunk(first)
    with pytest.raises(InvalidMessageError, match="expected 1"):
        server.receive_masked_chunk(first)  # duplicate
    assert clients[1].masked_chunk(0) == first  # seekable: same chunk again
    for message in clients[1].masked_input(votes[1], start_chunk=1):  # resume after chunk 0
        if isinstance(message, MaskedInputChunk):
            server.receive_masked_chunk(message)
        else:
            server.receive_masked_done(message)
    for p in (2, 3):
        for message in clients[p].masked_input(votes[p]):
            (
                server.receive_masked_chunk
                if isinstance(message, MaskedInputChunk)
                else server.receive_masked_done
            )(message)  # type: ignore[operator]
    assert np.array_equal(
        _unmasked(clients, server).keep_votes, sum(v.astype(np.int64) for v in votes.values())
    )


def test_votes_outside_the_range_are_refused_by_the_participant() -> None:
    _, clients, server = _parties(dimension=64)
    _to_masking(clients, server)
    with pytest.raises(PrivacyError, match=r"\[0, 1\]"):
        clients[1].bind_votes(np.full(64, 2, dtype=np.uint8))
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets


def test_binding_other_votes_to_a_session_aborts_the_participant() -> None:
    # Two maskings of one chunk under the same masks would hand the server the votes' difference: a
    # session masks the one vector bound to it, and binding another one aborts.
    _, clients, server = _parties(dimension=128)
    _to_masking(clients, server)
    votes = np.random.default_rng(5).integers(0, 2, 128).astype(np.uint8)
    clients[1].bind_votes(votes)
    clients[1].masked_chunk(0)
    assert clients[1].bind_votes(votes.copy()) == clients[1].votes_digest  # the same vector again is fine
    with pytest.raises(PrivacyError, match="other keep_votes"):
        clients[1].bind_votes(1 - votes)
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets


def test_counts_above_the_number_of_contributors_are_reported_as_invalid_input() -> None:
    # A malicious participant shifts its own masked vector by +2 everywhere (and signs off on it with a
    # matching digest). With 5 participants all voting 1, the ring is Z_8 and 5 + 2 = 7 > 5.
    params, clients, server = _parties(n=5, dimension=128, chunk=64)
    _to_masking(clients, server)
    packer = BitPacker(params.bit_width, params.chunk_coordinates)
    for p, client in clients.items():
        hashes = []
        client.bind_votes(np.ones(params.dimension, dtype=np.uint8))
        for index in range(params.chunk_count):
            chunk = client.masked_chunk(index)
            if p == 1:
                lanes = packer.unpack(np.frombuffer(chunk.payload, dtype=np.uint8)) + np.uint8(2)
                chunk = MaskedInputChunk(
                    session_id=chunk.session_id,
                    participant=1,
                    chunk_index=index,
                    payload=packer.pack(lanes).tobytes(),
                )
            hashes.append(chunk_hash(index, chunk.payload))
            server.receive_masked_chunk(chunk)
        client.finish_masked_input()
        server.receive_masked_done(
            MaskedInputDone(
                session_id=server.session_id,
                participant=p,
                chunk_count=len(hashes),
                digest=stream_digest(session_id=server.session_id, participant=p, chunk_hashes=hashes),
            )
        )
    with pytest.raises(InvalidAggregateError) as caught:
        _unmasked(clients, server)
    assert caught.value.invalid_coordinates == 128 and caught.value.first_invalid_index == 0


def test_a_stream_with_a_wrong_digest_is_rolled_back() -> None:
    params, clients, server = _parties(dimension=128)
    _to_masking(clients, server)
    for message in clients[1].masked_input(np.ones(128, dtype=np.uint8)):
        if isinstance(message, MaskedInputChunk):
            server.receive_masked_chunk(message)
        else:
            with pytest.raises(InvalidMessageError, match="rolled back"):
                server.receive_masked_done(
                    MaskedInputDone(
                        session_id=message.session_id,
                        participant=1,
                        chunk_count=message.chunk_count,
                        digest=bytes(32),
                    )
                )
    for p in (2, 3):
        for message in clients[p].masked_input(np.ones(128, dtype=np.uint8)):
            (
                server.receive_masked_chunk
                if isinstance(message, MaskedInputChunk)
                else server.receive_masked_done
            )(message)  # type: ignore[operator]
    result = _unmasked(clients, server)
    assert result.contributors == (2, 3) and result.dropped == (1,)
    assert (result.keep_votes == 2).all()


def _deterministic_bytes(label: bytes):  # type: ignore[no-untyped-def]
    # Known-answer use only: a SHAKE-256 stream replaces os.urandom so the whole session is reproducible.
    state = {"offset": 0}
    stream = hashlib.shake_256(label).digest(1 << 16)

    def random_bytes(count: int) -> bytes:
        start = state["offset"]
        state["offset"] += count
        return stream[start : start + count]

    return random_bytes


def test_pinned_session_vector_stays_stable_across_versions() -> None:
    # Fixed identities and randomness: pins the parameter digest, session id, HKDF labels, X25519,
    # Shamir sampling, the PRG and the packing all at once (protocol version 3: the context's published
    # view is NOTHING_PUBLISHED here).
    ids = (1, 2, 3)
    params = SessionParameters(
        participant_ids=ids,
        threshold=2,
        dimension=100,
        chunk_coordinates=64,
        context=SessionContext(run_id="pinned", round=1, block=2, nonce=bytes(range(32))).encode(),
    )
    private = {p: Ed25519PrivateKey.from_private_bytes(bytes([p]) * 32) for p in ids}
    public = {p: k.public_key() for p, k in private.items()}
    clients = {
        p: SecAggClient(
            participant=p,
            parameters=params,
            identity_key=private[p],
            identity_keys=public,
            history=SessionHistory(),
            random_bytes=_deterministic_bytes(b"fedprune secagg pinned %d" % p),
        )
        for p in ids
    }
    server = SecAggServer(parameters=params, identity_keys=public)
    _to_masking(clients, server)
    votes = np.arange(100, dtype=np.uint8) % 2
    chunks = list(clients[1].masked_input(votes))
    assert params.digest().hex() == "1523b2f1524236471fa4d32e33d309e112b323503849cf22ce927b26507d7492"
    assert server.session_id.hex() == "a5b1408d3c60928ce8e6efa67edfea8dfab5e5f533ede563e3a0c4376fb62fd4"
    assert hashlib.sha256(
        b"".join(c.payload for c in chunks if isinstance(c, MaskedInputChunk))
    ).hexdigest() == ("4d708f870ee413b85f89de945080d0a71a7383db2c904dc0224e6db3c2c6fbe8")
