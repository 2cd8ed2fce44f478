from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionParameters(_message.Message):
    __slots__ = ("participant_ids", "threshold", "dimension", "chunk_coordinates", "max_input", "context", "protocol_version", "colluders", "ring_headroom")
    PARTICIPANT_IDS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLUDERS_FIELD_NUMBER: _ClassVar[int]
    RING_HEADROOM_FIELD_NUMBER: _ClassVar[int]
    participant_ids: _containers.RepeatedScalarFieldContainer[int]
    threshold: int
    dimension: int
    chunk_coordinates: int
    max_input: int
    context: bytes
    protocol_version: int
    colluders: int
    ring_headroom: bool
    def __init__(self, participant_ids: _Optional[_Iterable[int]] = ..., threshold: _Optional[int] = ..., dimension: _Optional[int] = ..., chunk_coordinates: _Optional[int] = ..., max_input: _Optional[int] = ..., context: _Optional[bytes] = ..., protocol_version: _Optional[int] = ..., colluders: _Optional[int] = ..., ring_headroom: _Optional[bool] = ...) -> None: ...

class KeyAdvertisement(_message.Message):
    __slots__ = ("participant", "cipher_public_key", "mask_public_key", "signature")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    participant: int
    cipher_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    def __init__(self, participant: _Optional[int] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Roster(_message.Message):
    __slots__ = ("advertisements",)
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    advertisements: _containers.RepeatedCompositeFieldContainer[KeyAdvertisement]
    def __init__(self, advertisements: _Optional[_Iterable[_Union[KeyAdvertisement, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareDigest(_message.Message):
    __slots__ = ("holder", "self_seed_share", "mask_key_share")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    SELF_SEED_SHARE_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    holder: int
    self_seed_share: bytes
    mask_key_share: bytes
    def __init__(self, holder: _Optional[int] = ..., self_seed_share: _Optional[bytes] = ..., mask_key_share: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("session_id", "sender", "envelopes", "self_seed_commitment", "share_digests")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    SELF_SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARE_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: int
    envelopes: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    self_seed_commitment: bytes
    share_digests: _containers.RepeatedCompositeFieldContainer[ShareDigest]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[int] = ..., envelopes: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., self_seed_commitment: _Optional[bytes] = ..., share_digests: _Optional[_Iterable[_Union[ShareDigest, _Mapping]]] = ...) -> None: ...

class ShareDelivery(_message.Message):
    __slots__ = ("session_id", "recipient", "envelopes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    recipient: int
    envelopes: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, session_id: _Optional[bytes] = ..., recipient: _Optional[int] = ..., envelopes: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputChunk(_message.Message):
    __slots__ = ("session_id", "participant", "chunk_index", "payload")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    participant: int
    chunk_index: int
    payload: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., participant: _Optional[int] = ..., chunk_index: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class MaskedInputDone(_message.Message):
    __slots__ = ("session_id", "participant", "chunk_count", "digest")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    participant: int
    chunk_count: int
    digest: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., participant: _Optional[int] = ..., chunk_count: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class ConsistencyCheck(_message.Message):
    __slots__ = ("session_id", "survivors", "dropped")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("session_id", "sender", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: int
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("session_id", "survivors", "dropped", "signatures")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "value")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    value: bytes
    def __init__(self, owner: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("session_id", "sender", "self_seed_shares", "mask_key_shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SELF_SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: int
    self_seed_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[int] = ..., self_seed_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...
