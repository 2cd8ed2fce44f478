"""Secure aggregation against an active coordinator and cheating participants (issue 10, findings 1 and
3-8): each test plays the attack through the real client and server state machines and shows it fails.

The coordinator here is the honest `SecAggServer` used as a relay, with the attacker forging or
rerouting the messages it hands to participants, which is exactly what a deviating coordinator can do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.errors import PrivacyError, ProtocolAbort
from privacy.secagg import (
    NOTHING_PUBLISHED,
    AuthenticationError,
    ClientState,
    ContradictoryViewError,
    CoordinatorMisbehaviour,
    ForgedRelayError,
    InconsistentViewError,
    InsufficientParticipantsError,
    InvalidMessageError,
    ReplayError,
    SecAggClient,
    SecAggServer,
    ServerState,
    SessionContext,
    SessionHistory,
    SessionParameters,
    ShamirError,
    aggregate_in_process,
    minimum_threshold,
    primitives,
    published_view,
    require_sender,
    resolve_threshold,
    sender_of,
    shamir,
    tolerated_colluders,
)
from privacy.secagg import driver as secagg_driver
from privacy.secagg.messages import (
    ConsistencyCheck,
    KeyAdvertisement,
    MaskedInputChunk,
    RevealedShare,
    Roster,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.packing import BitPacker
from privacy.secagg.prg import MaskApplier

DIMENSION = 200
CHUNK = 64


def context(block: int = 0) -> bytes:
    return SessionContext.fresh(run_id="test-active", round=0, block=block).encode()


def parameters(n: int, t: int, *, unsafe: bool = False, block: int = 0) -> SessionParameters:
    return SessionParameters(
        participant_ids=tuple(range(1, n + 1)),
        threshold=t,
        dimension=DIMENSION,
        chunk_coordinates=CHUNK,
        context=context(block),
        allow_unsafe_threshold=unsafe,
    )


Identities = tuple[dict[int, Ed25519PrivateKey], dict[int, Ed25519PublicKey]]


def identities(n: int) -> Identities:
    private = {p: Ed25519PrivateKey.generate() for p in range(1, n + 1)}
    return private, {p: k.public_key() for p, k in private.items()}


def parties(
    params: SessionParameters, ids: Identities, histories: dict[int, SessionHistory] | None = None
) -> tuple[dict[int, SecAggClient], SecAggServer]:
    private, public = ids
    clients = {
        p: SecAggClient(
            participant=p,
            parameters=params,
            identity_key=private[p],
            identity_keys=public,
            history=(histories or {}).get(p) or SessionHistory(),
        )
        for p in params.participant_ids
    }
    return clients, SecAggServer(parameters=params, identity_keys=public, record_masked_payloads=True)


def votes_for(params: SessionParameters, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p: rng.integers(0, 2, params.dimension).astype(np.uint8) for p in params.participant_ids}


def to_consistency(
    clients: dict[int, SecAggClient],
    server: SecAggServer,
    votes: dict[int, np.ndarray],
    *,
    silent: tuple[int, ...] = (),
) -> ConsistencyCheck:
    """Return the honest consistency check after every participant but `silent` streamed its votes."""
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    for p, delivery in server.close_shares().items():
        clients[p].receive_shares(delivery)
    for p, c in clients.items():
        if p in silent:
            continue
        for message in c.masked_input(votes[p]):
            if isinstance(message, MaskedInputChunk):
                server.receive_masked_chunk(message)
            else:
                server.receive_masked_done(message)
    return server.close_masked_input()


def honest_unmask(
    clients: dict[int, SecAggClient], server: SecAggServer, check: ConsistencyCheck
) -> dict[int, UnmaskResponse]:
    for p in check.survivors:
        server.receive_survivor_signature(clients[p].sign_survivors(check))
    request = server.close_signatures()
    return {p: clients[p].unmask(request) for p in request.survivors}


# --------------------------------------------------------------------------- finding 1: split view
def split_view_attack(params: SessionParameters, ids: Identities) -> np.ndarray:
    """Return the target's plain votes recovered by a coordinator showing two survivor sets; raises if refused.

    Target u = n. Group A (u and the first t - 1 others) is told everyone survived and reveals self-seed
    shares; group B (the rest) is told u dropped and reveals mask-key shares. With b_u and s_sk_u the
    coordinator strips every mask from u's masked vector.
    """
    n, t = params.participants, params.threshold
    target = n
    clients, server = parties(params, ids)
    votes = votes_for(params)
    honest = to_consistency(clients, server, votes)
    others = [p for p in params.participant_ids if p != target]
    group_a, group_b = [target, *others[: t - 1]], others[t - 1 :]
    check_a = honest
    check_b = ConsistencyCheck(session_id=honest.session_id, survivors=tuple(others), dropped=(target,))
    signatures_a = tuple(clients[p].sign_survivors(check_a) for p in group_a)
    signatures_b = tuple(clients[p].sign_survivors(check_b) for p in group_b)
    # Each group is shown the signatures over its own set (those over the other set would fail to verify).
    request_a = UnmaskRequest(
        session_id=honest.session_id, survivors=check_a.survivors, dropped=(), signatures=signatures_a
    )
    request_b = UnmaskRequest(
        session_id=honest.session_id, survivors=check_b.survivors, dropped=(target,), signatures=signatures_b
    )
    seed_shares = [
        shamir.Share.from_bytes(p, s.value)
        for p in group_a
        for s in clients[p].unmask(request_a).self_seed_shares
        if s.owner == target
    ]
    key_shares = [
        shamir.Share.from_bytes(p, s.value)
        for p in group_b
        for s in clients[p].unmask(request_b).mask_key_shares
        if s.owner == target
    ]
    seed = shamir.reconstruct(seed_shares, threshold=t)
    mask_key = X25519PrivateKey.from_private_bytes(shamir.reconstruct(key_shares, threshold=t))
    sid = honest.session_id
    roster = {m.participant: m for m in server.view if isinstance(m, KeyAdvertisement)}
    payload = b"".join(
        m.payload for m in server.view if isinstance(m, MaskedInputChunk) and m.participant == target
    )
    lanes = BitPacker(params.bit_width, params.chunk_count * CHUNK).unpack(
        np.frombuffer(payload, dtype=np.uint8)
    )
    lanes = lanes[: params.dimension].copy()
    add: list[bytes] = []
    subtract = [primitives.self_mask_key(seed, session_id=sid, party=target)]
    for v in others:
        key = primitives.pairwise_mask_key(
            mask_key, roster[v].mask_public_key, session_id=sid, party=target, peer=v
        )
        (subtract if target < v else add).append(key)  # undo what the target added
    MaskApplier(params.lane_dtype).apply(lanes, first_coordinate=0, add_keys=add, subtract_keys=subtract)
    recovered = lanes & ((1 << params.bit_width) - 1)
    assert np.array_equal(recovered, votes[target]), "the attack's arithmetic is wrong"
    return recovered


@pytest.mark.parametrize(("n", "unsafe_t"), [(4, 2), (6, 3)])
def test_split_view_unmasks_a_participant_when_t_is_at_most_half_and_is_refused_above(
    n: int, unsafe_t: int
) -> None:
    ids = identities(n)
    # The attack is real: with the explicitly unsafe test setting it recovers the target's votes,
    # even though every survivor checks t signatures over its own set.
    split_view_attack(parameters(n, unsafe_t, unsafe=True), ids)
    # Such thresholds are refused when the parameters are built ...
    with pytest.raises(PrivacyError, match=r"threshold must be > \(participants \+ colluders\) / 2"):
        parameters(n, unsafe_t)
    # ... and with the smallest allowed one, the groups cannot both gather t signatures over their set.
    safe_t = minimum_threshold(n)
    assert safe_t == unsafe_t + 1
    with pytest.raises(ProtocolAbort):
        split_view_attack(parameters(n, safe_t), ids)


def test_a_survivor_refuses_to_unmask_without_t_valid_signatures_over_its_own_set() -> None:
    params = parameters(4, 3)
    clients, server = parties(params, identities(4))
    check = to_consistency(clients, server, votes_for(params))
    signatures = {p: clients[p].sign_survivors(check) for p in check.survivors}
    request = UnmaskRequest(
        session_id=check.session_id,
        survivors=check.survivors,
        dropped=check.dropped,
        signatures=(signatures[1], signatures[2]),
    )
    with pytest.raises(InsufficientParticipantsError, match="2 survivors signed"):
        clients[1].unmask(request)
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets
    forged = dataclasses.replace(signatures[4], signature=signatures[3].signature)
    with pytest.raises(AuthenticationError):
        clients[2].unmask(dataclasses.replace(request, signatures=(signatures[1], signatures[2], forged)))
    other_set = dataclasses.replace(request, survivors=(1, 2, 3), dropped=(4,))
    with pytest.raises(InconsistentViewError, match="another survivor set"):
        clients[3].unmask(dataclasses.replace(other_set, signatures=tuple(signatures.values())))
    # The server refuses a signature that does not verify, alone.
    with pytest.raises(InvalidMessageError, match="bad signature"):
        server.receive_survivor_signature(forged)
    server.receive_survivor_signature(signatures[4])
    assert server.state is ServerState.COLLECTING_SIGNATURES


def test_the_result_carries_the_survivors_signatures_over_the_contributor_set() -> None:
    params = parameters(4, 3)
    private, public = identities(4)
    run = secagg_driver.run_session(params, votes_for(params), identities=(private, public))
    assert run.result is not None and len(run.result.signatures) == 4
    session_id = run.server.session_id
    message = primitives.survivor_set_message(
        session_id=session_id, survivors=run.result.contributors, dropped=run.result.dropped
    )
    for signature in run.result.signatures:
        primitives.verify(public[signature.sender], signature.signature, message, what="survivor set")


# --------------------------------------------------------------------------- finding 3: bad shares
def _unmask_phase(
    n: int, t: int
) -> tuple[dict[int, SecAggClient], SecAggServer, dict[int, UnmaskResponse], dict[int, np.ndarray]]:
    params = parameters(n, t)
    clients, server = parties(params, identities(n))
    votes = votes_for(params)
    responses = honest_unmask(clients, server, to_consistency(clients, server, votes))
    return clients, server, responses, votes


def _shifted(response: UnmaskResponse, owner: int) -> UnmaskResponse:
    """Return `response` with the self-seed share of `owner` replaced by another valid field element."""
    shares = tuple(
        RevealedShare(
            owner=s.owner,
            value=((int.from_bytes(s.value, "big") + 1) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big"),
        )
        if s.owner == owner
        else s
        for s in response.self_seed_shares
    )
    return dataclasses.replace(response, self_seed_shares=shares)


def test_a_malformed_unmask_response_is_rejected_alone_and_the_session_finishes() -> None:
    _, server, responses, votes = _unmask_phase(5, 3)
    not_a_field_element = dataclasses.replace(
        responses[1],
        self_seed_shares=tuple(
            dataclasses.replace(s, value=b"\xff" * shamir.SHARE_BYTES) for s in responses[1].self_seed_shares
        ),
    )
    with pytest.raises(InvalidMessageError, match="malformed share"):
        server.receive_unmask(not_a_field_element)
    assert server.state is ServerState.COLLECTING_UNMASK and 1 in server.rejected_responses
    for p in (2, 3, 4):
        server.receive_unmask(responses[p])
    assert np.array_equal(server.finalize().keep_votes, sum(v.astype(np.int64) for v in votes.values()))


def test_a_wrong_self_seed_share_with_exactly_t_responses_never_yields_a_wrong_sum() -> None:
    _, server, responses, _ = _unmask_phase(4, 3)
    with pytest.raises(InvalidMessageError, match="does not match the owner's commitment"):
        server.receive_unmask(_shifted(responses[1], owner=2))
    server.receive_unmask(responses[2])
    server.receive_unmask(responses[3])
    with pytest.raises(InsufficientParticipantsError):
        server.finalize()  # two valid responses: a clean abort, not a silently wrong sum


def test_with_more_than_t_responses_inconsistent_ones_are_excluded() -> None:
    _, server, responses, votes = _unmask_phase(5, 3)
    for p, owner in ((1, 3), (2, 5)):
        with pytest.raises(InvalidMessageError):
            server.receive_unmask(_shifted(responses[p], owner=owner))
    for p in (3, 4, 5):
        server.receive_unmask(responses[p])
    assert set(server.rejected_responses) == {1, 2}
    assert np.array_equal(server.finalize().keep_votes, sum(v.astype(np.int64) for v in votes.values()))


def test_a_self_seed_that_does_not_match_its_commitment_aborts_naming_the_dealer() -> None:
    params = parameters(4, 3)
    clients, server = parties(params, identities(4))
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for p, c in clients.items():
        message = c.share_keys(roster)
        if p == 2:  # a dealer whose commitment does not open to the seed it shared
            message = dataclasses.replace(message, self_seed_commitment=bytes(32))
        server.receive_shares(message)
    for p, delivery in server.close_shares().items():
        clients[p].receive_shares(delivery)
    votes = votes_for(params)
    for p, c in clients.items():
        for streamed in c.masked_input(votes[p]):
            if isinstance(streamed, MaskedInputChunk):
                server.receive_masked_chunk(streamed)
            else:
                server.receive_masked_done(streamed)
    for response in honest_unmask(clients, server, server.close_masked_input()).values():
        server.receive_unmask(response)
    with pytest.raises(ShamirError, match="participant 2 does not match its commitment"):
        server.finalize()
    assert server.state is ServerState.ABORTED


# --------------------------------------------------------------------------- finding 4: threshold
def test_the_threshold_is_validated_when_settings_are_built() -> None:
    assert resolve_threshold(None, participants=4) == 3
    assert resolve_threshold(3, participants=4) == 3
    with pytest.raises(PrivacyError, match=r"threshold must be in \[1, 4\], got 0"):
        resolve_threshold(0, participants=4)  # 0 is an error, never "use the default"
    with pytest.raises(PrivacyError, match="threshold must be >= 2"):
        resolve_threshold(1, participants=4)
    with pytest.raises(PrivacyError, match="threshold must be >"):
        resolve_threshold(2, participants=4)
    with pytest.raises(PrivacyError, match=">= 4 for 5 participants and 2 colluders"):
        resolve_threshold(3, participants=5, colluders=2)
    with pytest.raises(PrivacyError, match="threshold must be an integer"):
        resolve_threshold(True, participants=4)


def test_the_colluders_a_threshold_tolerates_are_the_most_the_threshold_rule_allows() -> None:
    # One rule, t > (n + c) / 2 and c < t, read both ways: the threshold for given colluders, and the
    # colluders a given threshold tolerates (what a report assumes when the operator states none).
    for n in range(1, 40):
        for t in range(minimum_threshold(n), n + 1):
            c = tolerated_colluders(n, t)
            assert 0 <= c < t and minimum_threshold(n, colluders=c) <= t
            assert c + 1 >= t or minimum_threshold(n, colluders=c + 1) > t


def test_aggregate_in_process_rejects_a_bad_threshold_before_running_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a session started with a bad threshold")

    monkeypatch.setattr(secagg_driver, "run_session", must_not_run)
    vectors = [np.ones(64, dtype=np.uint8)] * 4
    for bad in (0, 1, 2, 5):
        with pytest.raises(PrivacyError, match="threshold"):
            aggregate_in_process(vectors, threshold=bad)
    with pytest.raises(PrivacyError, match="threshold"):
        aggregate_in_process(vectors, threshold=3, colluders=2)


# --------------------------------------------------------------------------- finding 5: context
def test_the_session_context_is_mandatory_and_unique() -> None:
    with pytest.raises(TypeError):
        SessionParameters(participant_ids=(1, 2, 3), threshold=2, dimension=10)  # type: ignore[call-arg]
    with pytest.raises(PrivacyError, match="SessionContext"):
        SessionParameters(participant_ids=(1, 2, 3), threshold=2, dimension=10, context=b"")
    first, second = (SessionContext.fresh(run_id="run", round=0, block=7) for _ in range(2))
    assert first.nonce != second.nonce and first.encode() != second.encode()
    assert SessionContext.decode(first.encode()) == first


def test_a_key_advertisement_replayed_into_another_session_of_the_same_block_is_refused() -> None:
    ids = identities(3)
    old_params, new_params = parameters(3, 2, block=5), parameters(3, 2, block=5)
    old_clients, _ = parties(old_params, ids)
    replayed = old_clients[3].advertise_keys()
    clients, server = parties(new_params, ids)
    with pytest.raises(InvalidMessageError, match="bad signature"):
        server.receive_advertisement(replayed)
    adverts = [clients[1].advertise_keys(), clients[2].advertise_keys()]
    with pytest.raises(AuthenticationError):
        clients[1].share_keys(Roster(advertisements=(*adverts, replayed)))
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets


def test_a_participant_refuses_to_join_a_context_twice() -> None:
    params = parameters(3, 2)
    history = SessionHistory()
    ids = identities(3)
    parties(params, ids, {1: history})[0][1].advertise_keys()
    again = parties(params, ids, {1: history})[0][1]
    with pytest.raises(ReplayError, match="fresh nonce"):
        again.advertise_keys()
    assert again.state is ClientState.ABORTED


# --------------------------------------------------------------------------- finding 6: small order
SMALL_ORDER_POINTS = (bytes(32), (1).to_bytes(32, "little"))


@pytest.mark.parametrize("small", SMALL_ORDER_POINTS)
def test_small_order_keys_are_refused_at_advertisement(small: bytes) -> None:
    params = parameters(3, 2)
    private, public = identities(3)
    clients, server = parties(params, (private, public))
    genuine = clients[3].advertise_keys()
    message = primitives.advertisement_message(
        parameters_digest=params.digest(),
        party=3,
        cipher_public_key=small,
        mask_public_key=genuine.mask_public_key,
    )
    # Signed by participant 3 itself: a cheating participant, not a forgery.
    malicious = dataclasses.replace(genuine, cipher_public_key=small, signature=private[3].sign(message))
    with pytest.raises(InvalidMessageError, match="small order"):
        server.receive_advertisement(malicious)
    adverts = (clients[1].advertise_keys(), clients[2].advertise_keys(), malicious)
    # The server refuses such a key, so a roster that carries one is a coordinator's lie.
    with pytest.raises(ForgedRelayError, match="roster-advertisement-invalid: .*small order"):
        clients[1].share_keys(Roster(advertisements=adverts))
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets


def test_any_error_once_secrets_exist_aborts_and_wipes_them() -> None:
    params = parameters(3, 2)
    clients, server = parties(params, identities(3))
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    deliveries = server.close_shares()
    assert clients[1].holds_secrets
    with pytest.raises(ContradictoryViewError, match="delivery-misaddressed: .*another participant"):
        clients[1].receive_shares(
            ShareDelivery(session_id=deliveries[2].session_id, recipient=2, envelopes=deliveries[2].envelopes)
        )
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets
    truncated = dataclasses.replace(
        deliveries[3],
        envelopes=tuple(dataclasses.replace(e, ciphertext=e.ciphertext[:5]) for e in deliveries[3].envelopes),
    )
    with pytest.raises(PrivacyError):
        clients[3].receive_shares(truncated)
    assert clients[3].state is ClientState.ABORTED and not clients[3].holds_secrets


# --------------------------------------------------------------------------- finding 7: identities
def test_a_participant_refuses_identity_keys_that_do_not_pin_its_own() -> None:
    params = parameters(3, 2)
    private, public = identities(3)
    handed_out = dict(public) | {1: Ed25519PrivateKey.generate().public_key()}
    with pytest.raises(PrivacyError, match=r"identity_keys\[1\] is not this participant's own"):
        SecAggClient(
            participant=1,
            parameters=params,
            identity_key=private[1],
            identity_keys=handed_out,
            history=SessionHistory(),
        )


def test_every_participant_message_is_bound_to_its_transport_identity() -> None:
    params = parameters(3, 2)
    clients, server = parties(params, identities(3))
    votes = votes_for(params)
    check = to_consistency(clients, server, votes)
    signature = clients[2].sign_survivors(check)
    require_sender(signature, authenticated=2)
    with pytest.raises(
        InvalidMessageError, match="names participant 2 as its sender but arrived from participant 1"
    ):
        require_sender(signature, authenticated=1)
    recorded = [m for m in server.view if not isinstance(m, KeyAdvertisement)] + [
        m for m in server.view if isinstance(m, KeyAdvertisement)
    ]
    for message in recorded:
        claimed = sender_of(message)  # type: ignore[arg-type]
        require_sender(message, authenticated=claimed)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessageError):
            require_sender(message, authenticated=claimed % 3 + 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- finding 8: resubmission
def test_a_vector_is_never_summed_over_a_second_survivor_set() -> None:
    params = parameters(4, 3, block=1)
    ids = identities(4)
    histories = {p: SessionHistory() for p in params.participant_ids}
    votes = votes_for(params, seed=3)
    clients, server = parties(params, ids, histories)
    for response in honest_unmask(clients, server, to_consistency(clients, server, votes)).values():
        server.receive_unmask(response)
    first = server.finalize()
    assert first.contributors == (1, 2, 3, 4)
    # A "retry" of the same block where participant 4 is reported dropped: the difference of the two sums
    # would be participant 4's votes. Participants 1-3 put the same vectors in, so they refuse to sign.
    retry = parameters(4, 3, block=1)
    clients, server = parties(retry, ids, histories)
    check = to_consistency(clients, server, votes, silent=(4,))
    assert check.survivors == (1, 2, 3)
    for p in check.survivors:
        with pytest.raises(ReplayError, match="already summed over survivors"):
            clients[p].sign_survivors(check)
        assert clients[p].state is ClientState.ABORTED and not clients[p].holds_secrets
    with pytest.raises(InsufficientParticipantsError):
        server.close_signatures()
    # A retry with the same survivor set reveals nothing new and is allowed, also from a restored history.
    restored = {p: SessionHistory.restore(h.export()) for p, h in histories.items()}
    clients, server = parties(parameters(4, 3, block=1), ids, restored)
    for response in honest_unmask(clients, server, to_consistency(clients, server, votes)).values():
        server.receive_unmask(response)
    assert np.array_equal(server.finalize().keep_votes, first.keep_votes)


# --------------------------------------------------------------------------- proofs against the coordinator
@pytest.mark.parametrize(
    ("lie", "check"),
    [
        (
            lambda c: dataclasses.replace(c, survivors=c.survivors[1:], dropped=(*c.dropped, 1)),
            "survivors-omit-self",
        ),
        (lambda c: dataclasses.replace(c, survivors=(*c.survivors, c.survivors[0])), "survivors-repeat"),
        (lambda c: dataclasses.replace(c, dropped=(*c.dropped, c.survivors[-1])), "survivors-and-dropped"),
        (lambda c: dataclasses.replace(c, survivors=c.survivors[:-1]), "survivors-not-share-holders"),
        (lambda c: dataclasses.replace(c, session_id=b"\x00" * 32), "session-id-mismatch"),
        (lambda c: dataclasses.replace(c, survivors=(1, 2), dropped=(3, 4)), "survivors-below-threshold"),
    ],
)
def test_a_consistency_check_no_honest_server_sends_is_a_named_proof(lie: Any, check: str) -> None:
    # The server derives the check from U2 and the finished streams and aborts below t: each of these
    # can only come from a coordinator that deviates, so the participant names it and signs nothing.
    params = parameters(4, 3)
    clients, server = parties(params, identities(4))
    honest = to_consistency(clients, server, votes_for(params))
    with pytest.raises(CoordinatorMisbehaviour) as caught:
        clients[1].sign_survivors(lie(honest))
    assert caught.value.check == check
    assert clients[1].state is ClientState.ABORTED and not clients[1].holds_secrets


def test_a_tampered_envelope_is_refused_but_is_no_proof_against_the_coordinator() -> None:
    # A peer can send garbage in its envelope; the coordinator cannot check it, so it proves nothing.
    params = parameters(3, 2)
    clients, server = parties(params, identities(3))
    for c in clients.values():
        server.receive_advertisement(c.advertise_keys())
    roster = server.close_advertisements()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    delivery = server.close_shares()[1]
    forged = dataclasses.replace(
        delivery,
        envelopes=tuple(
            dataclasses.replace(e, ciphertext=bytes(len(e.ciphertext))) for e in delivery.envelopes
        ),
    )
    with pytest.raises(AuthenticationError) as caught:
        clients[1].receive_shares(forged)
    assert not isinstance(caught.value, CoordinatorMisbehaviour)


def test_participants_shown_different_published_views_cannot_share_a_session() -> None:
    # A coordinator that showed participant 3 another global mask than 1 and 2 (say, weights that scale
    # 3's contribution up) binds each one's own view in its context, so each one's check passes. Their
    # parameters then differ, so 3's advertisement is signed over another digest: the roster that would
    # put them in one session is refused by 1 and 2 before they share anything, and the server's own check
    # refuses 3's advertisement in 1 and 2's session.
    view = primitives.sha256(b"mask of block 0 shown to participants 1 and 2")
    other = primitives.sha256(b"mask of block 0 shown to participant 3")
    nonce = bytes(range(32))

    def with_view(published_mask: bytes) -> SessionParameters:
        return dataclasses.replace(
            parameters(3, 2),
            context=SessionContext(
                run_id="test-active",
                round=1,
                block=1,
                nonce=nonce,
                published=published_view(blocks=[(published_mask, None)]),
            ).encode(),
        )

    shown, lied_to = with_view(view), with_view(other)
    assert shown.digest() != lied_to.digest()
    ids = identities(3)
    clients, server = parties(shown, ids)
    victim, _ = parties(lied_to, ids)
    advertisements = [clients[1].advertise_keys(), clients[2].advertise_keys(), victim[3].advertise_keys()]
    with pytest.raises(PrivacyError):
        server.receive_advertisement(advertisements[2])
    roster = Roster(advertisements=tuple(advertisements))
    for p in (1, 2):
        with pytest.raises(ForgedRelayError) as refused:
            clients[p].share_keys(roster)
        assert refused.value.check == "roster-advertisement-invalid"
        assert clients[p].state is ClientState.ABORTED


def test_the_published_view_binds_the_allocation_each_mask_and_weights_in_order() -> None:
    a, b = primitives.sha256(b"a"), primitives.sha256(b"b")
    views = [
        published_view(),
        published_view(allocation=[0.5, 0.5]),
        published_view(allocation=[0.5, 0.5000001]),
        published_view(blocks=[(a, None)]),
        published_view(blocks=[(b, None)]),
        published_view(blocks=[(a, b)]),
        published_view(blocks=[(a, None), (b, None)]),
        published_view(blocks=[(b, None), (a, None)]),
        published_view(allocation=[0.5, 0.5], blocks=[(a, None)]),
    ]
    assert len(set(views)) == len(views)
    assert views[0] == NOTHING_PUBLISHED
    assert published_view(blocks=[(a, None)]) == published_view(blocks=[(a, None)])
    with pytest.raises(PrivacyError, match="32 bytes"):
        published_view(blocks=[(a[:16], None)])
    # The context carries it exactly; an encoding without it (protocol version 2) is refused.
    context = SessionContext(run_id="r", round=0, block=1, nonce=bytes(32), published=views[5])
    assert SessionContext.decode(context.encode()) == context
    with pytest.raises(PrivacyError, match="wrong length"):
        SessionContext.decode(context.encode()[:-32])
