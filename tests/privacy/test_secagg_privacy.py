"""What the coordinator can and cannot learn: masked vectors look uniform whatever the input, the
server never holds both kinds of share for one participant, and forged or tampered messages are refused.

Statistical tests use real OS randomness and a significance level of 1e-6, so a false alarm is a
one-in-a-million event; each test also shows it has the power to catch an unmasked input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from privacy.secagg import (
    AuthenticationError,
    ClientState,
    DropPoint,
    InconsistentViewError,
    InsufficientParticipantsError,
    InvalidMessageError,
    SecAggClient,
    SecAggServer,
    SessionContext,
    SessionHistory,
    SessionParameters,
    WrongStateError,
    run_session,
)
from privacy.secagg.messages import (
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputChunk,
    RevealedShare,
    Roster,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.packing import BitPacker

ALPHA = 1e-6
IDS = (1, 2, 3, 4, 5, 6)  # n = 6: ring Z_8 (b = 3)
DIMENSION = 1 << 15


def fresh_context() -> bytes:
    return SessionContext.fresh(run_id="test-privacy", round=0, block=0).encode()


def masked_values(votes_of_participant_1: np.ndarray) -> np.ndarray:
    """Return participant 1's masked vector as the server received it, unpacked to ring elements."""
    params = SessionParameters(
        participant_ids=IDS,
        threshold=4,
        dimension=DIMENSION,
        chunk_coordinates=1 << 12,
        context=fresh_context(),
    )
    rng = np.random.default_rng()
    votes = {p: rng.integers(0, 2, DIMENSION).astype(np.uint8) for p in IDS}
    votes[1] = votes_of_participant_1
    run = run_session(params, votes, record_masked_payloads=True)
    assert run.result is not None
    packer = BitPacker(params.bit_width, DIMENSION)
    payload = b"".join(
        m.payload for m in run.server.view if isinstance(m, MaskedInputChunk) and m.participant == 1
    )
    return packer.unpack(np.frombuffer(payload, dtype=np.uint8)).astype(np.int64)


def uniformity_p_value(values: np.ndarray, bit_width: int = 3) -> float:
    return float(stats.chisquare(np.bincount(values, minlength=1 << bit_width)).pvalue)


def same_distribution_p_value(a: np.ndarray, b: np.ndarray, bit_width: int = 3) -> float:
    table = np.stack([np.bincount(a, minlength=1 << bit_width), np.bincount(b, minlength=1 << bit_width)])
    table = table[:, table.sum(axis=0) > 0]  # values neither sample took carry no information
    return float(stats.chi2_contingency(table).pvalue)


def test_masked_vector_is_uniform_over_the_ring() -> None:
    votes = np.random.default_rng().integers(0, 2, DIMENSION).astype(np.uint8)
    assert uniformity_p_value(masked_values(votes)) > ALPHA
    assert uniformity_p_value(votes.astype(np.int64)) < ALPHA  # the test would catch an unmasked input


def test_masked_vector_does_not_depend_on_the_input() -> None:
    all_zero = masked_values(np.zeros(DIMENSION, dtype=np.uint8))
    all_one = masked_values(np.ones(DIMENSION, dtype=np.uint8))
    assert uniformity_p_value(all_zero) > ALPHA and uniformity_p_value(all_one) > ALPHA
    assert same_distribution_p_value(all_zero, all_one) > ALPHA
    # Within one vector too: coordinates voted 0 and coordinates voted 1 look alike.
    votes = np.random.default_rng().integers(0, 2, DIMENSION).astype(np.uint8)
    masked = masked_values(votes)
    assert same_distribution_p_value(masked[votes == 0], masked[votes == 1]) > ALPHA
    # Power check: a mask drawn from only half the ring leaks the vote, and the test sees it.
    leaky = votes.astype(np.int64) + np.random.default_rng().integers(0, 4, DIMENSION)
    assert same_distribution_p_value(leaky[votes == 0], leaky[votes == 1]) < ALPHA


@pytest.mark.parametrize(
    "drops",
    [
        {},
        {2: DropPoint.BEFORE_MASKED_INPUT},
        {2: DropPoint.MID_MASKED_INPUT, 5: DropPoint.BEFORE_MASKED_INPUT},
        {3: DropPoint.BEFORE_SHARE_KEYS, 6: DropPoint.MID_MASKED_INPUT},
        {4: DropPoint.BEFORE_UNMASK, 6: DropPoint.MID_MASKED_INPUT},
        {5: DropPoint.BEFORE_SIGNING, 6: DropPoint.BEFORE_MASKED_INPUT},
    ],
)
def test_server_view_never_holds_both_share_kinds_for_one_participant(drops: dict[int, DropPoint]) -> None:
    params = SessionParameters(
        participant_ids=IDS, threshold=4, dimension=300, chunk_coordinates=64, context=fresh_context()
    )
    votes = {p: np.ones(300, dtype=np.uint8) for p in IDS}
    run = run_session(params, votes, drops=drops)
    assert run.result is not None
    kinds: dict[int, set[str]] = {}
    for message in run.server.view:
        if isinstance(message, UnmaskResponse):
            for share in message.self_seed_shares:
                kinds.setdefault(share.owner, set()).add("self_seed")
            for share in message.mask_key_shares:
                kinds.setdefault(share.owner, set()).add("mask_key")
    assert all(len(k) == 1 for k in kinds.values())
    assert {p for p, k in kinds.items() if k == {"mask_key"}} == set(run.result.dropped)
    assert {p for p, k in kinds.items() if k == {"self_seed"}} == set(run.result.contributors)
    # Envelopes are all the server ever got of the shares before unmasking: opaque ciphertexts.
    assert not any(isinstance(m, MaskedInputChunk) for m in run.server.view)  # payloads kept by hash only


def _session(n: int = 4) -> tuple[SessionParameters, dict[int, SecAggClient], SecAggServer, dict]:
    ids = tuple(range(1, n + 1))
    params = SessionParameters(
        participant_ids=ids, threshold=3, dimension=128, chunk_coordinates=64, context=fresh_context()
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
    return params, clients, SecAggServer(parameters=params, identity_keys=public), private


def _shared(clients: dict[int, SecAggClient], server: SecAggServer) -> dict[int, ShareDelivery]:
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    return server.close_shares()


def _masked(clients: dict[int, SecAggClient], server: SecAggServer) -> ConsistencyCheck:
    for p, delivery in _shared(clients, server).items():
        clients[p].receive_shares(delivery)
    for client in clients.values():
        for message in client.masked_input(np.ones(128, dtype=np.uint8)):
            if isinstance(message, MaskedInputChunk):
                server.receive_masked_chunk(message)
            else:
                server.receive_masked_done(message)
    return server.close_masked_input()


def test_tampered_envelope_aborts_the_recipient() -> None:
    _, clients, server, _ = _session()
    deliveries = _shared(clients, server)
    envelope = deliveries[2].envelopes[0]
    tampered = dataclasses.replace(
        envelope, ciphertext=envelope.ciphertext[:-1] + bytes([envelope.ciphertext[-1] ^ 1])
    )
    bad = dataclasses.replace(deliveries[2], envelopes=(tampered,) + deliveries[2].envelopes[1:])
    with pytest.raises(AuthenticationError):
        clients[2].receive_shares(bad)
    assert clients[2].state is ClientState.ABORTED
    with pytest.raises(WrongStateError):
        clients[2].receive_shares(deliveries[2])  # an aborted participant stays aborted


def test_envelope_relabelled_to_another_sender_is_rejected() -> None:
    _, clients, server, _ = _session()
    deliveries = _shared(clients, server)
    first, second = deliveries[1].envelopes[:2]
    swapped = (
        dataclasses.replace(first, sender=second.sender),
        dataclasses.replace(second, sender=first.sender),
    )
    with pytest.raises(AuthenticationError):
        clients[1].receive_shares(
            dataclasses.replace(deliveries[1], envelopes=swapped + deliveries[1].envelopes[2:])
        )


def test_server_rejects_advertisements_with_bad_signatures() -> None:
    params, clients, server, private = _session()
    genuine = clients[1].advertise_keys()
    forged = dataclasses.replace(genuine, mask_public_key=clients[2].advertise_keys().mask_public_key)
    with pytest.raises(InvalidMessageError, match="bad signature"):
        server.receive_advertisement(forged)
    impostor = KeyAdvertisement(
        participant=3,
        cipher_public_key=genuine.cipher_public_key,
        mask_public_key=genuine.mask_public_key,
        signature=genuine.signature,
    )
    with pytest.raises(InvalidMessageError, match="bad signature"):
        server.receive_advertisement(impostor)
    server.receive_advertisement(genuine)  # the genuine one still goes through
    with pytest.raises(InvalidMessageError, match="twice"):
        server.receive_advertisement(genuine)
    assert params.participant_ids == (1, 2, 3, 4) and private


def test_participant_aborts_on_a_roster_with_a_forged_signature() -> None:
    _, clients, _, _ = _session()
    adverts = [c.advertise_keys() for c in clients.values()]
    forged = dataclasses.replace(adverts[2], signature=bytes(64))
    with pytest.raises(AuthenticationError):
        clients[1].share_keys(Roster(advertisements=(adverts[0], adverts[1], forged, adverts[3])))
    assert clients[1].state is ClientState.ABORTED


def test_participant_aborts_when_the_roster_replaces_its_own_keys() -> None:
    _, clients, _, private = _session()
    adverts = [c.advertise_keys() for c in clients.values()]
    other = SecAggClient(
        participant=1,
        parameters=clients[1].parameters,
        identity_key=private[1],
        identity_keys={p: k.public_key() for p, k in private.items()},
        history=SessionHistory(),
    ).advertise_keys()
    with pytest.raises(InconsistentViewError, match="own keys"):
        clients[1].share_keys(Roster(advertisements=(other, *adverts[1:])))


@pytest.mark.parametrize(
    ("survivors", "dropped", "error"),
    [
        ((1, 2, 3, 4), (4,), InconsistentViewError),  # 4 both survived and dropped
        ((1, 2, 3), (), InconsistentViewError),  # 4 is neither: not the set that shared keys
        ((2, 3, 4), (1,), InconsistentViewError),  # says the recipient itself dropped
        ((1, 2), (3, 4), InsufficientParticipantsError),  # fewer survivors than the threshold
    ],
)
def test_contradictory_survivor_sets_abort_and_reveal_nothing(
    survivors: tuple[int, ...], dropped: tuple[int, ...], error: type
) -> None:
    _, clients, server, _ = _session()
    honest = _masked(clients, server)
    with pytest.raises(error):
        clients[1].sign_survivors(
            ConsistencyCheck(session_id=honest.session_id, survivors=survivors, dropped=dropped)
        )
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets
    with pytest.raises(WrongStateError):
        clients[1].sign_survivors(honest)  # nothing more comes out of an aborted participant


def _signed(clients: dict[int, SecAggClient], server: SecAggServer, check: ConsistencyCheck) -> UnmaskRequest:
    for p in check.survivors:
        server.receive_survivor_signature(clients[p].sign_survivors(check))
    return server.close_signatures()


def test_a_participant_signs_one_survivor_set_and_answers_only_one_unmask_request() -> None:
    _, clients, server, _ = _session()
    check = _masked(clients, server)
    request = _signed(clients, server, check)
    with pytest.raises(WrongStateError):
        clients[1].sign_survivors(
            ConsistencyCheck(session_id=check.session_id, survivors=(1, 2, 3), dropped=(4,))
        )
    clients[1].unmask(request)
    second = UnmaskRequest(
        session_id=request.session_id, survivors=(1, 2, 3), dropped=(4,), signatures=request.signatures
    )
    with pytest.raises(WrongStateError):
        clients[1].unmask(second)


def test_server_refuses_a_response_revealing_the_wrong_kind_of_share() -> None:
    _, clients, server, _ = _session()
    request = _signed(clients, server, _masked(clients, server))
    honest = clients[1].unmask(request)
    both = dataclasses.replace(honest, mask_key_shares=(RevealedShare(owner=2, value=bytes(33)),))
    with pytest.raises(InvalidMessageError, match="does not match the request"):
        server.receive_unmask(both)


def test_fewer_than_threshold_unmask_answers_abort_the_server() -> None:
    _, clients, server, _ = _session()
    request = _signed(clients, server, _masked(clients, server))
    for p in request.survivors[:2]:
        server.receive_unmask(clients[p].unmask(request))
    with pytest.raises(InsufficientParticipantsError):
        server.finalize()


def test_share_envelopes_from_a_non_member_are_rejected_by_the_server() -> None:
    _, clients, server, _ = _session()
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    message = clients[1].share_keys(roster)
    short = dataclasses.replace(message, envelopes=message.envelopes[:-1])
    with pytest.raises(InvalidMessageError, match="one envelope per other participant"):
        server.receive_shares(short)
    spoofed = dataclasses.replace(
        message,
        envelopes=tuple(
            EncryptedShare(sender=2, recipient=e.recipient, nonce=e.nonce, ciphertext=e.ciphertext)
            for e in message.envelopes
        ),
    )
    with pytest.raises(InvalidMessageError):
        server.receive_shares(spoofed)
