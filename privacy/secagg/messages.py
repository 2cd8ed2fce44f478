"""The protocol's messages: frozen dataclasses with explicit fields, independent of any transport.

Participant ids are ints in [1, 2**32 - 1] (they are the Shamir evaluation points); session ids are
32-byte SHA-256 digests; keys are raw 32-byte X25519/Ed25519 encodings. `wire_size` gives the size the
message would have as a protobuf with the same fields, which the benchmark reports as upload bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass

from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.parameters import PROTOCOL_VERSION
from privacy.secagg.shamir import SHARE_BYTES, Share

_DIGEST_LABEL = b"fedprune/secagg/v%d/masked-input" % PROTOCOL_VERSION


@dataclass(frozen=True)
class KeyAdvertisement:
    """Round 0, participant -> server: two fresh X25519 public keys signed with the identity key."""

    participant: int
    cipher_public_key: bytes
    mask_public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class Roster:
    """Round 0, server -> participants: every advertisement it accepted (the set U1), sorted by id."""

    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """One AES-GCM envelope holding the sender's two shares for one recipient; the server only relays it."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class ShareDigest:
    """The owner's SHA-256 digests of the two shares one holder got (`primitives.share_digest`)."""

    holder: int
    self_seed_share: bytes
    mask_key_share: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, participant -> server: one envelope for every other member of U1, and its commitments.

    `self_seed_commitment` binds the self seed the server will reconstruct; `share_digests` (one per
    member of U1, the sender included) let the server check every revealed share on its own.
    """

    session_id: bytes
    sender: int
    envelopes: tuple[EncryptedShare, ...]
    self_seed_commitment: bytes
    share_digests: tuple[ShareDigest, ...]


@dataclass(frozen=True)
class ShareDelivery:
    """Round 1, server -> participant: the envelopes addressed to it from every member of U2."""

    session_id: bytes
    recipient: int
    envelopes: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedInputChunk:
    """Round 2, participant -> server (streamed): chunk `chunk_index` of y, packed to b bits a value."""

    session_id: bytes
    participant: int
    chunk_index: int
    payload: bytes


@dataclass(frozen=True)
class MaskedInputDone:
    """Round 2, participant -> server: closes the stream with a digest over all chunk hashes."""

    session_id: bytes
    participant: int
    chunk_count: int
    digest: bytes


@dataclass(frozen=True)
class ConsistencyCheck:
    """Round 3, server -> survivors: who survived (masked input arrived) and who dropped, from U2."""

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class SurvivorSignature:
    """Round 3, survivor -> server: its Ed25519 signature over the session id and the survivor set."""

    session_id: bytes
    sender: int
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server -> signers: the survivor set again and at least t survivors' signatures over it."""

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SurvivorSignature, ...]


@dataclass(frozen=True)
class RevealedShare:
    """A share the sender holds of `owner`'s secret; the sender's id is the evaluation point."""

    owner: int
    value: bytes


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4, survivor -> server: self-seed shares of survivors, mask-key shares of dropouts, never both."""

    session_id: bytes
    sender: int
    self_seed_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]


@dataclass(frozen=True)
class RecordedChunk:
    """What the server's recorded view keeps of a masked chunk when payloads are not retained."""

    session_id: bytes
    participant: int
    chunk_index: int
    payload_bytes: int
    payload_sha256: bytes


Message = (
    KeyAdvertisement
    | Roster
    | ShareKeys
    | ShareDelivery
    | MaskedInputChunk
    | MaskedInputDone
    | ConsistencyCheck
    | SurvivorSignature
    | UnmaskRequest
    | UnmaskResponse
)

SenderMessage = (
    KeyAdvertisement | ShareKeys | MaskedInputChunk | MaskedInputDone | SurvivorSignature | UnmaskResponse
)
"""The messages a participant sends; each names its sender in one field (`sender_of`)."""


def sender_of(message: SenderMessage) -> int:
    """Return the participant id a participant-to-server message claims as its sender."""
    if isinstance(message, KeyAdvertisement | MaskedInputChunk | MaskedInputDone):
        return message.participant
    if isinstance(message, ShareKeys | SurvivorSignature | UnmaskResponse):
        return message.sender
    raise TypeError(f"{type(message).__name__} is not sent by a participant")


def require_sender(message: SenderMessage, *, authenticated: int) -> None:
    """Return None if `message` names `authenticated` (the transport identity) as its sender; raises otherwise.

    A transport calls this on every message before handing it to the server, so a participant can never
    speak for another one (for example send a survivor's unmask response or stream under its id).
    """
    claimed = sender_of(message)
    if claimed != authenticated:
        raise InvalidMessageError(
            f"{type(message).__name__} names participant {claimed} as its sender but "
            f"arrived from participant {authenticated}"
        )


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_size(value: object) -> int:
    if isinstance(value, bytes):
        return 1 + _varint_size(len(value)) + len(value)
    if isinstance(value, bool | int):
        return 1 + _varint_size(int(value))
    if isinstance(value, tuple):
        return sum(_field_size(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = wire_size(value)
        return 1 + _varint_size(inner) + inner
    raise TypeError(f"no wire size for {type(value).__name__}")


def wire_size(message: object) -> int:
    """Return the bytes `message` takes as a protobuf with the same fields (tags 1..15, varints)."""
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        raise TypeError("wire_size takes a message dataclass instance")
    return sum(_field_size(getattr(message, f.name)) for f in dataclasses.fields(message))


def chunk_hash(chunk_index: int, payload: bytes) -> bytes:
    """Return SHA-256 over a chunk's index and payload (one leaf of the stream digest)."""
    h = hashlib.sha256(struct.pack(">Q", chunk_index))
    h.update(payload)  # no concatenation: payloads are MiB-sized
    return h.digest()


def stream_digest(*, session_id: bytes, participant: int, chunk_hashes: list[bytes]) -> bytes:
    """Return the digest that closes a masked-input stream: SHA-256 over ids and every chunk hash."""
    h = hashlib.sha256(_DIGEST_LABEL + session_id + struct.pack(">IQ", participant, len(chunk_hashes)))
    for leaf in chunk_hashes:
        h.update(leaf)
    return h.digest()


def encode_share_plaintext(
    *, sender: int, recipient: int, self_seed_share: Share, mask_key_share: Share
) -> bytes:
    """Return the plaintext of an envelope: both ids, then the two 33-byte share values."""
    return struct.pack(">II", sender, recipient) + self_seed_share.y_bytes() + mask_key_share.y_bytes()


def decode_share_plaintext(plaintext: bytes, *, sender: int, recipient: int) -> tuple[Share, Share]:
    """Return (self-seed share, mask-key share) after checking the ids inside the envelope."""
    if len(plaintext) != 8 + 2 * SHARE_BYTES:
        raise InvalidMessageError("share envelope has the wrong length")
    inner_sender, inner_recipient = struct.unpack(">II", plaintext[:8])
    if (inner_sender, inner_recipient) != (sender, recipient):
        raise InvalidMessageError("share envelope is addressed to another pair of participants")
    self_seed = Share.from_bytes(recipient, plaintext[8 : 8 + SHARE_BYTES])
    mask_key = Share.from_bytes(recipient, plaintext[8 + SHARE_BYTES :])
    return self_seed, mask_key
