"""The coordinator's run: who joined, one secure-aggregation session per block, the global mask, the outputs.

Transport-free: the servicer calls the ``join``/``await_task``/``advertise``/... methods from its threads
with the caller's verified certificate name, and ``run`` drives the blocks in its own thread. Each block
is one ``SecAggServer`` session whose context binds the run id, the block and a fresh nonce; its sums
live in a memory-mapped file, its global mask is selected from them (``coordinator.aggregation``) and it is
on disk before any participant is told (``fedprune simulate`` runs this very class in one process). At the end ``coordinator.outputs`` builds and checks the report
first, then writes the model. The host learns of each step through ``on_event`` (``coordinator.events``).

What differs per recipe (the session's input range and ring, decoding a block's sums and selecting its
global mask, what is kept for the output, the block assignment) is asked of the run's
``coordinator.recipes.CoordinatorRecipe``; this module never asks which recipe it runs. Under FedSpaLLM the
participants' declared ``max_blocks`` decide, once at the start and durably, which of them prune each block,
and a block's final (averaged) weights are on disk before anyone is told.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from torch import nn

from coordinator.config import CoordinatorConfig
from coordinator.errors import (
    MalformedMessageError,
    ModelMismatchError,
    RunClosedError,
    StaleMessageError,
    UnknownParticipantError,
)
from coordinator.events import (
    AllocationSessionStarted,
    BlockAggregated,
    EventSink,
    ParticipantsPresent,
    RunFinished,
    SessionStarted,
    ignore,
)
from coordinator.outputs import OutputWriter, ReportParameters
from coordinator.recipes import CoordinatorRecipe, SessionShape, Statistics, coordinator_recipe
from coordinator.report import (
    SERVICE_TRANSPORT,
    StatementBounds,
    check_statement,
    secure_aggregation_event,
)
from coordinator.state import RunState
from privacy.errors import PrivacyError, ProtocolAbort
from privacy.report import SummedInputs, tolerated_colluders
from privacy.secagg import (
    NOTHING_PUBLISHED,
    PROTOCOL_VERSION,
    SecAggServer,
    SessionContext,
    SessionParameters,
    WrongStateError,
    published_view,
)
from privacy.secagg.messages import (
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    ShareKeys,
    SurvivorSignature,
    UnmaskResponse,
)
from privacy.signing import ParticipantStatement, StatementError
from proto.domain import (
    OWL_ALLOCATION_ROUND,
    AnnouncedPrivacy,
    Assigned,
    MaskedInputTask,
    Member,
    OwlTerms,
    RunAbortedTask,
    RunCompleteTask,
    RunParameters,
    ShareKeysTask,
    SignSurvivorsTask,
    StartSessionTask,
    StatementTask,
    Task,
    UnmaskTask,
    WaitTask,
)
from pruning.adapters import decoder_blocks, iter_prunable, qualified_name
from pruning.errors import PruningInputError
from pruning.layout import VoteLayout, base_model_fingerprint
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.model_io import load_model, load_tokenizer, prepare_output_dir, resolve_seqlen
from pruning.owl import allocate, block_outlier_ratio_from_statistics, block_weight_counts

logger = logging.getLogger(__name__)

IDENTITY_KEY_BYTES = 32
MAX_SESSION_ATTEMPTS = 3


class Phase(enum.Enum):
    ADVERTISE = "advertise keys"
    SHARE = "share keys"
    MASKED_INPUT = "masked input"
    SIGN = "sign survivors"
    UNMASK = "unmask"
    STATEMENT = "statements"


_TASK_OF_PHASE: dict[Phase, type] = {
    Phase.ADVERTISE: StartSessionTask,
    Phase.SHARE: ShareKeysTask,
    Phase.MASKED_INPUT: MaskedInputTask,
    Phase.SIGN: SignSurvivorsTask,
    Phase.UNMASK: UnmaskTask,
    Phase.STATEMENT: StatementTask,
}


@dataclasses.dataclass
class _Session:
    block: int
    parameters: SessionParameters
    server: SecAggServer
    names: dict[int, str]
    allocation: bool = False
    """An OWL allocation session (the block's dense column statistics), not the block's own."""
    phase: Phase = Phase.ADVERTISE
    answered: set[int] = dataclasses.field(default_factory=set)
    received_chunks: dict[int, int] = dataclasses.field(default_factory=dict)
    """Masked-input chunks accepted per participant: a stream cut and sent again resumes after them."""


@dataclasses.dataclass(frozen=True)
class JoinAnswer:
    """What a participant learns at Join: its id and the run's parameters."""

    participant_id: int
    name: str


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a finished run produced."""

    output: Path
    report: Path
    blocks: int
    participants: int


def _stored_sparsities(allocation: dict[str, object]) -> tuple[float, ...]:
    """Return the per-block sparsities of an allocation as ``RunState.save_owl_allocation`` stored it."""
    blocks = allocation["blocks"]
    assert isinstance(blocks, list)
    return tuple(float(entry["sparsity"]) for entry in blocks)


class CoordinatorRun:
    """One run of the coordinator, resumable from its state directory (all public methods thread-safe)."""

    def __init__(
        self, config: CoordinatorConfig, *, transport: str = SERVICE_TRANSPORT, on_event: EventSink = ignore
    ) -> None:
        """``transport`` is what the report's threat model says the roles talked over; ``on_event`` is called
        with each ``coordinator.events`` event from the driving thread, after the fact it reports is durable.
        """
        self.config = config
        self.transport = transport
        self._on_event = on_event
        if config.run.owl and config.privacy.record_level_dp:
            logger.warning(
                "run.owl with record-level DP: the allocation is decided by the tails of noisy statistics; on "
                "the demo model it made the model worse than magnitude pruning at 32 and 128 documents a site "
                "(docs/BENCHMARKS.md, 'Better masks'). Use OWL in runs without record-level DP"
            )
        self.model: nn.Module = load_model(config.run.model)
        self.tokenizer = load_tokenizer(config.run.model)
        self.blocks = len(decoder_blocks(self.model))
        self.model_fingerprint = base_model_fingerprint(self.model)
        self.layout_fingerprint = VoteLayout.for_model(self.model).fingerprint()
        self.statement_bounds = StatementBounds(
            block_dimensions=tuple(VoteLayout.for_block(self.model, b).dimension for b in range(self.blocks)),
            statistics_per_block=max(
                sum(1 for index, _, _ in iter_prunable(self.model) if index == b) for b in range(self.blocks)
            ),
            sample_rate=config.privacy.sample_rate,
        )
        self.owl = config.run.owl_settings
        self.statement_bounds = dataclasses.replace(
            self.statement_bounds, releases_per_block=1 if self.owl is None else 2
        )
        self._allocation_statistics = Statistics(pattern=config.run.sparsity_pattern, method=Method.WANDA)
        """The statistics recipe's encoding: what an OWL allocation session sums and how it is decoded."""
        self._sparsities: tuple[float, ...] | None = None
        """Each block's OWL sparsity once the allocation phase decided it (None: uniform, or not yet)."""
        self.threshold = config.threshold
        self.state = RunState(config.output.state, parameters_digest=self._parameters_digest())
        self.run_id = self.state.run_id
        self._cond = threading.Condition()
        self._queues: dict[str, list[Assigned]] = {name: [] for name in config.run.participants}
        self._counter = 0
        self._active: set[str] = set()
        self._dropouts: dict[str, str] = {}
        """Where each participant that is not active now last dropped out, for the error that stops a run."""
        self._session: _Session | None = None
        self._statement_phase = False
        self._complete = False
        self._aborted: str | None = None
        self._told_final: set[str] = set()
        self._started = bool(self.state.members()) and (
            bool(self.state.completed_blocks()) or bool(self.state.allocation_blocks())
        )
        self.recipe: CoordinatorRecipe = coordinator_recipe(config.run, config.privacy)
        self.outputs = OutputWriter(
            model=self.model,
            tokenizer=self.tokenizer,
            blocks=self.blocks,
            state=self.state,
            recipe=self.recipe,
            report=ReportParameters(
                run_id=self.run_id,
                threshold=self.threshold,
                colluders=self.colluders,
                privacy=config.privacy,
                transport=transport,
            ),
            output=config.output,
        )
        self._budgets: dict[str, int | None] = {}
        self._assignment: dict[int, tuple[str, ...]] | None = None
        stored = self.state.owl_allocation() if self.owl is not None else None
        if stored is not None:  # a restart after the allocation phase: served before the driver resumes
            self._sparsities = _stored_sparsities(stored)

    def _parameters_digest(self) -> str:
        return RunState.digest_of(
            {
                "run": self.config.run.digest_fields(),
                "privacy": self.config.privacy.model_dump(mode="json"),
                "model": self.model_fingerprint.hex(),
            }
        )

    # ------------------------------------------------------------------ derived parameters
    @property
    def participants(self) -> int:
        """Return n: the participants bound to the run (the listed ones before anyone joined)."""
        return len(self.state.members()) or len(self.config.run.participants)

    @property
    def colluders(self) -> int:
        """Return c: as configured, or the most the threshold tolerates for the run's announced n.

        Fixed for the run (announced at Join, used by every session): participants refuse a session
        with another c.
        """
        if self.config.privacy.colluders is not None:
            return self.config.privacy.colluders
        return tolerated_colluders(len(self.config.run.participants), self.threshold)

    # ------------------------------------------------------------------ calls from participants
    def _member(self, name: str) -> Member:
        if name not in self.config.run.participants:
            raise UnknownParticipantError(f"{name!r} is not a participant of this run")
        member = self.state.members().get(name)
        if member is None:
            raise UnknownParticipantError(f"{name!r} has not joined the run (call Join first)")
        return member

    def check_member(self, name: str) -> None:
        """Return None if ``name`` joined the run, else raise UnknownParticipantError (checked before reading)."""
        self._member(name)

    def join(
        self, name: str, *, model_fingerprint: bytes, identity_key: bytes, max_blocks: int | None = None
    ) -> JoinAnswer:
        """Return ``name``'s participant id after checking its name, base model and identity key.

        ``max_blocks`` is the participant's declared compute budget (FedSpaLLM; None: no limit).
        """
        if name not in self.config.run.participants:
            raise UnknownParticipantError(
                f"certificate name {name!r} is not in run.participants of this coordinator"
            )
        if model_fingerprint != self.model_fingerprint:
            raise ModelMismatchError(
                f"base model fingerprint {model_fingerprint.hex()} differs from the coordinator's "
                f"{self.model_fingerprint.hex()}: the participant must hold exactly the run's base weights"
            )
        if len(identity_key) != IDENTITY_KEY_BYTES:
            raise MalformedMessageError(f"identity_public_key must be {IDENTITY_KEY_BYTES} bytes")
        try:
            Ed25519PublicKey.from_public_bytes(identity_key)
        except ValueError:
            raise MalformedMessageError("identity_public_key is not an Ed25519 public key") from None
        with self._cond:
            if self._aborted is not None:
                raise RunClosedError(f"the run was aborted: {self._aborted}")
            known = self.state.members().get(name)
            if known is None and self._started:
                raise RunClosedError(f"the run started without {name!r}; it cannot join now")
            member = known or self.state.bind(name, identity_key)
            if member.identity_key != identity_key:
                raise UnknownParticipantError(
                    f"{name!r} joined this run with another identity key; a participant keeps its key "
                    "(runtime.identity_key) for the whole run"
                )
            if name not in self._active:
                logger.info("%s joined as participant %d", name, member.participant_id)
            self._budgets[name] = max_blocks
            self._active.add(name)
            self._dropouts.pop(name, None)
            self._cond.notify_all()
        return JoinAnswer(participant_id=member.participant_id, name=name)

    def await_task(self, name: str, *, max_wait_s: float) -> Assigned:
        """Return the next task for ``name``, or a Wait after at most ``max_wait_s`` seconds."""
        self._member(name)
        deadline = time.monotonic() + min(max_wait_s, self.config.server.await_poll_s)
        with self._cond:
            if name not in self._active:
                logger.info("%s is back", name)
                self._active.add(name)
                self._dropouts.pop(name, None)
                self._cond.notify_all()
            while True:
                final = self._final_task()
                if final is not None:
                    self._told_final.add(name)
                    self._cond.notify_all()
                    return Assigned(self._sequence(), final)
                queue = self._queues[name]
                if queue:
                    return queue[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Assigned(0, WaitTask(reason=self._waiting_reason()))
                self._cond.wait(remaining)

    def _final_task(self) -> Task | None:
        if self._aborted is not None:
            return RunAbortedTask(reason=self._aborted)
        if self._complete:
            return RunCompleteTask()
        return None

    def _waiting_reason(self) -> str:
        if self._session is not None:
            what = "OWL allocation of block" if self._session.allocation else "block"
            return f"{what} {self._session.block}: {self._session.phase.value}"
        missing = self.config.run.min_participants_or_default - len(self._active)
        return f"waiting for {missing} more participants" if missing > 0 else "preparing the next block"

    def _sequence(self) -> int:
        self._counter += 1
        return (self.state.boot << 32) | self._counter

    def _answer(self, name: str, block: int, session_id: bytes | None, phase: Phase) -> tuple[_Session, int]:
        """Return the current session and ``name``'s id if an answer of ``phase`` is expected now."""
        member = self._member(name)
        session = self._session
        if session is None or session.block != block or session.phase is not phase:
            raise StaleMessageError(f"no {phase.value} expected for block {block} now")
        if session_id is not None and session_id != session.server.session_id:
            raise StaleMessageError("the message belongs to another session")
        if member.participant_id not in session.names:
            raise StaleMessageError(f"{name!r} is not a member of block {block}'s session")
        return session, member.participant_id

    def _answered(self, session: _Session, name: str, participant: int) -> None:
        session.answered.add(participant)
        kind = _TASK_OF_PHASE[session.phase]
        self._queues[name] = [a for a in self._queues[name] if not isinstance(a.task, kind)]
        self._cond.notify_all()

    @staticmethod
    def _sender(claimed: int, participant: int) -> None:
        if claimed != participant:
            raise MalformedMessageError(
                f"the message claims participant {claimed}, the caller's certificate is bound to {participant}"
            )

    def _feed(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except WrongStateError as error:
            raise StaleMessageError(str(error)) from None
        except (PrivacyError, ValueError) as error:
            raise MalformedMessageError(str(error)) from None

    def advertise(self, name: str, block: int, advertisement: KeyAdvertisement) -> None:
        """Accept ``name``'s key advertisement for block ``block``'s session."""
        with self._cond:
            session, participant = self._answer(name, block, None, Phase.ADVERTISE)
            self._sender(advertisement.participant, participant)
            self._feed(session.server.receive_advertisement, advertisement)
            self._answered(session, name, participant)

    def share_keys(self, name: str, block: int, message: ShareKeys) -> None:
        """Accept ``name``'s encrypted shares for block ``block``'s session."""
        with self._cond:
            session, participant = self._answer(name, block, message.session_id, Phase.SHARE)
            self._sender(message.sender, participant)
            self._feed(session.server.receive_shares, message)
            self._answered(session, name, participant)

    def masked_input(
        self, name: str, block: int, parts: Iterable[MaskedInputChunk | MaskedInputDone]
    ) -> tuple[int, bytes]:
        """Return (chunks received, digest) after accepting ``name``'s masked-input stream."""
        chunks = 0
        for part in parts:
            with self._cond:
                session, participant = self._answer(name, block, part.session_id, Phase.MASKED_INPUT)
                self._sender(part.participant, participant)
                if isinstance(part, MaskedInputChunk):
                    if part.chunk_index < session.received_chunks.get(participant, 0):
                        # Sent again after a cut stream: the first copy is already in the sum. A copy that
                        # differs is caught by the closing digest, which covers the chunks received.
                        chunks += 1
                        continue
                    self._feed(session.server.receive_masked_chunk, part)
                    session.received_chunks[participant] = part.chunk_index + 1
                    chunks += 1
                    continue
                complete = part.chunk_count == session.received_chunks.get(participant, 0)
                try:
                    self._feed(session.server.receive_masked_done, part)
                except MalformedMessageError:
                    if complete and part.chunk_count == session.parameters.chunk_count:
                        # Every chunk arrived and the digest did not match: the server rolled the whole
                        # stream back, so the site's resent stream starts over at chunk 0.
                        session.received_chunks.pop(participant, None)
                    raise
                self._answered(session, name, participant)
                return chunks, part.digest
        raise MalformedMessageError("the masked-input stream ended without its closing digest")

    def sign_survivors(self, name: str, block: int, signature: SurvivorSignature) -> None:
        """Accept ``name``'s signature over block ``block``'s survivor set."""
        with self._cond:
            session, participant = self._answer(name, block, signature.session_id, Phase.SIGN)
            self._sender(signature.sender, participant)
            self._feed(session.server.receive_survivor_signature, signature)
            self._answered(session, name, participant)

    def unmask(self, name: str, block: int, response: UnmaskResponse) -> None:
        """Accept ``name``'s revealed shares for block ``block``'s session."""
        with self._cond:
            session, participant = self._answer(name, block, response.session_id, Phase.UNMASK)
            self._sender(response.sender, participant)
            self._feed(session.server.receive_unmask, response)
            self._answered(session, name, participant)

    def block_mask(self, name: str, block: int) -> tuple[bytes, int, bytes]:
        """Return block ``block``'s bit-packed global mask, its bit count and its layout fingerprint."""
        self._member(name)
        if not 0 <= block < self.blocks:
            raise MalformedMessageError(f"block {block} is not in [0, {self.blocks})")
        if block not in self.state.completed_blocks():
            raise StaleMessageError(f"block {block} has no global mask yet")
        layout = VoteLayout.for_block(self.model, block)
        return self.state.packed_mask(block), layout.dimension, layout.fingerprint()

    def block_weights(self, name: str, block: int) -> bytes:
        """Return block ``block``'s final weights (safetensors, checked against their recorded digest).

        Only a recipe whose sites compute the next block's inputs on the coordinator's weights publishes
        them (the statistics recipe with SparseGPT); any other run refuses, as it refuses a block not
        finished yet.
        """
        self._member(name)
        if not self.recipe.publishes_weights:
            raise MalformedMessageError(
                f"this run's recipe ({self.recipe.recipe.value}) publishes no block weights"
            )
        if not 0 <= block < self.blocks:
            raise MalformedMessageError(f"block {block} is not in [0, {self.blocks})")
        if block not in self.state.completed_blocks():
            raise StaleMessageError(f"block {block} has no final weights yet")
        return self.state.block_weights(block)

    def owl_allocation(self, name: str) -> tuple[float, ...]:
        """Return each block's OWL sparsity once the allocation phase decided it (StaleMessageError before)."""
        self._member(name)
        if self.owl is None:
            raise MalformedMessageError("this run has no OWL allocation (run.owl is off)")
        with self._cond:
            sparsities = self._sparsities
        if sparsities is None:
            raise StaleMessageError("the OWL allocation is not decided yet")
        return sparsities

    def _check_statement(self, name: str, statement: ParticipantStatement) -> None:
        try:
            check_statement(
                statement,
                name=name,
                run_id=self.run_id,
                public_key=self._member(name).identity_key,
                bounds=self.statement_bounds,
            )
        except StatementError as error:
            raise MalformedMessageError(str(error)) from None

    def submit_statement(self, name: str, statement: ParticipantStatement) -> None:
        """Accept ``name``'s signed privacy statement (checked against its identity key and the run's
        bounds, then stored); a stored statement is final: the same one again is accepted, another refused.
        """
        self._check_statement(name, statement)
        with self._cond:
            if not self._statement_phase:
                raise StaleMessageError("statements are collected after the last block")
            stored = self.state.statements().get(name)
            if stored is not None:
                if stored != statement:
                    raise StaleMessageError(
                        f"{name!r} already submitted its statement; it cannot be replaced"
                    )
                logger.info("%s sent its stored statement again", name)
                return
            self.state.save_statement(statement)
            self._queues[name] = [a for a in self._queues[name] if not isinstance(a.task, StatementTask)]
            logger.info("%s submitted its signed privacy statement (%d events)", name, len(statement.events))
            self._cond.notify_all()

    def _reportable_statements(self) -> list[ParticipantStatement]:
        """Return the stored statements that pass today's checks; any other is left out, with a warning."""
        statements = []
        for name, statement in sorted(self.state.statements().items()):
            try:
                self._check_statement(name, statement)
            except (MalformedMessageError, UnknownParticipantError) as error:
                logger.warning("the stored statement of %s is left out of the report: %s", name, error)
                continue
            statements.append(statement)
        return statements

    # ------------------------------------------------------------------ the driver
    def _push(self, name: str, task: Task) -> None:
        self._queues[name].append(Assigned(self._sequence(), task))

    def _wait_for_participants(self) -> tuple[str, ...]:
        """Return the names present once ``min_participants`` have joined."""
        needed = self.config.run.min_participants_or_default
        timeout = self.config.server.join_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._active) < needed:
                self._check_not_aborted()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RunClosedError(
                        f"only {len(self._active)} of server.join_timeout_s {needed} participants joined "
                        f"within {timeout} s"
                    )
                self._cond.wait(remaining if remaining is not None else 1.0)
            self._started = True
            present = tuple(sorted(self._active))
        logger.info("%d participants present: %s", len(present), ", ".join(present))
        return present

    def _collect(self, session: _Session, phase: Phase, expected: Iterable[int], task: Any) -> set[int]:
        """Return who answered ``phase`` after sending ``task(participant)`` to ``expected`` and waiting."""
        expected = set(expected)
        deadline = time.monotonic() + self.config.server.round_timeout_s
        with self._cond:
            session.phase = phase
            session.answered = set()
            for participant in sorted(expected):
                self._push(session.names[participant], task(participant))
            self._cond.notify_all()
            while not expected <= session.answered:
                self._check_not_aborted()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            kind = _TASK_OF_PHASE[phase]
            for participant in expected - session.answered:
                name = session.names[participant]
                logger.warning("block %d: %s dropped out (no %s)", session.block, name, phase.value)
                self._active.discard(name)
                self._dropouts[name] = f"no {phase.value} in block {session.block}"
            for name in session.names.values():
                self._queues[name] = [a for a in self._queues[name] if not isinstance(a.task, kind)]
            return set(session.answered)

    def _missing(self, expected: Iterable[str]) -> str:
        """Return who of ``expected`` is not active, each with the stage it dropped out at (``_cond`` held)."""
        return ", ".join(
            f"{name} ({self._dropouts.get(name, 'not connected')})"
            for name in sorted(set(expected) - self._active)
        )

    def _run_session(self, block: int, layout: VoteLayout, *, attempt: int) -> np.ndarray:
        sums, names, members = self._secure_sum(
            block,
            lambda count: self.recipe.session_shape(
                count, layout, chunk_coordinates=self.config.run.chunk_coordinates
            ),
            allocation=False,
            attempt=attempt,
        )
        self._complete_block(
            block,
            layout,
            sums,
            contributors=len(names),
            session_participants=members,
            contributor_names=names,
        )
        return sums

    def _members(self, block: int) -> list[Member]:
        """Return the active members of ``block``'s sessions, by participant id (``_cond`` held)."""
        assigned = None if self._assignment is None else set(self._assignment[block])
        return sorted(
            (
                m
                for m in self.state.members().values()
                if m.name in self._active and (assigned is None or m.name in assigned)
            ),
            key=lambda m: m.participant_id,
        )

    def _published_view(self, block: int, *, allocation: bool) -> bytes:
        """Return the view a session of ``block`` binds of what this run published before it
        (``privacy.secagg.published_view``): nothing for an OWL allocation session (computed on the dense
        model); for a block's own session, the OWL allocation and every earlier block's global mask and
        published weights, which each site checks against what it fetched."""
        if allocation:
            return NOTHING_PUBLISHED
        completed = self.state.completed_blocks()
        missing = [b for b in range(block) if b not in completed]
        if missing:
            raise RuntimeError(f"block {block}'s session before blocks {missing} were finished")
        if self.owl is not None and self._sparsities is None:
            raise RuntimeError(f"block {block}'s session before the OWL allocation was decided")
        weights = self.recipe.publishes_weights
        return published_view(
            allocation=self._sparsities,
            blocks=[
                (completed[b].mask_digest, completed[b].weights_digest if weights else None)
                for b in range(block)
            ],
        )

    def _secure_sum(
        self, block: int, shape_for: Callable[[int], SessionShape], *, allocation: bool, attempt: int
    ) -> tuple[np.ndarray, list[str], int]:
        """Return (the sums, the contributors' names, the members) of one session of ``block``.

        ``shape_for``: the session's size, input range and ring for its number of members.

        ``allocation``: the block's OWL allocation session (context round ``OWL_ALLOCATION_ROUND``, sums in
        their own file); else the block's own session (context round = block).
        """
        with self._cond:
            assigned = None if self._assignment is None else set(self._assignment[block])
            members = self._members(block)
            missing = self._missing(assigned or self.state.members())
        what = f"OWL allocation of block {block}" if allocation else f"block {block}"
        if len(members) < self.threshold:
            raise RunClosedError(
                f"{what}: only {len(members)} participants remain, below the threshold {self.threshold}"
                f"; missing: {missing}"
            )
        context = SessionContext.fresh(
            run_id=self.run_id,
            round=OWL_ALLOCATION_ROUND if allocation else block,
            block=block,
            published=self._published_view(block, allocation=allocation),
        )
        shape = shape_for(len(members))
        parameters = SessionParameters(
            participant_ids=tuple(m.participant_id for m in members),
            threshold=self.threshold,
            dimension=shape.dimension,
            context=context.encode(),
            chunk_coordinates=shape.chunk_coordinates,
            max_input=shape.max_input,
            colluders=self.colluders,
            max_bit_width=shape.max_bit_width,
        )
        identity_keys = {
            m.participant_id: Ed25519PublicKey.from_public_bytes(m.identity_key) for m in members
        }
        workdir = self.state.directory / f"{'allocation' if allocation else 'session'}-{block:05d}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        server = SecAggServer(parameters=parameters, identity_keys=identity_keys, workdir=workdir)
        session = _Session(
            block, parameters, server, {m.participant_id: m.name for m in members}, allocation=allocation
        )
        member_tuple = tuple(members)
        with self._cond:
            self._session = session
        try:
            logger.info("%s/%d: session with %d participants", what, self.blocks, len(members))
            started = AllocationSessionStarted if allocation else SessionStarted
            self._on_event(
                started(
                    block=block, blocks=self.blocks, members=tuple(m.name for m in members), attempt=attempt
                )
            )
            self._collect(
                session,
                Phase.ADVERTISE,
                session.names,
                lambda p: StartSessionTask(block, parameters, member_tuple),
            )
            with self._cond:
                roster = server.close_advertisements()
            sid = server.session_id
            self._collect(
                session,
                Phase.SHARE,
                (a.participant for a in roster.advertisements),
                lambda p: ShareKeysTask(block, sid, roster),
            )
            with self._cond:
                deliveries = server.close_shares()
            self._collect(
                session, Phase.MASKED_INPUT, deliveries, lambda p: MaskedInputTask(block, sid, deliveries[p])
            )
            with self._cond:
                check = server.close_masked_input()
            self._collect(
                session, Phase.SIGN, check.survivors, lambda p: SignSurvivorsTask(block, sid, check)
            )
            with self._cond:
                request = server.close_signatures()
            signers = [s.sender for s in request.signatures]
            self._collect(session, Phase.UNMASK, signers, lambda p: UnmaskTask(block, sid, request))
            with self._cond:
                out = (
                    self.state.allocation_sums(block, shape.dimension, dtype=parameters.sum_dtype)
                    if allocation
                    else self.state.counts(block, shape.dimension, dtype=parameters.sum_dtype)
                )
                result = server.finalize(out=out)
        finally:
            with self._cond:
                self._session = None
            server.close()
            shutil.rmtree(workdir, ignore_errors=True)
        return result.keep_votes, [session.names[p] for p in result.contributors], len(members)

    def _complete_block(
        self,
        block: int,
        layout: VoteLayout,
        counts: np.ndarray,
        *,
        contributors: int,
        session_participants: int,
        contributor_names: Sequence[str],
    ) -> None:
        weights = {
            qualified_name(i, name): sub.weight() for i, name, sub in iter_prunable(self.model) if i == block
        }
        aggregated = self.recipe.aggregate(
            layout, counts, weights, contributors=contributors, pattern=self.block_pattern(block)
        )
        bits = layout.flatten(aggregated.masks, dtype=torch.bool).numpy()
        packed = np.packbits(bits, bitorder="little").tobytes()
        event = secure_aggregation_event(
            block=block,
            coordinates=self.recipe.dimension(layout),
            participants=self.recipe.event_participants(session=session_participants, run=self.participants),
            threshold=self.threshold,
            contributors=contributor_names,
            colluders=self.colluders,
            summed=self.recipe.summed,
        )
        self.recipe.keep_sums(self.state, block, counts)
        self.state.complete_block(
            block, packed_mask=packed, contributors=contributors, event=event, weights=aggregated.weights
        )
        self.recipe.release_sums(self.state, block, counts)
        logger.info("block %d/%d complete: %d contributors", block + 1, self.blocks, contributors)
        self._on_event(
            BlockAggregated(
                block=block,
                blocks=self.blocks,
                contributors=tuple(contributor_names),
                keep_votes=aggregated.keep_votes,
                global_masks=aggregated.masks,
            )
        )

    @property
    def assignment(self) -> dict[int, tuple[str, ...]] | None:
        """Return which participants prune each block once the run started; None: everyone, every block.

        The recipe decides (FedSpaLLM assigns blocks within the declared budgets, FedPrLLM does not).
        """
        return None if self._assignment is None else dict(self._assignment)

    def _assign_blocks(self) -> None:
        """Fix, once and durably, which participants prune each block (the recipe's choice); a restart reuses it."""
        with self._cond:
            names = sorted(m.name for m in self.state.members().values() if m.name in self._active)
            budgets = {name: self._budgets.get(name) for name in names}
        self._assignment = self.recipe.assign_blocks(
            self.state, budgets, blocks=self.blocks, threshold=self.threshold
        )

    def block_pattern(self, block: int) -> SparsityPattern:
        """Return the sparsity pattern block ``block`` is pruned to: its OWL sparsity, or the run's."""
        pattern = self.config.run.sparsity_pattern
        if self.owl is None:
            return pattern
        if self._sparsities is None:
            raise RuntimeError("the OWL allocation is decided before any block is pruned")
        return dataclasses.replace(pattern, sparsity=self._sparsities[block])

    # ------------------------------------------------------------------ OWL allocation
    def _allocate(self) -> None:
        """Decide each block's OWL sparsity: from the stored allocation, or by running the allocation phase.

        One secure-aggregation session per block whose outlier ratio is not stored yet sums the sites'
        column statistics of the dense block; each block's ratio (from the sums and the base weights) is
        committed before the next session, and the allocation once every ratio is, so a restart resumes the
        phase where it stopped and never allocates differently.
        """
        assert self.owl is not None
        stored = self.state.owl_allocation()
        if stored is None:
            done = self.state.allocation_blocks()
            if done:
                logger.info("resuming the OWL allocation: blocks %s already summed", sorted(done))
            for block in range(self.blocks):
                if block not in done:
                    self._run_allocation_block(block)
            done = self.state.allocation_blocks()
            target = self.config.run.sparsity_pattern.sparsity
            try:
                allocation = allocate(
                    [done[b].outlier_ratio for b in range(self.blocks)],
                    block_weight_counts(self.model),
                    target=target,
                    settings=self.owl,
                )
            except PruningInputError as error:
                raise RunClosedError(f"OWL allocation: {error}") from None
            stored = allocation.as_dict()
            self.state.save_owl_allocation(stored)
        sparsities = _stored_sparsities(stored)
        logger.info("OWL allocation: %s", ", ".join(f"{s:.4f}" for s in sparsities))
        with self._cond:
            self._sparsities = sparsities
            self._cond.notify_all()

    def _run_allocation_block(self, block: int) -> None:
        layout = VoteLayout.for_block(self.model, block)
        for attempt in range(1, MAX_SESSION_ATTEMPTS + 1):
            try:
                sums, names, _ = self._secure_sum(
                    block,
                    lambda count: self._allocation_statistics.session_shape(
                        count, layout, chunk_coordinates=self.config.run.chunk_coordinates
                    ),
                    allocation=True,
                    attempt=attempt,
                )
                self._complete_allocation_block(block, layout, sums, contributor_names=names)
                return
            except ProtocolAbort as error:
                logger.warning(
                    "OWL allocation of block %d: session aborted (attempt %d): %s", block, attempt, error
                )
                if attempt == MAX_SESSION_ATTEMPTS:
                    with self._cond:
                        missing = self._missing(self.state.members())
                    raise RunClosedError(
                        f"OWL allocation of block {block}: {error}; missing: {missing or 'none'}"
                    ) from None

    def _complete_allocation_block(
        self, block: int, layout: VoteLayout, sums: np.ndarray, *, contributor_names: Sequence[str]
    ) -> None:
        assert self.owl is not None
        statistics = self._allocation_statistics.statistics(layout, sums, contributors=len(contributor_names))
        weights = {
            qualified_name(i, name): sub.weight() for i, name, sub in iter_prunable(self.model) if i == block
        }
        ratio = block_outlier_ratio_from_statistics(weights, statistics, multiple=self.owl.multiple)
        event = secure_aggregation_event(
            block=block,
            round=OWL_ALLOCATION_ROUND,
            coordinates=self._allocation_statistics.dimension(layout),
            participants=self.participants,
            threshold=self.threshold,
            contributors=contributor_names,
            colluders=self.colluders,
            summed=SummedInputs.COLUMN_STATISTICS,
        )
        self.state.complete_allocation_block(
            block, outlier_ratio=ratio, contributors=len(contributor_names), event=event
        )
        self.state.allocation_sums_file(block, sums.dtype).unlink(missing_ok=True)
        logger.info(
            "OWL allocation of block %d/%d: outlier ratio %.6f from %d contributors",
            block + 1,
            self.blocks,
            ratio,
            len(contributor_names),
        )

    def _run_block(self, block: int) -> None:
        layout = VoteLayout.for_block(self.model, block)
        for attempt in range(1, MAX_SESSION_ATTEMPTS + 1):
            try:
                self._run_session(block, layout, attempt=attempt)
                return
            except ProtocolAbort as error:
                logger.warning("block %d: session aborted (attempt %d): %s", block, attempt, error)
                if attempt == MAX_SESSION_ATTEMPTS:
                    with self._cond:
                        missing = self._missing(self.state.members())
                    raise RunClosedError(f"block {block}: {error}; missing: {missing or 'none'}") from None

    def _collect_statements(self) -> None:
        have = set(self.state.statements())
        deadline = time.monotonic() + self.config.server.round_timeout_s
        with self._cond:
            self._statement_phase = True
            wanted = {name for name in self._active if name not in have}
            for name in sorted(wanted):
                self._push(name, StatementTask())
            self._cond.notify_all()
            while wanted - set(self.state.statements()):
                self._check_not_aborted()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(wanted - set(self.state.statements()))
                    logger.warning(
                        "no signed statement from %s: the report lists them without one, and audit verify "
                        "fails on it unless the auditor allows missing statements",
                        missing,
                    )
                    break
                self._cond.wait(remaining)

    def _write_outputs(self) -> RunSummary:
        participants = self.participants
        written = self.outputs.write(self._reportable_statements(), participants=participants)
        return RunSummary(
            output=written.output, report=written.report, blocks=self.blocks, participants=participants
        )

    def run(self) -> RunSummary:
        """Return the outputs after driving every block (resuming at the first incomplete one)."""
        try:
            if not self.config.output.overwrite and not self.state.completed_blocks():
                prepare_output_dir(self.config.output.directory, overwrite=False)
            present = self._wait_for_participants()
            self._on_event(ParticipantsPresent(names=present))
            self._assign_blocks()
            if self.owl is not None:
                self._allocate()
            completed = self.state.completed_blocks()
            if completed:
                logger.info("resuming: blocks %s already complete", sorted(completed))
            for block in range(self.blocks):
                if block not in completed:
                    self._run_block(block)
            self._collect_statements()
            summary = self._write_outputs()
        except Exception as error:
            with self._cond:
                if self._aborted is None:
                    self._aborted = str(error) or type(error).__name__
                self._cond.notify_all()
            raise
        with self._cond:
            self._complete = True
            self._cond.notify_all()
        # After the participants may be told: the outputs are written whatever the observer does.
        self._on_event(RunFinished(output=summary.output, report=summary.report))
        return summary

    def abort(self, reason: str) -> None:
        """Abort the run from outside (a host whose participant failed); the driver stops at its next wait.

        Participants are told at their next Await; nothing is written.
        """
        with self._cond:
            if self._aborted is None and not self._complete:
                self._aborted = reason
            self._cond.notify_all()

    def _check_not_aborted(self) -> None:
        """Raise RunClosedError when the run was aborted (call with ``_cond`` held)."""
        if self._aborted is not None:
            raise RunClosedError(f"the run was aborted: {self._aborted}")

    def wait_until_told(self, timeout_s: float) -> None:
        """Return once every active participant has seen the run's end, or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._active <= self._told_final:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def run_parameters(self) -> RunParameters:
        """Return the run's parameters as the servicer announces them at Join."""
        privacy = self.config.privacy
        run = self.config.run
        return RunParameters(
            run_id=bytes.fromhex(self.run_id),
            method=run.method,
            pattern=run.sparsity_pattern,
            group=run.group,
            mode=run.mode,
            recipe=run.recipe,
            nsamples=run.nsamples,
            seqlen=resolve_seqlen(self.model, run.seqlen),
            privacy=AnnouncedPrivacy(
                randomized_response=privacy.randomized_response,
                epsilon0=privacy.epsilon0,
                record_level_dp=privacy.record_level_dp,
                delta=privacy.delta,
                sample_rate=privacy.sample_rate,
                noise_multiplier=privacy.noise_multiplier,
                target_epsilon=privacy.target_epsilon,
                accountant_tolerance=privacy.accountant_tolerance,
            ),
            participants=len(run.participants),
            min_participants=run.min_participants_or_default,
            threshold=self.threshold,
            colluders=self.colluders,
            max_input=self.recipe.max_input,
            chunk_coordinates=run.chunk_coordinates,
            blocks=self.blocks,
            vote_layout_fingerprint=self.layout_fingerprint,
            base_model_fingerprint=self.model_fingerprint,
            weight_scaling=run.weight_scaling,
            protocol_version=PROTOCOL_VERSION,
            participant_names=tuple(sorted(run.participants)),
            owl=(
                None if self.owl is None else OwlTerms(outlier_multiple=self.owl.multiple, lam=self.owl.lam)
            ),
        )

    def close(self) -> None:
        """Release the state database."""
        self.state.close()
