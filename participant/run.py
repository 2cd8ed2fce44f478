"""The participant's run: join, check the run, vote block by block, randomize, mask, answer, attest.

Transport-free: the participant speaks ``proto.domain`` types to the ``CoordinatorCalls`` it is given
(``participant.calls``; over gRPC that is ``participant.client.CoordinatorClient``), asks the coordinator
what it needs (``Await``) and answers each task with the matching call. What it computes for a block is
its recipe's (``participant.recipes``, chosen once from the run's parameters): FedPrLLM keep-votes
(one-shot: its own pruned copy votes on every block; iterative: each block's global mask is applied
before the next block is scored) or FedSpaLLM's packed keep-vote and weight update of the blocks assigned
to it. Each block's vector is randomized once (``participant.privacy``) and masked by a ``SecAggClient``
per session. A repeated session for the same block (after a coordinator restart) sends the same
randomized vector again, never fresh noise.

What the site accepts at join is ``participant.admission``; what it keeps on disk across restarts is
``participant.markers``.

An OWL run (``RunParameters.owl``) has an allocation phase before block 0: sessions whose context round is
``OWL_ALLOCATION_ROUND`` sum each block's column statistics of the dense model
(``participant.recipes.OwlAllocationStatistics``, released and recorded like any other statistics). The
context, bound into the session id and every signature, says which kind a session is; each kind's release
is recorded apart, so neither can stand in for the other. Before its first block session the site fetches
the allocation, checks it against its own model (``pruning.owl.check_announced_sparsities``) and keeps it
durably; its own masks then use each block's sparsity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from participant.admission import (
    LifetimeSpend,
    check_roster,
    check_run_binding,
    check_session_frame,
    describe_plan,
    describe_privacy,
    owl_settings,
    refusals,
    run_plan,
    run_privacy,
)
from participant.calls import (
    CoordinatorCalls,
    CoordinatorRefusedError,
    MalformedReplyError,
    MalformedTaskError,
    NotTakenError,
    StreamTooLargeError,
)
from participant.config import ParticipantConfig
from participant.errors import (
    CoordinatorLiedError,
    PeerKeyError,
    RunAbortedError,
    RunRefusedError,
    UnaccountableRunError,
)
from participant.events import (
    BlockReleased,
    BlockScored,
    Joined,
    ParticipantEventSink,
    RunEnded,
    StatementSubmitted,
    ignore,
)
from participant.markers import RELEASE_TOKEN_PREFIX, SiteRecords
from participant.privacy import ParticipantPrivacy, PrivacyPlan
from participant.recipes import (
    OwlAllocationStatistics,
    ParticipantRecipe,
    Published,
    SessionFrame,
    SiteInputs,
    plugin_for,
    recipe_max_input,
)
from participant.voting import PackedBits
from privacy.durable import DirectoryLock
from privacy.errors import PrivacyError
from privacy.secagg import (
    NOTHING_PUBLISHED,
    PROTOCOL_VERSION,
    ContradictoryViewError,
    CoordinatorMisbehaviour,
    SecAggClient,
    SessionContext,
    SessionParameters,
    published_view,
)
from privacy.signing import TrustedKey, key_fingerprint, load_or_create_signing_key, raw_public_key
from proto.convert import run_parameters_digest, session_parameters_from_terms
from proto.domain import (
    OWL_ALLOCATION_ROUND,
    Assigned,
    JoinReply,
    JoinRequest,
    MaskedInputTask,
    Member,
    RunAbortedTask,
    RunCompleteTask,
    RunParameters,
    SessionRef,
    SessionTerms,
    ShareKeysTask,
    SignedStatement,
    SignSurvivorsTask,
    StartSessionTask,
    StatementTask,
    Task,
    UnmaskTask,
    WaitTask,
)
from pruning.adapters import decoder_blocks, linear_sublayers, qualified_name
from pruning.calibration import resolve_device
from pruning.data import CalibrationSet, calibration_records, calibration_samples
from pruning.errors import PruningInputError
from pruning.layout import VoteLayout, base_model_fingerprint
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.model_io import check_samples_fit, load_model, load_tokenizer, vocabulary_size
from pruning.owl import OwlSettings, block_weight_counts, check_announced_sparsities

logger = logging.getLogger(__name__)

AWAIT_S = 20.0
SOFTWARE_VERSION = "fedprune-participant/1"

Answer = Callable[[], None]
"""A task's answer, ready to send (and to send again, unchanged, when it was lost)."""


class ParticipantRun:
    """One participant's part in one run (``run`` returns when the run is complete)."""

    def __init__(
        self,
        config: ParticipantConfig,
        client: CoordinatorCalls,
        *,
        on_event: ParticipantEventSink = ignore,
        samples: torch.Tensor | CalibrationSet | None = None,
        strict: bool = False,
    ) -> None:
        """``samples``: calibration data already read (an in-process host); None reads ``data.calibration``.

        ``strict`` raises on a task this participant refuses or an answer the coordinator does not take,
        instead of logging it and waiting for the next task (an in-process host, where both sides are
        this code and such a refusal is a fault, not a hostile message).
        """
        self.config = config
        self._given_samples = samples
        self._strict = strict
        self.client = client
        self.device = resolve_device(config.runtime.device)
        config.runtime.state.mkdir(parents=True, exist_ok=True)
        self.records = SiteRecords(config.runtime.state)
        self.identity_key: Ed25519PrivateKey = load_or_create_signing_key(config.runtime.identity_key_path)
        logger.info(
            "identity key %s, fingerprint %s: give it to your peers ([peers]) and to auditors out of band",
            config.runtime.identity_key_path,
            key_fingerprint(self.identity_key),
        )
        self.model = load_model(config.model.directory)
        self.tokenizer = load_tokenizer(config.model.directory)
        self.fingerprint = base_model_fingerprint(self.model)
        self._on_event = on_event
        self._model_consumed = False
        self._masks: dict[int, PackedBits] = {}
        self._mask_digests: dict[int, bytes] = {}
        self._weights_digests: dict[int, bytes] = {}
        """SHA-256 of each block's global mask and published weights as fetched (the published view)."""
        self.recipe: ParticipantRecipe | None = None
        """What this site computes for a block under the run's recipe and mode: set when the run starts."""
        self._secagg: SecAggClient | None = None
        self._block: int | None = None
        self._allocation_session = False
        """Whether the session in progress (of ``_block``) is an OWL allocation session."""
        self.owl: OwlSettings | None = None
        """The run's OWL settings (None: a uniform run); set at join."""
        self.allocation: OwlAllocationStatistics | None = None
        """An OWL run's allocation-phase statistics, until the block sessions begin."""
        self._sparsities: tuple[float, ...] | None = None
        self._pending_vector: np.ndarray | None = None
        self._replay: tuple[int, Answer] | None = None
        self._joined_samples: Any = None
        self.plan: PrivacyPlan | None = None
        """This site's privacy plan of the run it joined (``run_plan``): set at join, before anything is
        computed from the data; ``plan.releases`` is what the lifetime budget was charged for."""
        self.pins: dict[str, TrustedKey] = config.pinned_keys()
        self.spend = LifetimeSpend(config, self.records)
        """The lifetime budget of this site's data: the run's spend checked at join, committed before any
        vote is computed."""

    @property
    def clipped_updates(self) -> int:
        """Return the weight updates clipped to the public fixed-point bound so far (FedSpaLLM; else 0)."""
        return self.recipe.clipped_updates if self.recipe is not None else 0

    @property
    def _vectors(self) -> dict[int, np.ndarray | PackedBits]:
        """Block -> its vector as this site holds it (none before the run starts or after it left)."""
        return self.recipe.vectors if self.recipe is not None else {}

    # ------------------------------------------------------------------ joining
    def join(self) -> JoinReply:
        """Return the coordinator's answer after checking the model and this site's privacy minimums."""
        request = JoinRequest(
            base_model_fingerprint=self.fingerprint,
            identity_public_key=raw_public_key(self.identity_key),
            software_version=SOFTWARE_VERSION,
            devices=(self.device.type,),
            protocol_versions=(PROTOCOL_VERSION,),
            max_blocks=self.config.runtime.max_blocks,
        )
        try:
            reply = self.client.join(request)
        except CoordinatorRefusedError as error:
            raise RunRefusedError(
                f"the coordinator refused to let this participant join: {error.details}"
            ) from None
        except MalformedReplyError as error:
            raise RunRefusedError(str(error)) from None
        run = reply.run
        if run.base_model_fingerprint != self.fingerprint:
            raise RunRefusedError(
                f"the run's base model fingerprint {run.base_model_fingerprint.hex()} differs from model.directory's "
                f"{self.fingerprint.hex()}"
            )
        local_layout = VoteLayout.for_model(self.model).fingerprint()
        if local_layout != run.vote_layout_fingerprint:
            raise RunRefusedError(
                f"model.directory's vote layout fingerprint {local_layout.hex()} differs from the "
                f"run's {run.vote_layout_fingerprint.hex()}: the two sides do not prune the same matrices in "
                "the same order"
            )
        own_blocks = len(decoder_blocks(self.model))
        if run.blocks != own_blocks:
            raise RunRefusedError(
                f"the run announces {run.blocks} decoder blocks, but the model in model.directory has "
                f"{own_blocks}: this site plans its noise and charges its budget for its own model's blocks "
                "and refuses a run that counts them otherwise"
            )
        problems = plugin_for(run).admission_problems(run, max_blocks=self.config.runtime.max_blocks)
        if problems:
            raise RunRefusedError("; ".join(problems))
        self.owl = owl_settings(run)
        check_run_binding(run)
        if reply.name not in run.participant_names:
            raise RunRefusedError(f"the run's participant_names do not list this site ({reply.name!r})")
        documents = self._documents_at_join(run)
        # What needs no accounting first: a run with an absurd delta is refused for it, not for what the
        # accountants make of it.
        problems = refusals(self.config, run, None, documents=documents)
        if problems:
            raise RunRefusedError(
                "the run is weaker than this participant's [privacy] settings: " + "; ".join(problems)
            )
        try:
            plan = run_plan(run, blocks=own_blocks, documents=documents)
        except PrivacyError as error:
            bound = self.config.privacy.max_target_epsilon
            if bound is not None and documents is not None:  # record-level DP on data this site reads
                # An epsilon the accountants cannot compute (a noise multiplier so small that PRV diverges,
                # say) is no smaller than any bound: name the bound it fails.
                raise UnaccountableRunError(
                    f"{self.config.privacy.setting('max_target_epsilon', bound)}: the run's record-level "
                    f"epsilon on this site's data cannot be computed: {error}"
                ) from None
            raise UnaccountableRunError(
                f"the run's privacy parameters cannot be accounted: {error}"
            ) from None
        problems = refusals(self.config, run, plan)
        if problems:
            raise RunRefusedError(
                "the run is weaker than this participant's [privacy] settings: " + "; ".join(problems)
            )
        logger.info(
            "the run's privacy on this site's data: %s; %s",
            describe_privacy(run.privacy),
            describe_plan(plan),
        )
        self.plan = plan
        self.spend.check(run, plan)
        if not self.pins:
            logger.warning(
                "no [peers] identity keys pinned: trusting the keys the coordinator relays for the other "
                "participants (trust on first use within the run). Pin each peer's key, obtained out of "
                "band, so that a coordinator cannot impersonate peers"
            )
        # Last: a run this site refuses anyway is refused for that reason first.
        if self.records.was_released(run.run_id_hex):
            raise RunRefusedError(
                f"this site already sent masked votes in run {run.run_id_hex} before it restarted: "
                "computing them again would release its data a second time (fresh DP noise) while its signed "
                "statement could list only one release, so it stays out of the rest of this run (the run "
                "goes on without it while the threshold is met)"
            )
        logger.info("joined run %s as %s (participant %d)", run.run_id_hex, reply.name, reply.participant_id)
        self._on_event(Joined(run.run_id_hex, reply.name, reply.participant_id, run.blocks))
        return reply

    # ------------------------------------------------------------------ lifetime budget
    def _commit_budget(self) -> None:
        """Record the run's spend durably before anything computed from the data exists (idempotent)."""
        self.spend.commit()

    # ------------------------------------------------------------------ votes
    def _prepare(self, reply: JoinReply) -> None:
        run = reply.run
        self.params: RunParameters = run
        self.run_id = run.run_id_hex
        self.name = reply.name
        self.participant_id = reply.participant_id
        if self.plan is None:
            raise RuntimeError(
                "join() plans the run's privacy on this site's data before anything is prepared"
            )
        self.privacy = ParticipantPrivacy(
            name=reply.name,
            run_id=self.run_id,
            settings=run_privacy(run.privacy),
            blocks=self.plan.blocks,
            plan=self.plan,
        )
        self.history = self.records.load_history(self.run_id)
        # Fixed for the run, durably: a later Join (after a restart) under other parameters, or a session
        # that relays this site under another id or key, is a coordinator's lie.
        self.history.bind_run(run_parameters_digest(run))
        self.history.bind_identity(
            name=reply.name, participant=reply.participant_id, key=raw_public_key(self.identity_key)
        )
        self._save_history()
        self.method = run.method
        self.pattern = run.pattern
        plugin = plugin_for(run)
        samples = self._samples()
        aggregator = self.privacy.statistic_aggregator() if samples is not None else None
        # The loaded model is pruned in place, block by block (no copy: a copy would double the site's
        # memory). Nothing later needs a pruned block's base weights: the fingerprint was taken at start,
        # layouts read only shapes, and FedSpaLLM reads a block's base weights before pruning it.
        # One run per instance, so no second run can start from the pruned weights.
        if self._model_consumed:
            raise RuntimeError("this participant already pruned its model in place; start a new one per run")
        self._model_consumed = True
        inputs = SiteInputs(
            model=self.model,
            samples=samples,
            aggregator=aggregator,
            method=self.method,
            pattern=self.pattern,
            device=self.device,
            privacy=self.privacy,
            on_scored=lambda block: self._on_event(BlockScored(block, run.blocks)),
            block_pattern=None if self.owl is None else self._block_pattern,
        )
        self.recipe = plugin(run, inputs, published=Published(mask=self._mask, weights=self._weights))
        if self.owl is not None:
            self.allocation = OwlAllocationStatistics(
                run, model=self.model, samples=samples, device=self.device, aggregator=aggregator
            )

    def _documents_at_join(self, run: RunParameters) -> int | None:
        """Return the calibration file's document count when the run has record-level DP (else None).

        The data are read here, once, and kept for the run: the delta this site accepts depends on it.
        """
        if run.method is Method.MAGNITUDE or not run.privacy.record_level_dp:
            return None
        self._joined_samples = self._read_samples(run)
        return int(self._joined_samples.documents)

    def _samples(self) -> Any:
        if self.method is Method.MAGNITUDE:
            return None
        samples = self._joined_samples
        self._joined_samples = None
        if samples is None:
            samples = self._read_samples(self.params)
        if self.params.privacy.record_level_dp:
            self._log_signal_outlook(samples.records)
        return samples

    def _read_samples(self, run: RunParameters) -> Any:
        """Return the run's calibration data, checked to suit its privacy and to fit the model."""
        if self._given_samples is not None:
            return self._checked_given_samples(self._given_samples, run)
        vocab = vocabulary_size(self.model)
        path = self.config.data.calibration
        samples: Any
        if run.privacy.record_level_dp:
            samples = calibration_records(path, self.tokenizer, seqlen=run.seqlen, vocab_size=vocab)
        else:
            samples = calibration_samples(
                path,
                self.tokenizer,
                nsamples=run.nsamples,
                seqlen=run.seqlen,
                seed=self.config.data.seed,
                vocab_size=vocab,
            )
        check_samples_fit(self.model, samples)
        return samples

    def _checked_given_samples(self, samples: torch.Tensor | CalibrationSet, run: RunParameters) -> Any:
        """Return calibration data handed over by the host after checking it suits the run's privacy."""
        if run.privacy.record_level_dp and not isinstance(samples, CalibrationSet):
            raise RunRefusedError(
                "the run has record-level DP, which needs calibration records (windows tagged by "
                "document); samples holds untagged windows"
            )
        check_samples_fit(self.model, samples)
        return samples

    def _log_signal_outlook(self, records: int) -> None:
        """Tell this site's operator, before any release, what the DP noise will leave of its statistics."""
        from participant.privacy import block_signal_outlook

        sigma = self.plan.noise_multiplier if self.plan is not None else None  # the noise the site applies
        if sigma is None:
            return
        outlook = block_signal_outlook(
            self.model,
            method=self.method,
            records=records,
            noise_multiplier=sigma,
            sample_rate=self.privacy.settings.sample_rate,
        )
        logger.info(
            "record-level DP: %d documents, noise multiplier %.3g, signal/noise %.2f: %s",
            records,
            sigma,
            outlook.ratio,
            outlook.verdict,
        )

    def _vector(self, block: int) -> np.ndarray:
        """Return block ``block``'s input vector under the run's recipe (its allocation vector in an
        allocation session)."""
        if self._allocation_session:
            assert self.allocation is not None
            return self.allocation.vector(block)
        assert self.recipe is not None
        return self.recipe.vector(block)

    # ------------------------------------------------------------------ OWL
    def _block_pattern(self, block: int) -> SparsityPattern:
        """Return the pattern of this site's masks of block ``block``: its OWL sparsity."""
        return dataclasses.replace(self.params.pattern, sparsity=self._owl_sparsities()[block])

    def _owl_sparsities(self) -> tuple[float, ...]:
        """Return the run's OWL sparsities: kept from before a restart, or fetched, checked and kept now.

        An allocation that no OWL allocation of this site's own model could be (another block count, a
        sparsity outside (0, 1) or more than 2 * lambda from the target, a weighted mean other than the
        target) is proof that the coordinator lied.
        """
        if self._sparsities is None:
            assert self.owl is not None
            sparsities = self.records.owl_allocation(self.run_id)
            if sparsities is None:
                try:
                    announced = self.client.owl_allocation(self.params.run_id)
                except NotTakenError as error:
                    raise PrivacyError(f"the OWL allocation was not given: {error.details}") from None
                try:
                    check_announced_sparsities(
                        announced,
                        block_weight_counts(self.model),
                        target=self.params.pattern.sparsity,
                        settings=self.owl,
                    )
                except PruningInputError as error:
                    raise ContradictoryViewError(
                        f"the coordinator's OWL allocation is not one of this run: {error}",
                        check="owl-allocation",
                    ) from None
                self.records.save_owl_allocation(self.run_id, announced)
                logger.info("OWL allocation: %s", ", ".join(f"{s:.4f}" for s in announced))
                sparsities = announced
            self._sparsities = sparsities
        return self._sparsities

    def _session_kind(self, block: int, context: SessionContext) -> bool:
        """Return True for an OWL allocation session of ``block``, False for the block's own session.

        Raises CoordinatorMisbehaviour for an allocation session outside the allocation phase (a run
        without OWL, or once this site began pruning: its statistics would no longer be the dense
        model's). The first block session of an OWL run ends the allocation phase here, after the
        allocation is fetched and checked.
        """
        if context.round != OWL_ALLOCATION_ROUND:
            if self.owl is not None:
                self._owl_sparsities()
                if self.allocation is not None and not self.allocation.closed:
                    self.allocation.close()
            return False
        if self.owl is None:
            raise ContradictoryViewError(
                f"an OWL allocation session of block {block} in a run without OWL",
                check="owl-allocation-session",
            )
        assert self.allocation is not None
        if self.allocation.closed:
            raise ContradictoryViewError(
                f"an OWL allocation session of block {block} after the block sessions began: the site's "
                "model is no longer the dense model the allocation is computed on",
                check="owl-allocation-session",
            )
        return True

    def _mask(self, block: int) -> dict[str, torch.Tensor]:
        """Return block ``block``'s global mask (True = pruned), fetched and checked once, unpacked anew."""
        packed = self._packed_mask(block)
        layout = VoteLayout.for_block(self.model, block)
        return layout.unflatten(torch.from_numpy(packed.unpack()))

    def _packed_mask(self, block: int) -> PackedBits:
        """Return block ``block``'s global mask as it arrived (bit-packed), fetched and checked once."""
        if block not in self._masks:
            layout = VoteLayout.for_block(self.model, block)
            expected_bytes = -(-layout.dimension // 8)
            try:
                mask = self.client.block_mask(self.params.run_id, block, max_bytes=expected_bytes)
            except StreamTooLargeError as error:
                raise PrivacyError(f"block {block}'s global mask refused: {error}") from None
            packed = mask.packed
            if not mask.complete or mask.digest != hashlib.sha256(packed).digest():
                raise PrivacyError(f"block {block}'s global mask arrived incomplete or corrupted")
            if len(packed) != expected_bytes:
                raise PrivacyError(
                    f"block {block}'s global mask has {len(packed)} bytes, expected {expected_bytes} for its "
                    f"{layout.dimension} bits"
                )
            layout.check_fingerprint(mask.layout_fingerprint, what=f"block {block}'s mask layout")
            if mask.bit_count != layout.dimension:
                raise PrivacyError(
                    f"block {block}'s global mask has {mask.bit_count} bits, expected {layout.dimension}"
                )
            self._masks[block] = PackedBits(np.frombuffer(packed, dtype=np.uint8).copy(), layout.dimension)
            self._mask_digests[block] = mask.digest
        return self._masks[block]

    def _weights(self, block: int) -> dict[str, torch.Tensor]:
        """Return block ``block``'s final weights (by qualified name, in the model's dtype), checked.

        Fetched only in a run whose recipe publishes them (the statistics recipe with SparseGPT). Refused
        unless the stream is complete and matches its digest and size, the file is a safetensors file of
        exactly the block's matrices in this site's dtype and shapes, every weight is finite, and every
        weight the block's global mask prunes is exactly zero.
        """
        from safetensors.torch import load as load_safetensors

        layout = VoteLayout.for_block(self.model, block)
        dtypes = {
            qualified_name(block, name): sublayer.module.weight.dtype
            for name, sublayer in linear_sublayers(decoder_blocks(self.model)[block]).items()
        }
        # The tensors' bytes, plus a bound on the safetensors header (names, shapes, offsets).
        max_bytes = (
            sum(
                entry.shape[0] * entry.shape[1] * torch.empty((), dtype=dtypes[entry.name]).element_size()
                for entry in layout.entries
            )
            + 65536
            + 512 * len(layout.entries)
        )
        try:
            weights = self.client.block_weights(self.params.run_id, block, max_bytes=max_bytes)
        except StreamTooLargeError as error:
            raise PrivacyError(f"block {block}'s weights refused: {error}") from None
        data = weights.data
        if (
            not weights.complete
            or weights.total_bytes != len(data)
            or weights.digest != hashlib.sha256(data).digest()
        ):
            raise PrivacyError(f"block {block}'s weights arrived incomplete or corrupted")

        def lie(problem: str) -> ContradictoryViewError:
            return ContradictoryViewError(f"block {block}'s weights: {problem}", check="block-weights")

        try:
            tensors = load_safetensors(data)
        except Exception as error:  # the parser's own error types vary by version
            raise lie(f"not a safetensors file ({type(error).__name__}: {error})") from None
        expected = {entry.name: entry.shape for entry in layout.entries}
        if set(tensors) != set(expected):
            raise lie(f"matrices {sorted(set(tensors) ^ set(expected))[:4]} differ from the block's own")
        masks = self._mask(block)
        for name, shape in expected.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtypes[name]:
                raise lie(
                    f"{name} is {tensor.dtype} {tuple(tensor.shape)}, this site's matrix is "
                    f"{dtypes[name]} {tuple(shape)}"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise lie(f"{name} holds a weight that is not finite")
            if bool(tensor[masks[name]].any()):
                raise lie(f"{name} holds a nonzero weight where the block's global mask prunes")
        self._weights_digests[block] = weights.digest
        return tensors

    # ------------------------------------------------------------------ durable records
    def _mark_released(self) -> None:
        """Record durably, before the first masked vector leaves, that this run has data of this site."""
        self.records.mark_released(self.run_id, self.name)

    def _save_history(self) -> None:
        self.records.save_history(self.run_id, self.history)

    # ------------------------------------------------------------------ tasks
    def _ref(self, block: int, session_id: bytes = b"") -> SessionRef:
        return SessionRef(run_id=self.params.run_id, block=block, session_id=session_id)

    def _start_session(self, task: StartSessionTask, run_id: bytes) -> Answer:
        assert self.recipe is not None
        block = task.block
        if block >= self.params.blocks:
            # Beyond what this site was charged for: the run announced (and the site accounted) only
            # `blocks` releases.
            raise ContradictoryViewError(
                f"a session for block {block}, outside the run's {self.params.blocks} blocks",
                check="session-block-outside-run",
            )
        terms = task.parameters
        # A malformed message (not a lie about the run) is refused, and the site waits for the next task.
        context = SessionContext.decode(terms.context)
        if context.run_id != self.run_id or context.block != block or run_id != self.params.run_id:
            raise ContradictoryViewError(
                "the session's context does not bind this run and block", check="session-context"
            )
        allocation = self._session_kind(block, context)
        frame: SessionFrame = self.allocation if allocation and self.allocation else self.recipe
        self._check_session_frame(block, terms, frame=frame, allocation=allocation)
        parameters = session_parameters_from_terms(terms, max_bit_width=frame.max_bit_width)
        names = self._check_members(task.members, parameters.participant_ids)
        if not allocation:
            self._check_assignment(block)
        keys = {m.participant_id: Ed25519PublicKey.from_public_bytes(m.identity_key) for m in task.members}
        if self._block != block or self._allocation_session != allocation:
            # Scoring a new block (one-shot and iterative sites score it now) takes a block's worth of
            # memory: the former block's session, over or superseded, lets its vector and state go first.
            self._pending_vector = None
            if self._secagg is not None:
                self._secagg.abort("the coordinator started another session")
                self._secagg = None
        self._allocation_session = allocation
        vector = self._vector(block)
        if context.published != self._published_view(block, allocation=allocation):
            raise ContradictoryViewError(
                f"the session of block {block} binds another view of what the coordinator published before "
                "it (the OWL allocation, earlier blocks' global masks and weights) than this site fetched: "
                "the coordinator shows sites different ones",
                check="published-view",
            )
        if self._secagg is not None:
            self._secagg.abort("the coordinator started another session")  # its secrets go now
        self._secagg = SecAggClient(
            participant=self.participant_id,
            parameters=parameters,
            identity_key=self.identity_key,
            identity_keys=keys,
            identity_names=names,
            history=self.history,
        )
        self._block = block
        self._pending_vector = vector
        released = self.history.released(block, allocation=allocation)
        digest = self._secagg.bind_votes(vector)
        if released is not None and released != digest:
            self._secagg.abort("a second release of the block")
            what = f"block {block}'s allocation statistics were" if allocation else f"block {block} was"
            raise ContradictoryViewError(
                f"{what} released before with another vector; a second release is beyond what "
                "this site was charged for",
                check="second-release",
            )
        # The identities this roster fixed are on disk before the advertisement leaves. Saved before the
        # context is joined: a site that restarts before it answered gets the same task again from an
        # honest coordinator, and must not take that for a replayed context.
        self._save_history()
        advertisement = self._secagg.advertise_keys()
        ref = self._ref(block)
        logger.info(
            "%s %d: session started with %d participants",
            "OWL allocation of block" if allocation else "block",
            block,
            len(task.members),
        )
        return lambda: self.client.advertise_keys(ref, advertisement)

    def _published_view(self, block: int, *, allocation: bool) -> bytes:
        """Return this site's view of what the coordinator published before a session of ``block``
        (``privacy.secagg.published_view``): nothing before an OWL allocation session; before a block's
        own session, the OWL allocation and every earlier block's global mask and, where the recipe reads
        them, published weights, each as this site fetched and checked it (fetched now if not yet)."""
        if allocation:
            return NOTHING_PUBLISHED
        assert self.recipe is not None
        blocks = []
        for earlier in range(block):
            self._packed_mask(earlier)
            weights = None
            if self.recipe.reads_weights:
                if earlier not in self._weights_digests:
                    self._weights(earlier)
                weights = self._weights_digests[earlier]
            blocks.append((self._mask_digests[earlier], weights))
        sparsities = self._owl_sparsities() if self.owl is not None else None
        return published_view(allocation=sparsities, blocks=blocks)

    def _check_session_frame(
        self,
        block: int,
        parameters: SessionTerms | SessionParameters,
        *,
        frame: SessionFrame | None = None,
        allocation: bool = False,
    ) -> None:
        """Raise CoordinatorMisbehaviour unless the session stays inside the run's frame (``check_session_frame``).

        ``frame``: the recipe's, or an allocation session's (``allocation``: its statistic lanes)."""
        frame = frame or self.recipe
        assert frame is not None
        check_session_frame(
            self.params,
            parameters,
            recipe=frame,
            dimension=frame.dimension(block),
            block=block,
            max_input=self.allocation.max_input() if allocation and self.allocation else None,
        )

    def _check_assignment(self, block: int) -> None:
        """Refuse (PrivacyError) a session beyond what this site takes under its recipe and budget."""
        assert self.recipe is not None
        self.recipe.check_assignment(block, max_blocks=self.config.runtime.max_blocks)

    def _check_members(self, members: Iterable[Member], participant_ids: Sequence[int]) -> dict[int, str]:
        """Return {participant id: name} of a session's members (``participant.admission.check_roster``)."""
        own = Member(self.name, self.participant_id, raw_public_key(self.identity_key))
        return check_roster(
            members, participant_ids, run=self.params, own=own, pins=self.pins, history=self.history
        )

    def _client_for(self, block: int) -> SecAggClient:
        if self._secagg is None or self._block != block:
            raise PrivacyError(f"no session of block {block} in progress here")
        return self._secagg

    def _share_keys(self, task: ShareKeysTask) -> Answer:
        secagg = self._client_for(task.block)
        message = secagg.share_keys(task.roster)
        ref = self._ref(task.block, task.session_id)
        block = task.block

        def send() -> None:
            self.client.share_keys(ref, message)
            logger.info("block %d: shares sent", block)

        return send

    def _masked_input(self, task: MaskedInputTask) -> Answer:
        secagg = self._client_for(task.block)
        secagg.receive_shares(task.delivery)
        ref = self._ref(task.block, task.session_id)
        assert self._pending_vector is not None
        messages = list(secagg.masked_input(self._pending_vector))
        digest = secagg.votes_digest
        assert digest is not None
        self.history.release(block=task.block, votes_digest=digest, allocation=self._allocation_session)

        def send() -> None:
            self._mark_released()  # on disk before anything computed from the data leaves
            self._save_history()
            self.client.masked_input(ref, messages)

        return send

    def _sign(self, task: SignSurvivorsTask) -> Answer:
        secagg = self._client_for(task.block)
        signature = secagg.sign_survivors(task.check)
        self._save_history()  # on disk before the signature leaves
        ref = self._ref(task.block, task.session_id)
        return lambda: self.client.sign_survivors(ref, signature)

    def _unmask(self, task: UnmaskTask) -> Answer:
        secagg = self._client_for(task.block)
        response = secagg.unmask(task.request)
        ref = self._ref(task.block, task.session_id)
        block = task.block

        allocation = self._allocation_session

        def send() -> None:
            self.client.unmask(ref, response)
            if allocation:
                logger.info("OWL allocation of block %d: statistics sent and unmasked", block)
                return
            logger.info("block %d: votes sent and unmasked", block)
            self._on_event(BlockReleased(block, self.params.blocks))

        return send

    def _statement(self) -> Answer:
        assert self.recipe is not None
        if self.owl is not None:
            self._owl_sparsities()  # the masks below were chosen at the checked allocation
            if self.allocation is not None:
                self.allocation.close()
        self.recipe.finish()
        for block in range(self.params.blocks):
            self._packed_mask(block)  # confirm every block's global mask arrived intact before attesting
        statement = self.privacy.statement(self.identity_key)
        signed = SignedStatement(
            run_id=self.params.run_id,
            participant=self.participant_id,
            statement=statement.model_dump_json().encode("utf-8"),
            signature=bytes.fromhex(statement.signature),
        )
        events = len(statement.events)

        def send() -> None:
            self.client.submit_statement(signed)
            self._on_event(StatementSubmitted(events))

        return send

    def _handle(self, assigned: Assigned) -> Answer | None:
        task = assigned.task
        if isinstance(task, StartSessionTask):
            return self._start_session(task, assigned.run_id)
        if isinstance(task, ShareKeysTask):
            return self._share_keys(task)
        if isinstance(task, MaskedInputTask):
            return self._masked_input(task)
        if isinstance(task, SignSurvivorsTask):
            return self._sign(task)
        if isinstance(task, UnmaskTask):
            return self._unmask(task)
        if isinstance(task, StatementTask):
            return self._statement()
        return None

    def run(self) -> None:
        """Return once the run is complete; raise RunRefusedError / RunAbortedError otherwise.

        Proof that the coordinator lied (a CoordinatorMisbehaviour) ends this site's part in the run:
        the session's secrets and the vectors are dropped, nothing more is sent, and CoordinatorLiedError
        (a RunRefusedError naming the check) is raised. The state directory is locked for the run's length:
        a second participant on it is refused (``privacy.durable.DirectoryInUseError``) before anything runs.
        """
        lock = DirectoryLock(self.config.runtime.state, what="runtime.state")
        try:
            self._run()
        except CoordinatorMisbehaviour as proof:
            self._leave(proof)
            lied = CoordinatorLiedError(proof)
            self._on_event(RunEnded(complete=False, reason=str(lied)))
            raise lied from None
        except Exception as error:
            self._on_event(RunEnded(complete=False, reason=str(error)))
            raise
        finally:
            lock.release()
        self._on_event(RunEnded(complete=True, reason="run complete"))

    def _leave(self, proof: CoordinatorMisbehaviour) -> None:
        if self._secagg is not None:
            self._secagg.abort(f"the coordinator deviated ({proof.check})")
        self._secagg = None
        self._replay = None
        self._pending_vector = None
        if self.recipe is not None:
            self.recipe.drop()
        logger.error(
            "proof of a lying coordinator, check %s: %s; this site leaves the run and sends nothing more",
            proof.check,
            proof.detail,
        )

    def _run(self) -> None:
        reply = self.join()
        self._commit_budget()
        self._prepare(reply)
        while True:
            try:
                assigned = self.client.await_task(self.params.run_id, max_wait_s=AWAIT_S)
            except MalformedTaskError as error:
                if self._strict:
                    raise
                logger.warning("%s refused by this participant: %s", error.kind, error)
                continue
            task: Task = assigned.task
            if isinstance(task, RunCompleteTask):
                logger.info("run %s complete", self.run_id)
                return
            if isinstance(task, RunAbortedTask):
                raise RunAbortedError(f"the coordinator aborted the run: {task.reason}")
            if isinstance(task, WaitTask):
                continue
            try:
                if self._replay is not None and self._replay[0] == assigned.sequence:
                    send = self._replay[1]  # the answer was lost: send the same one again
                else:
                    handled = self._handle(assigned)
                    if handled is None:
                        continue
                    send = handled
                    self._replay = (assigned.sequence, send)
                send()
            except CoordinatorMisbehaviour:
                raise
            except NotTakenError as error:
                if self._strict:
                    raise
                logger.warning("%s answer not taken (%s): %s", task.kind, error.status, error.details)
            except ValueError as error:
                # PrivacyError and the conversions' InvalidMessageError are ValueErrors: a malformed or
                # unexpected task is refused and logged; the participant waits for the next one.
                if self._strict:
                    raise
                logger.warning("%s refused by this participant: %s", task.kind, error)


__all__ = [
    "AWAIT_S",
    "RELEASE_TOKEN_PREFIX",
    "SOFTWARE_VERSION",
    "CoordinatorLiedError",
    "ParticipantRun",
    "PeerKeyError",
    "RunAbortedError",
    "RunRefusedError",
    "UnaccountableRunError",
    "check_run_binding",
    "recipe_max_input",
    "refusals",
    "run_parameters_digest",
    "run_plan",
    "run_privacy",
]
