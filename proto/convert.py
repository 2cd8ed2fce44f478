"""Every conversion between the roles' domain types and ``fedprune.v1`` protobuf messages: the one place.

Secure-aggregation messages (``privacy.secagg.messages``, ``SessionParameters``) convert with ``to_proto``
and ``from_proto`` or the per-message functions; the service's vocabulary (``proto.domain``: run
parameters, Join, tasks, session references, block masks, statements) converts with the functions of the
second half. Decoding checks what the wire cannot: that required sub-messages are present, participant ids
are valid Shamir points, session ids are SHA-256 digests, enums name a value and run parameters hold no
field this version does not read; a violation raises ``InvalidMessageError`` naming the field
(``ShareKeys.envelopes[2].sender``), which a servicer maps to INVALID_ARGUMENT. Key, nonce and signature
sizes are checked by the state machines that use them, so they are not checked twice here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
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
from proto import domain
from proto.fedprune.v1 import secagg_pb2 as pb
from proto.fedprune.v1 import service_pb2 as spb
from proto.limits import MAX_CHUNK_PAYLOAD_BYTES
from pruning.masks import ComparisonGroup, SparsityPattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe

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
def session_parameters_to_proto(parameters: SessionParameters | domain.SessionTerms) -> pb.SessionParameters:
    """Return the protobuf form of a session's public parameters (validated or as announced)."""
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


def session_terms_from_proto(message: pb.SessionParameters) -> domain.SessionTerms:
    """Return a session's parameters as announced, not yet accepted (nothing is checked but the wire types)."""
    return domain.SessionTerms(
        participant_ids=tuple(message.participant_ids),
        threshold=message.threshold,
        dimension=message.dimension,
        chunk_coordinates=message.chunk_coordinates,
        max_input=message.max_input,
        context=message.context,
        protocol_version=message.protocol_version,
        colluders=message.colluders,
        ring_headroom=message.ring_headroom,
    )


def session_parameters_from_terms(
    terms: domain.SessionTerms | SessionParameters, *, max_bit_width: int = MAX_BIT_WIDTH
) -> SessionParameters:
    """Return validated SessionParameters of announced terms (PrivacyError names the bad field).

    ``allow_unsafe_threshold`` is always False here: it has no wire field, so a coordinator can never
    talk a participant into a threshold below the safe minimum. ``max_bit_width`` is the receiver's own
    acceptance limit on the ring (16 for keep-votes; a FedSpaLLM participant raises it for the packed
    vote-and-weight ring), never read from the wire.
    """
    return SessionParameters(
        participant_ids=_participants(terms.participant_ids, "SessionParameters.participant_ids"),
        threshold=terms.threshold,
        dimension=terms.dimension,
        chunk_coordinates=terms.chunk_coordinates,
        max_input=terms.max_input,
        context=terms.context,
        protocol_version=terms.protocol_version,
        colluders=terms.colluders,
        ring_headroom=terms.ring_headroom,
        allow_unsafe_threshold=False,
        max_bit_width=max_bit_width,
    )


def session_parameters_from_proto(
    message: pb.SessionParameters, *, max_bit_width: int = MAX_BIT_WIDTH
) -> SessionParameters:
    """Return validated SessionParameters (``session_parameters_from_terms`` of the message's terms)."""
    return session_parameters_from_terms(session_terms_from_proto(message), max_bit_width=max_bit_width)


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


# ================================================================== the service's vocabulary (proto.domain)
RUN_PARAMETERS_DIGEST_LABEL = b"fedprune/run-parameters\0"

_METHODS: dict[Method, int] = {
    Method.MAGNITUDE: spb.METHOD_MAGNITUDE,
    Method.WANDA: spb.METHOD_WANDA,
    Method.SPARSEGPT: spb.METHOD_SPARSEGPT,
    Method.RIA: spb.METHOD_RIA,
}
_GROUPS: dict[ComparisonGroup, int] = {
    ComparisonGroup.LAYER: spb.COMPARISON_GROUP_LAYER,
    ComparisonGroup.ROW: spb.COMPARISON_GROUP_ROW,
    ComparisonGroup.COLUMN: spb.COMPARISON_GROUP_COLUMN,
}
_MODES: dict[Mode, int] = {Mode.ONE_SHOT: spb.MODE_ONE_SHOT, Mode.ITERATIVE: spb.MODE_ITERATIVE}
_RECIPES: dict[Recipe, int] = {
    Recipe.FEDPRLLM: spb.RECIPE_FEDPRLLM,
    Recipe.FEDSPALLM: spb.RECIPE_FEDSPALLM,
    Recipe.STATISTICS: spb.RECIPE_STATISTICS,
}


def _enum_from_proto(table: dict[Any, int], value: int, field: str) -> Any:
    for member, number in table.items():
        if number == value:
            return member
    raise InvalidMessageError(
        f"{field} must be one of {', '.join(sorted(m.value for m in table))}, got wire value {value}"
    )


# ------------------------------------------------------------------ run parameters
def privacy_parameters_to_proto(privacy: domain.AnnouncedPrivacy) -> spb.PrivacyParameters:
    """Return the protobuf form of the run's privacy parameters (absent optionals stay absent)."""
    message = spb.PrivacyParameters(
        randomized_response=privacy.randomized_response,
        epsilon0=privacy.epsilon0,
        record_level_dp=privacy.record_level_dp,
        delta=privacy.delta,
        sample_rate=privacy.sample_rate,
    )
    if privacy.noise_multiplier is not None:
        message.noise_multiplier = privacy.noise_multiplier
    if privacy.target_epsilon is not None:
        message.target_epsilon = privacy.target_epsilon
    if privacy.accountant_tolerance is not None:
        message.accountant_tolerance = privacy.accountant_tolerance
    return message


def privacy_parameters_from_proto(message: spb.PrivacyParameters) -> domain.AnnouncedPrivacy:
    """Return the run's privacy parameters as announced (absent optionals as None; nothing checked)."""
    return domain.AnnouncedPrivacy(
        randomized_response=message.randomized_response,
        epsilon0=message.epsilon0,
        record_level_dp=message.record_level_dp,
        delta=message.delta,
        sample_rate=message.sample_rate,
        noise_multiplier=message.noise_multiplier if message.HasField("noise_multiplier") else None,
        target_epsilon=message.target_epsilon if message.HasField("target_epsilon") else None,
        accountant_tolerance=(
            message.accountant_tolerance if message.HasField("accountant_tolerance") else None
        ),
    )


def run_parameters_to_proto(run: domain.RunParameters) -> spb.RunParameters:
    """Return the protobuf form of the run's parameters (what Join announces)."""
    return spb.RunParameters(
        run_id=run.run_id,
        method=_METHODS[run.method],  # type: ignore[arg-type]
        pattern=spb.SparsityPattern(sparsity=run.pattern.sparsity, n=run.pattern.n, m=run.pattern.m),
        group=_GROUPS[run.group],  # type: ignore[arg-type]
        mode=_MODES[run.mode],  # type: ignore[arg-type]
        nsamples=run.nsamples,
        seqlen=run.seqlen,
        privacy=privacy_parameters_to_proto(run.privacy),
        participants=run.participants,
        min_participants=run.min_participants,
        threshold=run.threshold,
        chunk_coordinates=run.chunk_coordinates,
        blocks=run.blocks,
        vote_layout_fingerprint=run.vote_layout_fingerprint,
        base_model_fingerprint=run.base_model_fingerprint,
        weight_scaling=run.weight_scaling,
        protocol_version=run.protocol_version,
        recipe=_RECIPES[run.recipe],  # type: ignore[arg-type]
        colluders=run.colluders,
        max_input=run.max_input,
        participant_names=list(run.participant_names),
        owl=(
            None
            if run.owl is None
            else spb.OwlParameters(outlier_multiple=run.owl.outlier_multiple, **{"lambda": run.owl.lam})
        ),
    )


def run_parameters_from_proto(message: spb.RunParameters) -> domain.RunParameters:
    """Return the run's parameters; InvalidMessageError unless the message is exactly their encoding.

    Every enum must name a value (no UNSPECIFIED), and the message must re-encode to the very bytes it
    came as (no field this version does not read): so ``run_parameters_digest`` of the result is the
    digest of the message as received, and two messages a participant accepts differ in their digest
    exactly when they differ at all.
    """
    run = domain.RunParameters(
        run_id=message.run_id,
        method=_enum_from_proto(_METHODS, message.method, "RunParameters.method"),
        pattern=SparsityPattern(sparsity=message.pattern.sparsity, n=message.pattern.n, m=message.pattern.m),
        group=_enum_from_proto(_GROUPS, message.group, "RunParameters.group"),
        mode=_enum_from_proto(_MODES, message.mode, "RunParameters.mode"),
        recipe=_enum_from_proto(_RECIPES, message.recipe, "RunParameters.recipe"),
        nsamples=message.nsamples,
        seqlen=message.seqlen,
        privacy=privacy_parameters_from_proto(message.privacy),
        participants=message.participants,
        min_participants=message.min_participants,
        threshold=message.threshold,
        colluders=message.colluders,
        max_input=message.max_input,
        chunk_coordinates=message.chunk_coordinates,
        blocks=message.blocks,
        vote_layout_fingerprint=message.vote_layout_fingerprint,
        base_model_fingerprint=message.base_model_fingerprint,
        weight_scaling=message.weight_scaling,
        protocol_version=message.protocol_version,
        participant_names=tuple(message.participant_names),
        owl=(
            domain.OwlTerms(outlier_multiple=message.owl.outlier_multiple, lam=getattr(message.owl, "lambda"))
            if message.HasField("owl")
            else None
        ),
    )
    received = message.SerializeToString(deterministic=True)
    if run_parameters_to_proto(run).SerializeToString(deterministic=True) != received:
        raise InvalidMessageError(
            "RunParameters carries fields this version does not read: a participant binds itself to every "
            "byte of the run it joins, so it refuses a run it cannot read whole"
        )
    return run


def run_parameters_digest(run: domain.RunParameters) -> bytes:
    """Return SHA-256 over the run parameters' deterministic protobuf serialization (what a site joined under).

    The canonical wire encoding, not a domain-side rendering: a digest stored by an earlier version of
    the participant, over the message as received, is the digest of the same run here.
    """
    encoded = run_parameters_to_proto(run).SerializeToString(deterministic=True)
    return hashlib.sha256(RUN_PARAMETERS_DIGEST_LABEL + encoded).digest()


# ------------------------------------------------------------------ Join
def join_request_to_proto(request: domain.JoinRequest) -> spb.JoinRequest:
    """Return the protobuf form of a Join request (the data size class is never stated)."""
    return spb.JoinRequest(
        base_model_fingerprint=request.base_model_fingerprint,
        data_size_class=spb.DATA_SIZE_CLASS_UNSPECIFIED,
        capabilities=spb.Capabilities(
            devices=list(request.devices),
            protocol_versions=list(request.protocol_versions),
            max_blocks=request.max_blocks or 0,
        ),
        identity_public_key=request.identity_public_key,
        software_version=request.software_version,
    )


def join_request_from_proto(message: spb.JoinRequest) -> domain.JoinRequest:
    """Return the domain Join request (``max_blocks`` 0 on the wire reads as no limit)."""
    capabilities = message.capabilities
    return domain.JoinRequest(
        base_model_fingerprint=bytes(message.base_model_fingerprint),
        identity_public_key=bytes(message.identity_public_key),
        software_version=message.software_version,
        devices=tuple(capabilities.devices),
        protocol_versions=tuple(capabilities.protocol_versions),
        max_blocks=int(capabilities.max_blocks) or None,
    )


def join_reply_to_proto(reply: domain.JoinReply) -> spb.JoinReply:
    """Return the protobuf form of the coordinator's answer to Join."""
    return spb.JoinReply(
        run=run_parameters_to_proto(reply.run), participant_id=reply.participant_id, name=reply.name
    )


def join_reply_from_proto(message: spb.JoinReply) -> domain.JoinReply:
    """Return the domain answer to Join (InvalidMessageError when the run is absent or unreadable)."""
    return domain.JoinReply(
        run=run_parameters_from_proto(_require(message, "run", "JoinReply")),
        participant_id=message.participant_id,
        name=message.name,
    )


# ------------------------------------------------------------------ tasks
def session_ref_to_proto(ref: domain.SessionRef) -> spb.SessionRef:
    """Return the protobuf form of a session reference."""
    return spb.SessionRef(run_id=ref.run_id, block=ref.block, session_id=ref.session_id)


def session_ref_from_proto(message: spb.SessionRef) -> domain.SessionRef:
    """Return the domain session reference (an absent one reads as empty: run b"", block 0)."""
    return domain.SessionRef(
        run_id=bytes(message.run_id), block=int(message.block), session_id=bytes(message.session_id)
    )


def member_to_proto(member: domain.Member) -> spb.Member:
    """Return the protobuf form of one session member."""
    return spb.Member(
        participant_id=member.participant_id, name=member.name, identity_public_key=member.identity_key
    )


def member_from_proto(message: spb.Member) -> domain.Member:
    """Return the domain session member (its id and key are checked by the receiver against the run)."""
    return domain.Member(
        name=message.name,
        participant_id=int(message.participant_id),
        identity_key=bytes(message.identity_public_key),
    )


def task_to_proto(assigned: domain.Assigned) -> spb.Task:
    """Return the wire form of an assigned task; its session references name ``assigned.run_id``."""
    task = assigned.task
    run_id = assigned.run_id
    message = spb.Task(sequence=assigned.sequence)

    def ref(block: int, session_id: bytes = b"") -> spb.SessionRef:
        return spb.SessionRef(run_id=run_id, block=block, session_id=session_id)

    if isinstance(task, domain.WaitTask):
        message.wait.CopyFrom(spb.Wait(retry_after_ms=0, reason=task.reason))
    elif isinstance(task, domain.StartSessionTask):
        message.start_session.CopyFrom(
            spb.StartSession(
                session=ref(task.block),
                parameters=session_parameters_to_proto(task.parameters),
                members=[member_to_proto(m) for m in task.members],
            )
        )
    elif isinstance(task, domain.ShareKeysTask):
        message.share_keys.CopyFrom(
            spb.ShareKeysTask(session=ref(task.block, task.session_id), roster=roster_to_proto(task.roster))
        )
    elif isinstance(task, domain.MaskedInputTask):
        message.masked_input.CopyFrom(
            spb.MaskedInputTask(
                session=ref(task.block, task.session_id),
                delivery=share_delivery_to_proto(task.delivery),
                resume_from_chunk=0,
            )
        )
    elif isinstance(task, domain.SignSurvivorsTask):
        message.sign_survivors.CopyFrom(
            spb.SignSurvivorsTask(
                session=ref(task.block, task.session_id), check=consistency_check_to_proto(task.check)
            )
        )
    elif isinstance(task, domain.UnmaskTask):
        message.unmask.CopyFrom(
            spb.UnmaskTask(
                session=ref(task.block, task.session_id), request=unmask_request_to_proto(task.request)
            )
        )
    elif isinstance(task, domain.StatementTask):
        message.statement.CopyFrom(spb.StatementTask(run_id=run_id))
    elif isinstance(task, domain.RunCompleteTask):
        message.run_complete.CopyFrom(spb.RunComplete(run_id=run_id))
    elif isinstance(task, domain.RunAbortedTask):
        message.run_aborted.CopyFrom(spb.RunAborted(run_id=run_id, reason=task.reason))
    else:  # pragma: no cover - every Task is listed above
        raise TypeError(f"no protobuf form for {type(task).__name__}")
    return message


def task_from_proto(message: spb.Task) -> domain.Assigned:
    """Return the domain task and its sequence; ``run_id`` is the run its session reference names.

    A task with no kind reads as a wait. The session task's payload is converted with its checks
    (InvalidMessageError naming the field); a session's parameters stay the announced ``SessionTerms``,
    which the receiver checks against its run before it accepts them.
    """
    kind = message.WhichOneof("kind")
    sequence = int(message.sequence)
    task: domain.Task
    if kind is None:
        return domain.Assigned(sequence, domain.WaitTask(reason=""))
    if kind == "wait":
        return domain.Assigned(sequence, domain.WaitTask(reason=message.wait.reason))
    if kind == "start_session":
        start = message.start_session
        ref = session_ref_from_proto(start.session)
        task = domain.StartSessionTask(
            ref.block,
            session_terms_from_proto(_require(start, "parameters", "StartSession")),
            tuple(member_from_proto(m) for m in start.members),
        )
        return domain.Assigned(sequence, task, ref.run_id)
    if kind == "share_keys":
        ref = session_ref_from_proto(message.share_keys.session)
        task = domain.ShareKeysTask(ref.block, ref.session_id, roster_from_proto(message.share_keys.roster))
        return domain.Assigned(sequence, task, ref.run_id)
    if kind == "masked_input":
        ref = session_ref_from_proto(message.masked_input.session)
        delivery = share_delivery_from_proto(message.masked_input.delivery)
        return domain.Assigned(
            sequence, domain.MaskedInputTask(ref.block, ref.session_id, delivery), ref.run_id
        )
    if kind == "sign_survivors":
        ref = session_ref_from_proto(message.sign_survivors.session)
        check = consistency_check_from_proto(message.sign_survivors.check)
        return domain.Assigned(
            sequence, domain.SignSurvivorsTask(ref.block, ref.session_id, check), ref.run_id
        )
    if kind == "unmask":
        ref = session_ref_from_proto(message.unmask.session)
        request = unmask_request_from_proto(message.unmask.request)
        return domain.Assigned(sequence, domain.UnmaskTask(ref.block, ref.session_id, request), ref.run_id)
    if kind == "statement":
        return domain.Assigned(sequence, domain.StatementTask(), bytes(message.statement.run_id))
    if kind == "run_complete":
        return domain.Assigned(sequence, domain.RunCompleteTask(), bytes(message.run_complete.run_id))
    if kind == "run_aborted":
        aborted = message.run_aborted
        return domain.Assigned(sequence, domain.RunAbortedTask(reason=aborted.reason), bytes(aborted.run_id))
    raise InvalidMessageError(f"Task.{kind} is not a task this version takes")


# ------------------------------------------------------------------ the participant's answers
def advertise_keys_request_to_proto(
    ref: domain.SessionRef, message: KeyAdvertisement
) -> spb.AdvertiseKeysRequest:
    """Return the AdvertiseKeys request of one session."""
    return spb.AdvertiseKeysRequest(
        session=session_ref_to_proto(ref), advertisement=key_advertisement_to_proto(message)
    )


def share_keys_request_to_proto(ref: domain.SessionRef, message: ShareKeys) -> spb.ShareKeysRequest:
    """Return the ShareKeys request of one session."""
    return spb.ShareKeysRequest(session=session_ref_to_proto(ref), share_keys=share_keys_to_proto(message))


def masked_input_parts_to_proto(
    ref: domain.SessionRef, messages: Iterable[MaskedInputChunk | MaskedInputDone]
) -> list[spb.MaskedInputPart]:
    """Return the MaskedInput stream of one session: its chunks, then the closing message."""
    session = session_ref_to_proto(ref)
    parts = []
    for message in messages:
        if isinstance(message, MaskedInputChunk):
            parts.append(spb.MaskedInputPart(session=session, chunk=masked_input_chunk_to_proto(message)))
        else:
            parts.append(spb.MaskedInputPart(session=session, done=masked_input_done_to_proto(message)))
    return parts


def sign_survivors_request_to_proto(
    ref: domain.SessionRef, message: SurvivorSignature
) -> spb.SignSurvivorsRequest:
    """Return the SignSurvivors request of one session."""
    return spb.SignSurvivorsRequest(
        session=session_ref_to_proto(ref), signature=survivor_signature_to_proto(message)
    )


def unmask_submission_to_proto(ref: domain.SessionRef, message: UnmaskResponse) -> spb.UnmaskSubmission:
    """Return the Unmask request of one session."""
    return spb.UnmaskSubmission(session=session_ref_to_proto(ref), response=unmask_response_to_proto(message))


def signed_statement_to_proto(statement: domain.SignedStatement) -> spb.SubmitStatementRequest:
    """Return the SubmitStatement request carrying a signed privacy statement."""
    return spb.SubmitStatementRequest(
        statement=spb.SignedStatement(
            run_id=statement.run_id,
            participant=statement.participant,
            statement=statement.statement,
            signature=statement.signature,
        )
    )


def signed_statement_from_proto(message: spb.SubmitStatementRequest) -> domain.SignedStatement:
    """Return the domain signed statement (its JSON and signature are checked by the receiver)."""
    signed = message.statement
    return domain.SignedStatement(
        run_id=bytes(signed.run_id),
        participant=int(signed.participant),
        statement=bytes(signed.statement),
        signature=bytes(signed.signature),
    )


# ------------------------------------------------------------------ global masks
def owl_allocation_request_to_proto(run_id: bytes) -> spb.OwlAllocationRequest:
    """Return the request for the run's OWL allocation."""
    return spb.OwlAllocationRequest(run_id=run_id)


def owl_allocation_to_proto(sparsities: Sequence[float]) -> spb.OwlAllocationReply:
    """Return the protobuf form of the run's per-block sparsities."""
    return spb.OwlAllocationReply(sparsities=list(sparsities))


def owl_allocation_from_proto(message: spb.OwlAllocationReply) -> tuple[float, ...]:
    """Return the per-block sparsities as announced (the receiver checks them against its own model)."""
    return tuple(float(s) for s in message.sparsities)


def block_mask_request_to_proto(run_id: bytes, block: int) -> spb.BlockMaskRequest:
    """Return the request for one block's global mask."""
    return spb.BlockMaskRequest(run_id=run_id, block=block)


def block_mask_to_chunks(
    mask: domain.BlockMask, *, chunk_bytes: int = MAX_CHUNK_PAYLOAD_BYTES
) -> list[spb.BlockMaskChunk]:
    """Return the BlockMask stream of one global mask: pieces of ``chunk_bytes``, the last one closing it.

    Every chunk states the bit count and layout fingerprint, the last one the digest; an empty mask is one
    empty, closing chunk.
    """
    packed = mask.packed
    pieces = [packed[i : i + chunk_bytes] for i in range(0, len(packed), chunk_bytes)] or [b""]
    chunks = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        chunks.append(
            spb.BlockMaskChunk(
                block=mask.block,
                chunk_index=index,
                bit_count=mask.bit_count,
                packed=piece,
                layout_fingerprint=mask.layout_fingerprint,
                digest=mask.digest if last else b"",
                last=last and mask.complete,
            )
        )
    return chunks


def block_mask_from_chunks(block: int, chunks: Sequence[spb.BlockMaskChunk]) -> domain.BlockMask:
    """Return the global mask a BlockMask stream carried: its bytes joined, what its last chunk claims.

    Nothing is checked here: the receiver compares the digest, bit count, layout and length with what
    it derives from its own model. A stream without chunks reads as incomplete.
    """
    if not chunks:
        return domain.BlockMask(
            block=block, packed=b"", bit_count=0, layout_fingerprint=b"", digest=b"", complete=False
        )
    last = chunks[-1]
    return domain.BlockMask(
        block=block,
        packed=b"".join(bytes(chunk.packed) for chunk in chunks),
        bit_count=int(last.bit_count),
        layout_fingerprint=bytes(last.layout_fingerprint),
        digest=bytes(last.digest),
        complete=bool(last.last),
    )


def block_mask_of(
    block: int, packed: bytes, *, bit_count: int, layout_fingerprint: bytes
) -> domain.BlockMask:
    """Return the complete global mask of ``packed`` bits, with its SHA-256 digest."""
    return domain.BlockMask(
        block=block,
        packed=packed,
        bit_count=bit_count,
        layout_fingerprint=layout_fingerprint,
        digest=hashlib.sha256(packed).digest(),
        complete=True,
    )


def block_weights_request_to_proto(run_id: bytes, block: int) -> spb.BlockWeightsRequest:
    """Return the request for one block's final weights."""
    return spb.BlockWeightsRequest(run_id=run_id, block=block)


def block_weights_of(block: int, data: bytes) -> domain.BlockWeights:
    """Return a block's complete final weights (safetensors ``data``), with their SHA-256 digest."""
    return domain.BlockWeights(
        block=block,
        data=data,
        total_bytes=len(data),
        digest=hashlib.sha256(data).digest(),
        complete=True,
    )


def block_weights_to_chunks(
    weights: domain.BlockWeights, *, chunk_bytes: int = MAX_CHUNK_PAYLOAD_BYTES
) -> list[spb.BlockWeightsChunk]:
    """Return the BlockWeights stream of one block's weights: pieces of ``chunk_bytes``, the last closing it."""
    data = weights.data
    pieces = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    return [
        spb.BlockWeightsChunk(
            block=weights.block,
            chunk_index=index,
            total_bytes=weights.total_bytes,
            data=piece,
            digest=weights.digest if index == len(pieces) - 1 else b"",
            last=index == len(pieces) - 1 and weights.complete,
        )
        for index, piece in enumerate(pieces)
    ]


def block_weights_from_chunks(block: int, chunks: Sequence[spb.BlockWeightsChunk]) -> domain.BlockWeights:
    """Return the weights a BlockWeights stream carried: its bytes joined, what its last chunk claims.

    Nothing is checked here beyond the stream's own framing: the receiver compares the digest, the size and
    the tensors with what it derives from its own model and the block's mask. A stream without chunks, or
    whose chunks are out of order or disagree on the block or the size, reads as incomplete.
    """
    framed = bool(chunks) and all(
        int(chunk.chunk_index) == index
        and int(chunk.block) == block
        and int(chunk.total_bytes) == int(chunks[0].total_bytes)
        for index, chunk in enumerate(chunks)
    )
    if not framed:
        return domain.BlockWeights(block=block, data=b"", total_bytes=0, digest=b"", complete=False)
    last = chunks[-1]
    return domain.BlockWeights(
        block=block,
        data=b"".join(bytes(chunk.data) for chunk in chunks),
        total_bytes=int(last.total_bytes),
        digest=bytes(last.digest),
        complete=bool(last.last),
    )
