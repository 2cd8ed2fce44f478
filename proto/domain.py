"""The protocol's vocabulary as frozen domain types: what the roles say to each other, with no protobuf in it.

Run parameters (announced at Join), the tasks a coordinator hands a participant, and the few requests and
replies that are not secure-aggregation messages. Both roles speak these types; ``proto.convert`` is the
one place that turns them into ``fedprune.v1`` messages and back. Secure-aggregation messages keep their
own types (``privacy.secagg.messages``); tasks carry them as they are.

Recipe, mode, method and comparison group are the shared enums (``pruning.recipes``, ``pruning.methods``,
``pruning.masks``), never wire numbers or bare strings.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from privacy.secagg.messages import ConsistencyCheck, Roster, ShareDelivery, UnmaskRequest
from privacy.secagg.parameters import SessionParameters
from pruning.masks import ComparisonGroup, SparsityPattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe


# ---------------------------------------------------------------------------------------------- Join
@dataclasses.dataclass(frozen=True, kw_only=True)
class AnnouncedPrivacy:
    """The run's privacy mechanisms as announced, unvalidated: the wire's record, not the model.

    A participant validates them into ``participant.privacy.RunPrivacy`` (the one privacy-parameter model,
    ``privacy.parameters.PrivacyParameters``) and checks them against its own minimums.

    ``noise_multiplier``, ``target_epsilon`` and ``accountant_tolerance`` are None when not announced
    (the wire tells an absent value from a zero); what an absent tolerance means is the reader's rule.
    """

    randomized_response: bool
    epsilon0: float
    record_level_dp: bool
    delta: float
    sample_rate: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    accountant_tolerance: float | None = None


OWL_ALLOCATION_ROUND = (1 << 32) - 1
"""The ``SessionContext`` round of an OWL allocation session (its block is the block whose dense column
statistics it sums); every block session's round is its block, below the run's block count. The context is
bound into the session id and every signature, so a session's round says what every member sums in it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OwlTerms:
    """The run's OWL hyperparameters as announced (``pruning.owl.OwlSettings`` once a site validates them)."""

    outlier_multiple: float
    lam: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunParameters:
    """What a run is, as the coordinator announces it at Join and a participant binds itself to.

    Every session is checked against it: each has exactly ``threshold`` and ``colluders``, the recipe's
    ``max_input``, members among ``participant_names`` only and a block below ``blocks``.
    """

    run_id: bytes
    method: Method
    pattern: SparsityPattern
    group: ComparisonGroup
    mode: Mode
    recipe: Recipe
    nsamples: int
    seqlen: int
    privacy: AnnouncedPrivacy
    participants: int
    """n, the participants invited (``len(participant_names)`` in a consistent run)."""
    min_participants: int
    threshold: int
    colluders: int
    max_input: int
    """The recipe's input range per coordinate for the run's n."""
    chunk_coordinates: int
    blocks: int
    vote_layout_fingerprint: bytes
    base_model_fingerprint: bytes
    weight_scaling: bool
    protocol_version: int
    participant_names: tuple[str, ...]
    owl: OwlTerms | None = None
    """OWL's hyperparameters when the run allocates per-block sparsities (an allocation phase before block
    0); None: every block at the pattern's sparsity."""

    @property
    def run_id_hex(self) -> str:
        """Return the run id as the roles name it in files, contexts and logs."""
        return self.run_id.hex()


@dataclasses.dataclass(frozen=True, kw_only=True)
class JoinRequest:
    """What a participant presents at Join (its identity itself is its certificate's name)."""

    base_model_fingerprint: bytes
    identity_public_key: bytes
    software_version: str
    devices: tuple[str, ...] = ()
    protocol_versions: tuple[int, ...] = ()
    max_blocks: int | None = None
    """FedSpaLLM: the most decoder blocks this participant prunes in one run; None: no limit."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JoinReply:
    """The coordinator's answer to Join: the run and this participant's place in it."""

    run: RunParameters
    participant_id: int
    """The participant's Shamir evaluation point for the whole run."""
    name: str
    """The certificate name the coordinator saw."""


# ---------------------------------------------------------------------------------------------- sessions
@dataclasses.dataclass(frozen=True)
class Member:
    """A participant bound to the run: its certificate name, Shamir id and long-term identity key."""

    name: str
    participant_id: int
    identity_key: bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionTerms:
    """A session's public parameters as announced, before the receiver accepts them as ``SessionParameters``.

    A participant checks them against the run first (a session outside the run's frame is a lie, not a
    malformed message), then builds ``SessionParameters`` with its own acceptance limit on the ring
    (``proto.convert.session_parameters_from_terms``). Same fields as ``SessionParameters``.
    """

    participant_ids: tuple[int, ...]
    threshold: int
    dimension: int
    chunk_coordinates: int
    max_input: int
    context: bytes
    protocol_version: int
    colluders: int
    ring_headroom: bool

    @classmethod
    def of(cls, parameters: SessionParameters) -> SessionTerms:
        """Return the terms that announce ``parameters``."""
        return cls(
            participant_ids=tuple(parameters.participant_ids),
            threshold=parameters.threshold,
            dimension=parameters.dimension,
            chunk_coordinates=parameters.chunk_coordinates,
            max_input=parameters.max_input,
            context=parameters.context,
            protocol_version=parameters.protocol_version,
            colluders=parameters.colluders,
            ring_headroom=parameters.ring_headroom,
        )


@dataclasses.dataclass(frozen=True)
class SessionRef:
    """Which session a participant's answer belongs to: the run, the block and (once known) the session id."""

    run_id: bytes
    block: int
    session_id: bytes = b""


# ---------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class WaitTask:
    """Nothing to do yet; ask again."""

    kind: ClassVar[str] = "wait"
    reason: str


@dataclasses.dataclass(frozen=True)
class StartSessionTask:
    """Start block ``block``'s session: check it, then advertise keys.

    ``parameters`` are validated ``SessionParameters`` where the coordinator issues the task and the
    announced ``SessionTerms`` where a participant receives it (the receiver validates them itself).
    """

    kind: ClassVar[str] = "start_session"
    block: int
    parameters: SessionParameters | SessionTerms
    members: tuple[Member, ...]


@dataclasses.dataclass(frozen=True)
class ShareKeysTask:
    """Round 1: share keys with the roster's members."""

    kind: ClassVar[str] = "share_keys"
    block: int
    session_id: bytes
    roster: Roster


@dataclasses.dataclass(frozen=True)
class MaskedInputTask:
    """Round 2: take the shares relayed to this participant, then send the masked input."""

    kind: ClassVar[str] = "masked_input"
    block: int
    session_id: bytes
    delivery: ShareDelivery


@dataclasses.dataclass(frozen=True)
class SignSurvivorsTask:
    """The consistency round: sign the survivor set."""

    kind: ClassVar[str] = "sign_survivors"
    block: int
    session_id: bytes
    check: ConsistencyCheck


@dataclasses.dataclass(frozen=True)
class UnmaskTask:
    """Round 3: reveal shares for the survivors and the dropped."""

    kind: ClassVar[str] = "unmask"
    block: int
    session_id: bytes
    request: UnmaskRequest


@dataclasses.dataclass(frozen=True)
class StatementTask:
    """Every block is final: send the signed privacy statement."""

    kind: ClassVar[str] = "statement"


@dataclasses.dataclass(frozen=True)
class RunCompleteTask:
    """The run is complete."""

    kind: ClassVar[str] = "run_complete"


@dataclasses.dataclass(frozen=True)
class RunAbortedTask:
    """The coordinator aborted the run."""

    kind: ClassVar[str] = "run_aborted"
    reason: str


Task = (
    WaitTask
    | StartSessionTask
    | ShareKeysTask
    | MaskedInputTask
    | SignSurvivorsTask
    | UnmaskTask
    | StatementTask
    | RunCompleteTask
    | RunAbortedTask
)


@dataclasses.dataclass(frozen=True)
class Assigned:
    """A task and its sequence number (a retried Await gets the same number for the same task).

    ``run_id`` is the run the task names on the wire: empty where the coordinator issues it (its own run
    goes on the wire) and where a task names no run (``WaitTask``).
    """

    sequence: int
    task: Task
    run_id: bytes = b""


# ---------------------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockMask:
    """One block's global mask as it arrived: its packed bits and what the stream's last chunk claimed.

    ``complete`` is False when the stream ended without a last chunk; ``digest`` is the SHA-256 the
    last chunk states over all ``packed`` bytes. The receiver checks both, and the rest, against its own
    layout.
    """

    block: int
    packed: bytes
    bit_count: int
    layout_fingerprint: bytes
    digest: bytes
    complete: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockWeights:
    """One block's final weights as they arrived: the safetensors bytes and what the stream's chunks claimed.

    ``complete`` is False when the stream ended without a last chunk; ``total_bytes`` is what the chunks
    state the file's size to be and ``digest`` the SHA-256 the last chunk states over all ``data`` bytes.
    The receiver checks them, and the tensors, against its own layout and the block's global mask.
    """

    block: int
    data: bytes
    total_bytes: int
    digest: bytes
    complete: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedStatement:
    """A participant's signed privacy statement for the run (canonical JSON and its Ed25519 signature)."""

    run_id: bytes
    participant: int
    statement: bytes
    signature: bytes


__all__ = [
    "Assigned",
    "BlockMask",
    "BlockWeights",
    "JoinReply",
    "JoinRequest",
    "MaskedInputTask",
    "Member",
    "OWL_ALLOCATION_ROUND",
    "OwlTerms",
    "AnnouncedPrivacy",
    "RunAbortedTask",
    "RunCompleteTask",
    "RunParameters",
    "SessionRef",
    "SessionTerms",
    "ShareKeysTask",
    "SignSurvivorsTask",
    "SignedStatement",
    "StartSessionTask",
    "StatementTask",
    "Task",
    "UnmaskTask",
    "WaitTask",
]
