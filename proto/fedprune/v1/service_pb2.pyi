from proto.fedprune.v1 import secagg_pb2 as _secagg_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_MAGNITUDE: _ClassVar[Method]
    METHOD_WANDA: _ClassVar[Method]
    METHOD_SPARSEGPT: _ClassVar[Method]
    METHOD_RIA: _ClassVar[Method]

class ComparisonGroup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_GROUP_UNSPECIFIED: _ClassVar[ComparisonGroup]
    COMPARISON_GROUP_LAYER: _ClassVar[ComparisonGroup]
    COMPARISON_GROUP_ROW: _ClassVar[ComparisonGroup]
    COMPARISON_GROUP_COLUMN: _ClassVar[ComparisonGroup]

class Recipe(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECIPE_UNSPECIFIED: _ClassVar[Recipe]
    RECIPE_FEDPRLLM: _ClassVar[Recipe]
    RECIPE_FEDSPALLM: _ClassVar[Recipe]
    RECIPE_STATISTICS: _ClassVar[Recipe]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_ONE_SHOT: _ClassVar[Mode]
    MODE_ITERATIVE: _ClassVar[Mode]

class DataSizeClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_SIZE_CLASS_UNSPECIFIED: _ClassVar[DataSizeClass]
    DATA_SIZE_CLASS_SMALL: _ClassVar[DataSizeClass]
    DATA_SIZE_CLASS_MEDIUM: _ClassVar[DataSizeClass]
    DATA_SIZE_CLASS_LARGE: _ClassVar[DataSizeClass]
METHOD_UNSPECIFIED: Method
METHOD_MAGNITUDE: Method
METHOD_WANDA: Method
METHOD_SPARSEGPT: Method
METHOD_RIA: Method
COMPARISON_GROUP_UNSPECIFIED: ComparisonGroup
COMPARISON_GROUP_LAYER: ComparisonGroup
COMPARISON_GROUP_ROW: ComparisonGroup
COMPARISON_GROUP_COLUMN: ComparisonGroup
RECIPE_UNSPECIFIED: Recipe
RECIPE_FEDPRLLM: Recipe
RECIPE_FEDSPALLM: Recipe
RECIPE_STATISTICS: Recipe
MODE_UNSPECIFIED: Mode
MODE_ONE_SHOT: Mode
MODE_ITERATIVE: Mode
DATA_SIZE_CLASS_UNSPECIFIED: DataSizeClass
DATA_SIZE_CLASS_SMALL: DataSizeClass
DATA_SIZE_CLASS_MEDIUM: DataSizeClass
DATA_SIZE_CLASS_LARGE: DataSizeClass

class SparsityPattern(_message.Message):
    __slots__ = ("sparsity", "n", "m")
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    sparsity: float
    n: int
    m: int
    def __init__(self, sparsity: _Optional[float] = ..., n: _Optional[int] = ..., m: _Optional[int] = ...) -> None: ...

class PrivacyParameters(_message.Message):
    __slots__ = ("randomized_response", "epsilon0", "record_level_dp", "noise_multiplier", "target_epsilon", "delta", "sample_rate", "accountant_tolerance")
    RANDOMIZED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    EPSILON0_FIELD_NUMBER: _ClassVar[int]
    RECORD_LEVEL_DP_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    randomized_response: bool
    epsilon0: float
    record_level_dp: bool
    noise_multiplier: float
    target_epsilon: float
    delta: float
    sample_rate: float
    accountant_tolerance: float
    def __init__(self, randomized_response: _Optional[bool] = ..., epsilon0: _Optional[float] = ..., record_level_dp: _Optional[bool] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., sample_rate: _Optional[float] = ..., accountant_tolerance: _Optional[float] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("devices", "memory_bytes", "max_message_bytes", "protocol_versions", "max_blocks")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    max_message_bytes: int
    protocol_versions: _containers.RepeatedScalarFieldContainer[int]
    max_blocks: int
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., protocol_versions: _Optional[_Iterable[int]] = ..., max_blocks: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("base_model_fingerprint", "data_size_class", "capabilities", "identity_public_key", "software_version")
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    base_model_fingerprint: bytes
    data_size_class: DataSizeClass
    capabilities: Capabilities
    identity_public_key: bytes
    software_version: str
    def __init__(self, base_model_fingerprint: _Optional[bytes] = ..., data_size_class: _Optional[_Union[DataSizeClass, str]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., identity_public_key: _Optional[bytes] = ..., software_version: _Optional[str] = ...) -> None: ...

class RunParameters(_message.Message):
    __slots__ = ("run_id", "method", "pattern", "group", "mode", "nsamples", "seqlen", "privacy", "participants", "min_participants", "threshold", "chunk_coordinates", "blocks", "vote_layout_fingerprint", "base_model_fingerprint", "weight_scaling", "protocol_version", "recipe", "colluders", "max_input", "participant_names", "owl")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NSAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEQLEN_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    VOTE_LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SCALING_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    COLLUDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OWL_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    method: Method
    pattern: SparsityPattern
    group: ComparisonGroup
    mode: Mode
    nsamples: int
    seqlen: int
    privacy: PrivacyParameters
    participants: int
    min_participants: int
    threshold: int
    chunk_coordinates: int
    blocks: int
    vote_layout_fingerprint: bytes
    base_model_fingerprint: bytes
    weight_scaling: bool
    protocol_version: int
    recipe: Recipe
    colluders: int
    max_input: int
    participant_names: _containers.RepeatedScalarFieldContainer[str]
    owl: OwlParameters
    def __init__(self, run_id: _Optional[bytes] = ..., method: _Optional[_Union[Method, str]] = ..., pattern: _Optional[_Union[SparsityPattern, _Mapping]] = ..., group: _Optional[_Union[ComparisonGroup, str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., nsamples: _Optional[int] = ..., seqlen: _Optional[int] = ..., privacy: _Optional[_Union[PrivacyParameters, _Mapping]] = ..., participants: _Optional[int] = ..., min_participants: _Optional[int] = ..., threshold: _Optional[int] = ..., chunk_coordinates: _Optional[int] = ..., blocks: _Optional[int] = ..., vote_layout_fingerprint: _Optional[bytes] = ..., base_model_fingerprint: _Optional[bytes] = ..., weight_scaling: _Optional[bool] = ..., protocol_version: _Optional[int] = ..., recipe: _Optional[_Union[Recipe, str]] = ..., colluders: _Optional[int] = ..., max_input: _Optional[int] = ..., participant_names: _Optional[_Iterable[str]] = ..., owl: _Optional[_Union[OwlParameters, _Mapping]] = ...) -> None: ...

class OwlParameters(_message.Message):
    __slots__ = ("outlier_multiple",)
    OUTLIER_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    outlier_multiple: float
    def __init__(self, outlier_multiple: _Optional[float] = ..., **kwargs) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("run", "participant_id", "name")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run: RunParameters
    participant_id: int
    name: str
    def __init__(self, run: _Optional[_Union[RunParameters, _Mapping]] = ..., participant_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("run_id", "block", "session_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    block: int
    session_id: bytes
    def __init__(self, run_id: _Optional[bytes] = ..., block: _Optional[int] = ..., session_id: _Optional[bytes] = ...) -> None: ...

class AwaitRequest(_message.Message):
    __slots__ = ("run_id", "max_wait_ms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    max_wait_ms: int
    def __init__(self, run_id: _Optional[bytes] = ..., max_wait_ms: _Optional[int] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("participant_id", "name", "identity_public_key")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    participant_id: int
    name: str
    identity_public_key: bytes
    def __init__(self, participant_id: _Optional[int] = ..., name: _Optional[str] = ..., identity_public_key: _Optional[bytes] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_ms", "reason")
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    reason: str
    def __init__(self, retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("session", "parameters", "members")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    parameters: _secagg_pb2.SessionParameters
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., parameters: _Optional[_Union[_secagg_pb2.SessionParameters, _Mapping]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class ShareKeysTask(_message.Message):
    __slots__ = ("session", "roster")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    roster: _secagg_pb2.Roster
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., roster: _Optional[_Union[_secagg_pb2.Roster, _Mapping]] = ...) -> None: ...

class MaskedInputTask(_message.Message):
    __slots__ = ("session", "delivery", "resume_from_chunk")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHUNK_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    delivery: _secagg_pb2.ShareDelivery
    resume_from_chunk: int
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., delivery: _Optional[_Union[_secagg_pb2.ShareDelivery, _Mapping]] = ..., resume_from_chunk: _Optional[int] = ...) -> None: ...

class SignSurvivorsTask(_message.Message):
    __slots__ = ("session", "check")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    check: _secagg_pb2.ConsistencyCheck
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., check: _Optional[_Union[_secagg_pb2.ConsistencyCheck, _Mapping]] = ...) -> None: ...

class UnmaskTask(_message.Message):
    __slots__ = ("session", "request")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    request: _secagg_pb2.UnmaskRequest
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., request: _Optional[_Union[_secagg_pb2.UnmaskRequest, _Mapping]] = ...) -> None: ...

class BlockMaskReady(_message.Message):
    __slots__ = ("run_id", "block")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    block: int
    def __init__(self, run_id: _Optional[bytes] = ..., block: _Optional[int] = ...) -> None: ...

class StatementTask(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    def __init__(self, run_id: _Optional[bytes] = ...) -> None: ...

class RunComplete(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    def __init__(self, run_id: _Optional[bytes] = ...) -> None: ...

class RunAborted(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    reason: str
    def __init__(self, run_id: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("sequence", "wait", "start_session", "share_keys", "masked_input", "sign_survivors", "unmask", "block_mask_ready", "statement", "run_complete", "run_aborted")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    START_SESSION_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    SIGN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MASK_READY_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RUN_ABORTED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    wait: Wait
    start_session: StartSession
    share_keys: ShareKeysTask
    masked_input: MaskedInputTask
    sign_survivors: SignSurvivorsTask
    unmask: UnmaskTask
    block_mask_ready: BlockMaskReady
    statement: StatementTask
    run_complete: RunComplete
    run_aborted: RunAborted
    def __init__(self, sequence: _Optional[int] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., start_session: _Optional[_Union[StartSession, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeysTask, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputTask, _Mapping]] = ..., sign_survivors: _Optional[_Union[SignSurvivorsTask, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskTask, _Mapping]] = ..., block_mask_ready: _Optional[_Union[BlockMaskReady, _Mapping]] = ..., statement: _Optional[_Union[StatementTask, _Mapping]] = ..., run_complete: _Optional[_Union[RunComplete, _Mapping]] = ..., run_aborted: _Optional[_Union[RunAborted, _Mapping]] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("session", "advertisement")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENT_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    advertisement: _secagg_pb2.KeyAdvertisement
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., advertisement: _Optional[_Union[_secagg_pb2.KeyAdvertisement, _Mapping]] = ...) -> None: ...

class AdvertiseKeysReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("session", "share_keys")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    share_keys: _secagg_pb2.ShareKeys
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., share_keys: _Optional[_Union[_secagg_pb2.ShareKeys, _Mapping]] = ...) -> None: ...

class ShareKeysReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MaskedInputPart(_message.Message):
    __slots__ = ("session", "chunk", "done")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    chunk: _secagg_pb2.MaskedInputChunk
    done: _secagg_pb2.MaskedInputDone
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., chunk: _Optional[_Union[_secagg_pb2.MaskedInputChunk, _Mapping]] = ..., done: _Optional[_Union[_secagg_pb2.MaskedInputDone, _Mapping]] = ...) -> None: ...

class MaskedInputReply(_message.Message):
    __slots__ = ("chunks_received", "digest")
    CHUNKS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    chunks_received: int
    digest: bytes
    def __init__(self, chunks_received: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class SignSurvivorsRequest(_message.Message):
    __slots__ = ("session", "signature")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    signature: _secagg_pb2.SurvivorSignature
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., signature: _Optional[_Union[_secagg_pb2.SurvivorSignature, _Mapping]] = ...) -> None: ...

class SignSurvivorsReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnmaskSubmission(_message.Message):
    __slots__ = ("session", "response")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    session: SessionRef
    response: _secagg_pb2.UnmaskResponse
    def __init__(self, session: _Optional[_Union[SessionRef, _Mapping]] = ..., response: _Optional[_Union[_secagg_pb2.UnmaskResponse, _Mapping]] = ...) -> None: ...

class UnmaskReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlockMaskRequest(_message.Message):
    __slots__ = ("run_id", "block")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    block: int
    def __init__(self, run_id: _Optional[bytes] = ..., block: _Optional[int] = ...) -> None: ...

class BlockMaskChunk(_message.Message):
    __slots__ = ("block", "chunk_index", "bit_count", "packed", "layout_fingerprint", "digest", "last")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    BIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    block: int
    chunk_index: int
    bit_count: int
    packed: bytes
    layout_fingerprint: bytes
    digest: bytes
    last: bool
    def __init__(self, block: _Optional[int] = ..., chunk_index: _Optional[int] = ..., bit_count: _Optional[int] = ..., packed: _Optional[bytes] = ..., layout_fingerprint: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class BlockWeightsRequest(_message.Message):
    __slots__ = ("run_id", "block")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    block: int
    def __init__(self, run_id: _Optional[bytes] = ..., block: _Optional[int] = ...) -> None: ...

class BlockWeightsChunk(_message.Message):
    __slots__ = ("block", "chunk_index", "total_bytes", "data", "digest", "last")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    block: int
    chunk_index: int
    total_bytes: int
    data: bytes
    digest: bytes
    last: bool
    def __init__(self, block: _Optional[int] = ..., chunk_index: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class OwlAllocationRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    def __init__(self, run_id: _Optional[bytes] = ...) -> None: ...

class OwlAllocationReply(_message.Message):
    __slots__ = ("sparsities",)
    SPARSITIES_FIELD_NUMBER: _ClassVar[int]
    sparsities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, sparsities: _Optional[_Iterable[float]] = ...) -> None: ...

class SignedStatement(_message.Message):
    __slots__ = ("run_id", "participant", "statement", "signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    participant: int
    statement: bytes
    signature: bytes
    def __init__(self, run_id: _Optional[bytes] = ..., participant: _Optional[int] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitStatementRequest(_message.Message):
    __slots__ = ("statement",)
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    statement: SignedStatement
    def __init__(self, statement: _Optional[_Union[SignedStatement, _Mapping]] = ...) -> None: ...

class SubmitStatementReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
