"""Secure-aggregation messages between their domain dataclasses and protobuf: the one place that converts.

``to_proto`` and ``from_proto`` accept any message of ``privacy.secagg.messages`` (and
``SessionParameters``) and its ``fedprune.v1`` counterpart. Decoding checks what the wire cannot: that
required sub-messages are present, participant ids are valid Shamir points and session ids are SHA-256
digests; a violation raises ``InvalidMessageError`` naming the field (``ShareKeys.envelopes[2].sender``),
which a servicer maps to INVALID_ARGUMENT. Key, nonce and signature sizes are checked by the state
machines that use them, so they are not checked twice here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.messages import (
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    RevealedShare,
    Roster,
    ShareDelivery,
    ShareDigest,
    ShareKeys,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.parameters import MAX_BIT_WIDTH, MAX_PARTICIPANT_ID, SessionParameters
from proto.fedprune.v1 import secagg_pb2 as pb
from proto.tls import MAX_CHUNK_PAYLOAD_BYTES

SESSION_ID_BYTES = 32


def session_chunk_coordinates(bit_width: int, *, limit: int) -> int:
    """Return the coordinates per masked-input chunk at ``bit_width`` bits: at most ``limit``, payload <= 4 MiB.

    Both roles derive a session's chunk size with it from the run's announced ``chunk_coordinates``
    (``limit``) and the session's ring, so a participant can refuse any other chunking.
    """
    fitting = (MAX_CHUNK_PAYLOAD_BYTES * 8 // bit_width) // 64 * 64
    return max(64, min(limit, fitting))


DomainMessage = (
    SessionParameters
    | KeyAdvertisement
    | Roster
    | EncryptedShare
    | ShareDigest
    | ShareKeys
    | ShareDelivery
    | MaskedInputChunk
    | MaskedInputDone
    | ConsistencyCheck
    | SurvivorSignature
    | UnmaskRequest
    | RevealedShare
    | UnmaskResponse
)


# ------------------------------------------------------------------ checks on decode
def _participant(value: int, field: str) -> int:
    if not 1 <= value <= MAX_PARTICIPANT_ID:
        raise InvalidMessageError(
            f"{field} must be a participant id in [1, {MAX_PARTICIPANT_ID}], got {value}"
        )
    return value


def _participants(values: Sequence[int], field: str) -> tuple[int, ...]:
    return tuple(_participant(value, f"{field}[{i}]") for i, value in enumerate(values))


def _session_id(value: bytes, field: str) -> bytes:
    if len(value) != SESSION_ID_BYTES:
        raise InvalidMessageError(f"{field} must be {SESSION_ID_BYTES} bytes, got {len(value)}")
    return value


def _require(message: Any, name: str, field: str) -> Any:
    # proto3 sub-messages read as empty defaults when absent; an absent one must not pass as empty.
    if not message.HasField(name):
        raise InvalidMessageError(f"{field}.{name} is missing")
    return getattr(message, name)


# ------------------------------------------------------------------ SessionParameters
def session_parameters_to_proto(parameters: SessionParameters) -> pb.SessionParameters:
    """Return the protobuf form of a session's public parameters."""
    return pb.SessionParameters(
        participant_ids=list(parameters.participant_ids),
        threshold=parameters.threshold,
        dimension=parameters.dimension,
        chunk_coordinates=parameters.chunk_coordinates,
        max_input=parameters.max_input,
        context=parameters.context,
        protocol_version=parameters.protocol_version,
        colluders=parameters.colluders,
        ring_headroom=parameters.ring_headroom,
    )


def session_parameters_from_proto(
    message: pb.SessionParameters, *, max_bit_width: int = MAX_BIT_WIDTH
) -> SessionParameters:
    """Return validated SessionParameters (PrivacyError names the bad field).

    ``allow_unsafe_threshold`` is always False here: it has no wire field, so a coordinator can never
    talk a participant into a threshold below the safe minimum. ``max_bit_width`` is the receiver's own
    acceptance limit on the ring (16 for keep-votes; a FedSpaLLM participant raises it for the packed
    vote-and-weight ring), never read from the wire.
    """
    return SessionParameters(
        participant_ids=_participants(message.participant_ids, "SessionParameters.participant_ids"),
        threshold=message.threshold,
        dimension=message.dimension,
        chunk_coordinates=message.chunk_coordinates,
        max_input=message.max_input,
        context=message.context,
        protocol_version=message.protocol_version,
        colluders=message.colluders,
        ring_headroom=message.ring_headroom,
        allow_unsafe_threshold=False,
        max_bit_width=max_bit_width,
    )


# ------------------------------------------------------------------ round 0
def key_advertisement_to_proto(message: KeyAdvertisement) -> pb.KeyAdvertisement:
    """Return the protobuf form of a key advertisement."""
    return pb.KeyAdvertisement(
        participant=message.participant,
        cipher_public_key=message.cipher_public_key,
        mask_public_key=message.mask_public_key,
        signature=message.signature,
    )


def key_advertisement_from_proto(
    message: pb.KeyAdvertisement, field: str = "KeyAdvertisement"
) -> KeyAdvertisement:
    """Return the domain key advertisement."""
    return KeyAdvertisement(
        participant=_participant(message.participant, f"{field}.participant"),
        cipher_public_key=message.cipher_public_key,
        mask_public_key=message.mask_public_key,
        signature=message.signature,
    )


def roster_to_proto(message: Roster) -> pb.Roster:
    """Return the protobuf form of a roster."""
    return pb.Roster(advertisements=[key_advertisement_to_proto(adv) for adv in message.advertisements])


def roster_from_proto(message: pb.Roster) -> Roster:
    """Return the domain roster (order kept: the client checks it)."""
    return Roster(
        advertisements=tuple(
            key_advertisement_from_proto(adv, f"Roster.advertisements[{i}]")
            for i, adv in enumerate(message.advertisements)
        )
    )


# ------------------------------------------------------------------ round 1
def encrypted_share_to_proto(message: EncryptedShare) -> pb.EncryptedShare:
    """Return the protobuf form of one share envelope."""
    return pb.EncryptedShare(
        sender=message.sender, recipient=message.recipient, nonce=message.nonce, ciphertext=message.ciphertext
    )


def encrypted_share_from_proto(message: pb.EncryptedShare, field: str = "EncryptedShare") -> EncryptedShare:
    """Return the domain share envelope."""
    return EncryptedShare(
        sender=_participant(message.sender, f"{field}.sender"),
        recipient=_participant(message.recipient, f"{field}.recipient"),
        nonce=message.nonce,
        ciphertext=message.ciphertext,
    )


def _envelopes(messages: Sequence[pb.EncryptedShare], field: str) -> tuple[EncryptedShare, ...]:
    return tuple(encrypted_share_from_proto(env, f"{field}.envelopes[{i}]") for i, env in enumerate(messages))


def share_digest_to_proto(message: ShareDigest) -> pb.ShareDigest:
    """Return the protobuf form of the digests of one holder's two shares."""
    return pb.ShareDigest(
        holder=message.holder, self_seed_share=message.self_seed_share, mask_key_share=message.mask_key_share
    )


def share_digest_from_proto(message: pb.ShareDigest, field: str = "ShareDigest") -> ShareDigest:
    """Return the domain share digests."""
    return ShareDigest(
        holder=_participant(message.holder, f"{field}.holder"),
        self_seed_share=message.self_seed_share,
        mask_key_share=message.mask_key_share,
    )


def share_keys_to_proto(message: ShareKeys) -> pb.ShareKeys:
    """Return the protobuf form of a participant's round-1 message."""
    return pb.ShareKeys(
        session_id=message.session_id,
        sender=message.sender,
        envelopes=[encrypted_share_to_proto(env) for env in message.envelopes],
        self_seed_commitment=message.self_seed_commitment,
        share_digests=[share_digest_to_proto(digest) for digest in message.share_digests],
    )


def share_keys_from_proto(message: pb.ShareKeys) -> ShareKeys:
    """Return the domain round-1 message."""
    return ShareKeys(
        session_id=_session_id(message.session_id, "ShareKeys.session_id"),
        sender=_participant(message.sender, "ShareKeys.sender"),
        envelopes=_envelopes(message.envelopes, "ShareKeys"),
        self_seed_commitment=message.self_seed_commitment,
        share_digests=tuple(
            share_digest_from_proto(digest, f"ShareKeys.share_digests[{i}]")
            for i, digest in enumerate(message.share_digests)
        ),
    )


def share_delivery_to_proto(message: ShareDelivery) -> pb.ShareDelivery:
    """Return the protobuf form of the envelopes relayed to one participant."""
    return pb.ShareDelivery(
        session_id=message.session_id,
        recipient=message.recipient,
        envelopes=[encrypted_share_to_proto(env) for env in message.envelopes],
    )


def share_delivery_from_proto(message: pb.ShareDelivery) -> ShareDelivery:
    """Return the domain share delivery."""
    return ShareDelivery(
        session_id=_session_id(message.session_id, "ShareDelivery.session_id"),
        recipient=_participant(message.recipient, "ShareDelivery.recipient"),
        envelopes=_envelopes(message.envelopes, "ShareDelivery"),
    )


# ------------------------------------------------------------------ round 2
def masked_input_chunk_to_proto(message: MaskedInputChunk) -> pb.MaskedInputChunk:
    """Return the protobuf form of one masked chunk."""
    return pb.MaskedInputChunk(
        session_id=message.session_id,
        participant=message.participant,
        chunk_index=message.chunk_index,
        payload=message.payload,
    )


def masked_input_chunk_from_proto(message: pb.MaskedInputChunk) -> MaskedInputChunk:
    """Return the domain masked chunk (payload size is checked by the server against the parameters)."""
    return MaskedInputChunk(
        session_id=_session_id(message.session_id, "MaskedInputChunk.session_id"),
        participant=_participant(message.participant, "MaskedInputChunk.participant"),
        chunk_index=message.chunk_index,
        payload=message.payload,
    )


def masked_input_done_to_proto(message: MaskedInputDone) -> pb.MaskedInputDone:
    """Return the protobuf form of the message closing a masked-input stream."""
    return pb.MaskedInputDone(
        session_id=message.session_id,
        participant=message.participant,
        chunk_count=message.chunk_count,
        digest=message.digest,
    )


def masked_input_done_from_proto(message: pb.MaskedInputDone) -> MaskedInputDone:
    """Return the domain closing message."""
    return MaskedInputDone(
        session_id=_session_id(message.session_id, "MaskedInputDone.session_id"),
        participant=_participant(message.participant, "MaskedInputDone.participant"),
        chunk_count=message.chunk_count,
        digest=message.digest,
    )


# ------------------------------------------------------------------ round 3 (consistency)
def consistency_check_to_proto(message: ConsistencyCheck) -> pb.ConsistencyCheck:
    """Return the protobuf form of the survivor set the survivors are asked to sign."""
    return pb.ConsistencyCheck(
        session_id=message.session_id, survivors=list(message.survivors), dropped=list(message.dropped)
    )


def consistency_check_from_proto(message: pb.ConsistencyCheck) -> ConsistencyCheck:
    """Return the domain consistency check."""
    return ConsistencyCheck(
        session_id=_session_id(message.session_id, "ConsistencyCheck.session_id"),
        survivors=_participants(message.survivors, "ConsistencyCheck.survivors"),
        dropped=_participants(message.dropped, "ConsistencyCheck.dropped"),
    )


def survivor_signature_to_proto(message: SurvivorSignature) -> pb.SurvivorSignature:
    """Return the protobuf form of a survivor's signature over the survivor set."""
    return pb.SurvivorSignature(
        session_id=message.session_id, sender=message.sender, signature=message.signature
    )


def survivor_signature_from_proto(
    message: pb.SurvivorSignature, field: str = "SurvivorSignature"
) -> SurvivorSignature:
    """Return the domain survivor signature."""
    return SurvivorSignature(
        session_id=_session_id(message.session_id, f"{field}.session_id"),
        sender=_participant(message.sender, f"{field}.sender"),
        signature=message.signature,
    )


# ------------------------------------------------------------------ round 4
def unmask_request_to_proto(message: UnmaskRequest) -> pb.UnmaskRequest:
    """Return the protobuf form of the coordinator's unmask request with the survivors' signatures."""
    return pb.UnmaskRequest(
        session_id=message.session_id,
        survivors=list(message.survivors),
        dropped=list(message.dropped),
        signatures=[survivor_signature_to_proto(signature) for signature in message.signatures],
    )


def unmask_request_from_proto(message: pb.UnmaskRequest) -> UnmaskRequest:
    """Return the domain unmask request."""
    return UnmaskRequest(
        session_id=_session_id(message.session_id, "UnmaskRequest.session_id"),
        survivors=_participants(message.survivors, "UnmaskRequest.survivors"),
        dropped=_participants(message.dropped, "UnmaskRequest.dropped"),
        signatures=tuple(
            survivor_signature_from_proto(signature, f"UnmaskRequest.signatures[{i}]")
            for i, signature in enumerate(message.signatures)
        ),
    )


def revealed_share_to_proto(message: RevealedShare) -> pb.RevealedShare:
    """Return the protobuf form of one revealed share."""
    return pb.RevealedShare(owner=message.owner, value=message.value)


def revealed_share_from_proto(message: pb.RevealedShare, field: str = "RevealedShare") -> RevealedShare:
    """Return the domain revealed share."""
    return RevealedShare(owner=_participant(message.owner, f"{field}.owner"), value=message.value)


def unmask_response_to_proto(message: UnmaskResponse) -> pb.UnmaskResponse:
    """Return the protobuf form of a survivor's unmask response."""
    return pb.UnmaskResponse(
        session_id=message.session_id,
        sender=message.sender,
        self_seed_shares=[revealed_share_to_proto(share) for share in message.self_seed_shares],
        mask_key_shares=[revealed_share_to_proto(share) for share in message.mask_key_shares],
    )


def unmask_response_from_proto(message: pb.UnmaskResponse) -> UnmaskResponse:
    """Return the domain unmask response."""
    return UnmaskResponse(
        session_id=_session_id(message.session_id, "UnmaskResponse.session_id"),
        sender=_participant(message.sender, "UnmaskResponse.sender"),
        self_seed_shares=tuple(
            revealed_share_from_proto(share, f"UnmaskResponse.self_seed_shares[{i}]")
            for i, share in enumerate(message.self_seed_shares)
        ),
        mask_key_shares=tuple(
            revealed_share_from_proto(share, f"UnmaskResponse.mask_key_shares[{i}]")
            for i, share in enumerate(message.mask_key_shares)
        ),
    )


# ------------------------------------------------------------------ dispatch
_TO_PROTO: dict[type, Callable[[Any], Any]] = {
    SessionParameters: session_parameters_to_proto,
    KeyAdvertisement: key_advertisement_to_proto,
    Roster: roster_to_proto,
    EncryptedShare: encrypted_share_to_proto,
    ShareDigest: share_digest_to_proto,
    ShareKeys: share_keys_to_proto,
    ShareDelivery: share_delivery_to_proto,
    MaskedInputChunk: masked_input_chunk_to_proto,
    MaskedInputDone: masked_input_done_to_proto,
    ConsistencyCheck: consistency_check_to_proto,
    SurvivorSignature: survivor_signature_to_proto,
    UnmaskRequest: unmask_request_to_proto,
    RevealedShare: revealed_share_to_proto,
    UnmaskResponse: unmask_response_to_proto,
}

_FROM_PROTO: dict[type, Callable[[Any], Any]] = {
    pb.SessionParameters: session_parameters_from_proto,
    pb.KeyAdvertisement: key_advertisement_from_proto,
    pb.Roster: roster_from_proto,
    pb.EncryptedShare: encrypted_share_from_proto,
    pb.ShareDigest: share_digest_from_proto,
    pb.ShareKeys: share_keys_from_proto,
    pb.ShareDelivery: share_delivery_from_proto,
    pb.MaskedInputChunk: masked_input_chunk_from_proto,
    pb.MaskedInputDone: masked_input_done_from_proto,
    pb.ConsistencyCheck: consistency_check_from_proto,
    pb.SurvivorSignature: survivor_signature_from_proto,
    pb.UnmaskRequest: unmask_request_from_proto,
    pb.RevealedShare: revealed_share_from_proto,
    pb.UnmaskResponse: unmask_response_from_proto,
}


def to_proto(message: DomainMessage) -> Any:
    """Return the ``fedprune.v1`` protobuf message for a secure-aggregation domain message."""
    try:
        convert = _TO_PROTO[type(message)]
    except KeyError:
        raise TypeError(f"no protobuf form for {type(message).__name__}") from None
    return convert(message)


def from_proto(message: Any) -> DomainMessage:
    """Return the domain message for a ``fedprune.v1`` secure-aggregation protobuf message."""
    try:
        convert = _FROM_PROTO[type(message)]
    except KeyError:
        raise TypeError(f"no domain form for {type(message).__name__}") from None
    result: DomainMessage = convert(message)
    return result


def require_field(message: Any, name: str) -> Any:
    """Return sub-message ``name`` of ``message``, raising InvalidMessageError naming it when absent."""
    return _require(message, name, type(message).__name__)
