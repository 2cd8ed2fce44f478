"""The participant's run: join, check the run, vote block by block, randomize, mask, answer, attest.

Transport-free apart from the ``CoordinatorClient`` it is given: the participant asks the coordinator what
it needs (``Await``) and answers each task with the matching call. Its keep-votes are computed with
``participant.voting`` (one-shot: its own pruned copy votes on every block; iterative: each block's global
mask is applied before the next block is scored), flattened in ``VoteLayout`` order, randomized once per
block (``participant.privacy``) and masked by a ``SecAggClient`` per session. A repeated session for the
same block (after a coordinator restart) sends the same randomized vector again, never fresh noise.

Under the FedSpaLLM recipe the participant declares ``runtime.max_blocks`` at join and prunes, with
SparseGPT, only the blocks whose sessions the coordinator starts with it (``AssignedBlockPruner``); each
block's vector packs the randomized keep-vote and the fixed-point weight update of every weight
(``privacy.secagg.fixed_point.VoteValueCodec`` for the run's n), so one session sums both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tqdm.auto import tqdm

from participant.client import CoordinatorCalls, StreamTooLargeError
from participant.config import ParticipantConfig
from participant.privacy import (
    ParticipantPrivacy,
    PrivacyPlan,
    RunPrivacy,
    encode_votes_and_updates,
    plan_privacy,
)
from participant.voting import AssignedBlockPruner, KeepVotes, PackedBits, iterative_votes, one_shot_votes
from privacy.accounting import DEFAULT_ACCOUNTANT_TOLERANCE
from privacy.budget import BudgetExceeded, BudgetLedgerError, LifetimeBudget
from privacy.durable import write_durably
from privacy.errors import PrivacyError
from privacy.secagg import (
    PROTOCOL_VERSION,
    ContradictoryViewError,
    CoordinatorMisbehaviour,
    SecAggClient,
    SessionContext,
    SessionHistory,
    check_threshold,
    ring_bit_width,
)
from privacy.secagg.fixed_point import VoteValueCodec
from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH
from privacy.signing import TrustedKey, key_fingerprint, load_or_create_signing_key, raw_public_key
from proto import convert
from proto.fedprune.v1 import secagg_pb2 as secagg_pb
from proto.fedprune.v1 import service_pb2 as pb
from pruning.adapters import decoder_blocks, iter_prunable, qualified_name
from pruning.calibration import resolve_device
from pruning.data import CalibrationSet, calibration_records, calibration_samples
from pruning.layout import VoteLayout, base_model_fingerprint
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method
from pruning.model_io import check_samples_fit, load_model, load_tokenizer, vocabulary_size
from pruning.updates import UPDATE_RANGE_FACTOR

logger = logging.getLogger(__name__)

AWAIT_S = 20.0
SOFTWARE_VERSION = "fedprune-participant/1"

_METHODS = {
    pb.METHOD_MAGNITUDE: Method.MAGNITUDE,
    pb.METHOD_WANDA: Method.WANDA,
    pb.METHOD_SPARSEGPT: Method.SPARSEGPT,
}
RELEASE_TOKEN_PREFIX = "budget-release-"


class RunRefusedError(Exception):
    """This participant refuses the run (or the coordinator refused its model); the message says why."""


class PeerKeyError(RunRefusedError):
    """A session's roster holds an identity key that this participant's pins (or first sight) refuse."""


class UnaccountableRunError(RunRefusedError, PrivacyError):
    """The run's privacy parameters cannot be accounted (the accountants fail on them): refused at join."""


class RunAbortedError(Exception):
    """The coordinator aborted the run."""


class CoordinatorLiedError(RunRefusedError):
    """The coordinator failed a check that only a deviating coordinator can fail; this site left the run.

    ``check`` names the check (docs/SECURE_AGGREGATION.md, "Proof of a lying coordinator").
    """

    def __init__(self, proof: CoordinatorMisbehaviour) -> None:
        super().__init__(
            f"the coordinator deviated from the protocol (check {proof.check}): {proof.detail}; this site wiped its "
            "session secrets, sends nothing more and leaves the run"
        )
        self.check = proof.check


def recipe_max_input(run: pb.RunParameters) -> int:
    """Return the largest value one participant adds per coordinate under the run's recipe and n."""
    if run.recipe == pb.RECIPE_FEDSPALLM:
        return VoteValueCodec(participants=run.participants).max_input
    return 1


def run_parameters_digest(run: pb.RunParameters) -> bytes:
    """Return SHA-256 over the run parameters' deterministic serialization (what a site joined under)."""
    return hashlib.sha256(b"fedprune/run-parameters\0" + run.SerializeToString(deterministic=True)).digest()


def check_run_binding(run: pb.RunParameters) -> None:
    """Raise RunRefusedError unless the run announces a consistent, safe frame for its sessions.

    The frame (n names, t, c, the recipe's max_input) is what each session is checked against later;
    t > (n + c)/2 for the run's own n and c.
    """
    names = list(run.participant_names)
    if len(names) != run.participants or len(set(names)) != len(names):
        raise RunRefusedError(
            f"the run announces {run.participants} participants but {len(set(names))} distinct "
            "participant_names: every session's members must come from one fixed list of n names"
        )
    try:
        check_threshold(run.threshold, participants=run.participants, colluders=run.colluders)
    except PrivacyError as error:
        raise RunRefusedError(f"the run's threshold does not tolerate its colluders: {error}") from None
    expected = recipe_max_input(run)
    if run.max_input != expected:
        raise RunRefusedError(
            f"the run announces max_input {run.max_input}; its recipe defines {expected} for "
            f"{run.participants} participants"
        )


def run_privacy(privacy: pb.PrivacyParameters) -> RunPrivacy:
    """Return the run's privacy parameters as announced (raises PrivacyError when they are inconsistent)."""
    return RunPrivacy(
        randomized_response=privacy.randomized_response,
        epsilon0=privacy.epsilon0,
        record_level_dp=privacy.record_level_dp,
        noise_multiplier=privacy.noise_multiplier if privacy.HasField("noise_multiplier") else None,
        target_epsilon=privacy.target_epsilon if privacy.HasField("target_epsilon") else None,
        delta=privacy.delta,
        sample_rate=privacy.sample_rate,
        accountant_tolerance=(
            privacy.accountant_tolerance
            if privacy.HasField("accountant_tolerance")
            else DEFAULT_ACCOUNTANT_TOLERANCE
        ),
    )


def run_plan(run: pb.RunParameters, *, blocks: int, documents: int | None = None) -> PrivacyPlan:
    """Return what ``run`` spends on this site's data: its announced mechanism over the site's own counts.

    ``blocks`` is the site's own model's decoder block count and ``documents`` its calibration file's
    document count (None when not read); the run's own ``blocks`` is never used here. Magnitude pruning
    reads no data: epsilon 0, delta 0. Record-level DP off: epsilon None (unbounded). Raises PrivacyError
    when the announced parameters cannot be accounted.
    """
    return plan_privacy(
        run_privacy(run.privacy),
        reads_data=run.method != pb.METHOD_MAGNITUDE,
        blocks=blocks,
        documents=documents,
    )


def refusals(
    config: ParticipantConfig,
    run: pb.RunParameters,
    plan: PrivacyPlan | None,
    *,
    documents: int | None = None,
) -> list[str]:
    """Return why ``run`` is weaker than this participant's ``[privacy]`` settings (empty: acceptable).

    Epsilon and noise multiplier are the site's own (``plan``), never a figure the coordinator states;
    ``plan`` None checks only what needs no accounting (``documents``: the site's document count).
    """
    privacy = run.privacy
    return config.privacy.violations(
        reads_data=run.method != pb.METHOD_MAGNITUDE,
        randomized_response=privacy.randomized_response,
        epsilon0=privacy.epsilon0,
        threshold=run.threshold,
        record_level_dp=privacy.record_level_dp,
        record_epsilon=plan.epsilon if plan is not None else None,
        delta=privacy.delta,
        noise_multiplier=plan.noise_multiplier if plan is not None else None,
        documents=plan.documents if plan is not None else documents,
        accounted=plan is not None,
    )


class ParticipantRun:
    """One participant's part in one run (``run`` returns when the run is complete)."""

    def __init__(
        self,
        config: ParticipantConfig,
        client: CoordinatorCalls,
        *,
        on_block_done: Callable[[int, int], None] | None = None,
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
        self.identity_key: Ed25519PrivateKey = load_or_create_signing_key(config.runtime.identity_key_path)
        logger.info(
            "identity key %s, fingerprint %s: give it to your peers ([peers]) and to auditors out of band",
            config.runtime.identity_key_path,
            key_fingerprint(self.identity_key),
        )
        self.model = load_model(config.model.directory)
        self.tokenizer = load_tokenizer(config.model.directory)
        self.fingerprint = base_model_fingerprint(self.model)
        self._on_block_done = on_block_done
        # Keep-votes (randomized) and global masks are kept bit-packed for the whole run; only the block
        # in session is unpacked (_unpacked). FedSpaLLM vectors are integers and stay as they are.
        self._vectors: dict[int, np.ndarray | PackedBits] = {}
        self._unpacked: tuple[int, np.ndarray] | None = None
        self._model_consumed = False
        self._masks: dict[int, PackedBits] = {}
        self._iterative: Generator[KeepVotes, dict[str, torch.Tensor], None] | None = None
        self._secagg: SecAggClient | None = None
        self._block: int | None = None
        self._pending_vector: np.ndarray | None = None
        self._replay: tuple[int, Callable[[], None]] | None = None
        self._joined_samples: Any = None
        self.plan: PrivacyPlan | None = None
        """This site's privacy plan of the run it joined (``run_plan``): set at join, before anything is
        computed from the data; ``plan.releases`` is what the lifetime budget was charged for."""
        self.pins: dict[str, TrustedKey] = config.pinned_keys()
        minimums = config.privacy
        self.budget = (
            LifetimeBudget(
                config.runtime.budget_path,
                dataset=config.data.dataset_name,
                lifetime_epsilon=minimums.lifetime_epsilon,
                lifetime_delta=minimums.lifetime_delta,
            )
            if minimums.lifetime_epsilon is not None
            else None
        )
        self._spend: tuple[str, str, float, float] | None = None
        self.fedspallm = False
        self._pruner: AssignedBlockPruner | None = None
        self._codec: VoteValueCodec | None = None
        self.clipped_updates = 0
        """FedSpaLLM: weight updates clipped to the public fixed-point bound so far (0 in a healthy run)."""

    # ------------------------------------------------------------------ joining
    def join(self) -> pb.JoinReply:
        """Return the coordinator's answer after checking the model and this site's privacy minimums."""
        request = pb.JoinRequest(
            base_model_fingerprint=self.fingerprint,
            data_size_class=pb.DATA_SIZE_CLASS_UNSPECIFIED,
            capabilities=pb.Capabilities(
                devices=[self.device.type],
                protocol_versions=[PROTOCOL_VERSION],
                max_blocks=self.config.runtime.max_blocks or 0,
            ),
            identity_public_key=raw_public_key(self.identity_key),
            software_version=SOFTWARE_VERSION,
        )
        try:
            reply = self.client.join(request)
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise RunRefusedError(
                    f"the coordinator refused to let this participant join: {error.details()}"
                ) from None
            raise
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
        budget = self.config.runtime.max_blocks
        if budget is not None and run.recipe != pb.RECIPE_FEDSPALLM and budget < run.blocks:
            raise RunRefusedError(
                f"the run's recipe (fedprllm) prunes all {run.blocks} decoder blocks at every site, over this "
                f"site's runtime.max_blocks = {budget}"
            )
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
            "the run's privacy on this site's data: %s; %s", _describe(run.privacy), _describe_plan(plan)
        )
        self.plan = plan
        self._check_budget(run)
        if not self.pins:
            logger.warning(
                "no [peers] identity keys pinned: trusting the keys the coordinator relays for the other "
                "participants (trust on first use within the run). Pin each peer's key, obtained out of "
                "band, so that a coordinator cannot impersonate peers"
            )
        # Last: a run this site refuses anyway is refused for that reason first.
        if self._released_marker(run.run_id.hex()).exists():
            raise RunRefusedError(
                f"this site already sent masked votes in run {run.run_id.hex()} before it restarted: "
                "computing them again would release its data a second time (fresh DP noise) while its signed "
                "statement could list only one release, so it stays out of the rest of this run (the run "
                "goes on without it while the threshold is met)"
            )
        logger.info(
            "joined run %s as %s (participant %d)", run.run_id.hex(), reply.name, reply.participant_id
        )
        return reply

    # ------------------------------------------------------------------ lifetime budget
    def _check_budget(self, run: pb.RunParameters) -> None:
        """Refuse the run (RunRefusedError) if it would pass the lifetime budget; remember its spend.

        The spend is this site's own plan (``self.plan``), charged per release: the token that names this
        state directory's release in the run, so a second computation on the data under the same run id
        (another state directory over the same budget file) is charged again.
        """
        if self.budget is None:
            return
        assert self.plan is not None
        epsilon, delta = self.plan.epsilon, self.plan.delta
        if epsilon is None:
            # Exact statistics have no finite epsilon: counting them as 0 would under-count, so the safe
            # reading of a lifetime budget is to refuse them.
            raise RunRefusedError(
                f"the run has no record-level DP (exact calibration statistics, unbounded epsilon), which "
                f"privacy.lifetime_epsilon {self.budget.lifetime_epsilon:g} cannot account for"
            )
        run_id = run.run_id.hex()
        release = self._release_token(run_id)
        try:
            after = self.budget.check(
                epsilon, delta, run_id=run_id, release=release, records=self.plan.documents
            )
        except BudgetExceeded as error:
            raise RunRefusedError(str(error)) from None
        except BudgetLedgerError as error:
            raise RunRefusedError(f"runtime.budget: {error}") from None
        self._spend = (run_id, release, epsilon, delta)
        logger.info(
            "lifetime budget of dataset %r: this run spends epsilon %.4g (delta %g) for %d releases; %.4g "
            "of %g after it",
            self.budget.dataset,
            epsilon,
            delta,
            self.plan.releases,
            after.epsilon,
            self.budget.lifetime_epsilon,
        )

    def _release_token(self, run_id: str) -> str:
        """Return the random name of this state directory's release in run ``run_id`` (made once, kept).

        A restart of this participant finds the same token (a retried commit is not charged twice); any
        other state directory makes its own, so its release under the same run id is charged again.
        """
        path = self.config.runtime.state / f"{RELEASE_TOKEN_PREFIX}{run_id}"
        if path.is_file():
            token = path.read_text(encoding="utf-8").strip()
            if token:
                return token
        token = secrets.token_hex(16)
        write_durably(path, f"{token}\n".encode(), mode=0o600)
        return token

    def _commit_budget(self) -> None:
        """Record the run's spend durably before anything computed from the data exists (idempotent)."""
        if self.budget is None or self._spend is None:
            return
        run_id, release, epsilon, delta = self._spend
        try:
            self.budget.commit(
                run_id,
                epsilon=epsilon,
                delta=delta,
                release=release,
                records=self.plan.documents if self.plan is not None else None,
            )
        except BudgetExceeded as error:
            raise RunRefusedError(str(error)) from None
        except BudgetLedgerError as error:
            raise RunRefusedError(f"runtime.budget: {error}") from None

    # ------------------------------------------------------------------ votes
    def _prepare(self, reply: pb.JoinReply) -> None:
        run = reply.run
        self.params: pb.RunParameters = run
        self.run_id = run.run_id.hex()
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
        self.history = self._load_history()
        # Fixed for the run, durably: a later Join (after a restart) under other parameters, or a session
        # that relays this site under another id or key, is a coordinator's lie.
        self.history.bind_run(run_parameters_digest(run))
        self.history.bind_identity(
            name=reply.name, participant=reply.participant_id, key=raw_public_key(self.identity_key)
        )
        self._save_history()
        self.method = _METHODS[run.method]
        self.pattern = SparsityPattern(sparsity=run.pattern.sparsity, n=run.pattern.n, m=run.pattern.m)
        self.fedspallm = run.recipe == pb.RECIPE_FEDSPALLM
        if self.fedspallm and (
            self.method is not Method.SPARSEGPT or run.mode != pb.MODE_ONE_SHOT or run.weight_scaling
        ):
            raise RunRefusedError(
                "the run's recipe is fedspallm, which needs method sparsegpt, one-shot mode and no weight "
                "scaling; the coordinator announced otherwise"
            )
        samples = self._samples()
        aggregator = self.privacy.statistic_aggregator() if samples is not None else None
        # The loaded model is pruned in place, block by block (no copy: a copy would double the site's
        # memory). Nothing later needs a pruned block's base weights: the fingerprint was taken at start,
        # layouts read only shapes, and FedSpaLLM reads a block's base weights before pruning it (_vector).
        # One run per instance, so no second run can start from the pruned weights.
        if self._model_consumed:
            raise RuntimeError("this participant already pruned its model in place; start a new one per run")
        self._model_consumed = True
        own = self.model
        if self.fedspallm:
            self._codec = VoteValueCodec(participants=run.participants)
            self._pruner = AssignedBlockPruner(
                own, samples, pattern=self.pattern, device=self.device, aggregator=aggregator
            )
        elif run.mode == pb.MODE_ONE_SHOT:
            layouts = [VoteLayout.for_block(self.model, block) for block in range(run.blocks)]
            pending: KeepVotes = {}
            raw: dict[int, PackedBits] = {}

            def collect(name: str, keep: torch.Tensor) -> None:
                # Blocks are scored in order: pack each one as soon as its last matrix is decided, so the
                # votes of the whole model are never held a byte a weight.
                pending[name] = keep
                layout = layouts[len(raw)] if len(raw) < len(layouts) else None
                if layout is not None and all(n in pending for n in layout.names):
                    block_votes = {n: pending.pop(n) for n in layout.names}
                    raw[len(raw)] = PackedBits.of(layout.flatten(block_votes, dtype=torch.bool).numpy())

            one_shot_votes(
                own,
                samples,
                method=self.method,
                pattern=self.pattern,
                device=self.device,
                aggregator=aggregator,
                on_votes=collect,
            )
            assert not pending and len(raw) == run.blocks  # the block count was checked at join
            # Randomized only now, block by block in order, after every calibration release: the ledger
            # records the same events in the same order as when the votes were randomized all at the end.
            for block in range(run.blocks):
                self._store_vector(block, raw.pop(block).unpack())
        else:
            self._iterative = iterative_votes(
                own,
                samples,
                method=self.method,
                pattern=self.pattern,
                device=self.device,
                aggregator=aggregator,
            )

    def _documents_at_join(self, run: pb.RunParameters) -> int | None:
        """Return the calibration file's document count when the run has record-level DP (else None).

        The data are read here, once, and kept for the run: the delta this site accepts depends on it.
        """
        if run.method == pb.METHOD_MAGNITUDE or not run.privacy.record_level_dp:
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

    def _read_samples(self, run: pb.RunParameters) -> Any:
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

    def _checked_given_samples(self, samples: torch.Tensor | CalibrationSet, run: pb.RunParameters) -> Any:
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

    def _store_vector(self, block: int, keep_votes: np.ndarray) -> None:
        self._vectors[block] = PackedBits.of(self.privacy.randomize_block(block, keep_votes))

    def _vector(self, block: int) -> np.ndarray:
        """Return block ``block``'s randomized keep-votes (iterative: scoring up to it first)."""
        if self._pruner is not None and block not in self._vectors:
            base = self._base_weights(block)  # before prune() overwrites them in place
            self._vectors[block] = self._fedspallm_vector(block, self._pruner.prune(block), base)
            # Blocks run in order and a later block's session starts only once the earlier ones are final,
            # so their vectors (8 bytes a weight here) are never sent again: free them.
            for done in [b for b in self._vectors if b < block]:
                del self._vectors[done]
        while block not in self._vectors:
            assert self._iterative is not None
            scored = len(self._vectors)
            votes = next(self._iterative) if scored == 0 else self._iterative.send(self._mask(scored - 1))
            layout = VoteLayout.for_block(self.model, scored)
            self._store_vector(scored, layout.flatten(votes, dtype=torch.bool).numpy())
        stored = self._vectors[block]
        if not isinstance(stored, PackedBits):
            return stored
        if self._unpacked is None or self._unpacked[0] != block:
            self._unpacked = (block, stored.unpack())  # only the block in session is held unpacked
        return self._unpacked[1]

    def _base_weights(self, block: int) -> dict[str, torch.Tensor]:
        """Return a CPU copy of block ``block``'s prunable weights as they are now (base until it is pruned)."""
        return {
            qualified_name(i, name): sub.weight().detach().to("cpu", copy=True)
            for i, name, sub in iter_prunable(self.model)
            if i == block
        }

    def _fedspallm_vector(
        self, block: int, decisions: dict[str, LocalDecision], base: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """Return block ``block``'s vote-and-update inputs: each randomized keep bit with its weight update."""
        assert self._codec is not None
        layout = VoteLayout.for_block(self.model, block)
        keep = layout.flatten({name: d.keep_votes for name, d in decisions.items()}, dtype=torch.bool)
        bits = self.privacy.randomize_block(block, keep.numpy())
        inputs, clipped = encode_votes_and_updates(self._codec, layout, bits, decisions, base)
        self.clipped_updates += clipped
        if clipped:
            logger.warning(
                "block %d: %d weight updates exceeded the public bound (%g x max |W0| of their matrix) and "
                "were clipped to it",
                block,
                clipped,
                UPDATE_RANGE_FACTOR,
            )
        return inputs

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
                chunks = self.client.block_mask(
                    pb.BlockMaskRequest(run_id=self.params.run_id, block=block), max_bytes=expected_bytes
                )
            except StreamTooLargeError as error:
                raise PrivacyError(f"block {block}'s global mask refused: {error}") from None
            packed = b"".join(chunk.packed for chunk in chunks)
            last = chunks[-1] if chunks else None
            if last is None or not last.last or last.digest != hashlib.sha256(packed).digest():
                raise PrivacyError(f"block {block}'s global mask arrived incomplete or corrupted")
            if len(packed) != expected_bytes:
                raise PrivacyError(
                    f"block {block}'s global mask has {len(packed)} bytes, expected {expected_bytes} for its "
                    f"{layout.dimension} bits"
                )
            layout.check_fingerprint(last.layout_fingerprint, what=f"block {block}'s mask layout")
            if last.bit_count != layout.dimension:
                raise PrivacyError(
                    f"block {block}'s global mask has {last.bit_count} bits, expected {layout.dimension}"
                )
            self._masks[block] = PackedBits(np.frombuffer(packed, dtype=np.uint8).copy(), layout.dimension)
        return self._masks[block]

    # ------------------------------------------------------------------ releases across restarts
    def _released_marker(self, run_id: str) -> Path:
        return self.config.runtime.state / f"released-{run_id}"

    def _mark_released(self) -> None:
        """Record durably, before the first masked vector leaves, that this run has data of this site."""
        path = self._released_marker(self.run_id)
        if path.exists():
            return
        write_durably(path, f"{self.name}: masked votes sent in run {self.run_id}\n".encode())

    # ------------------------------------------------------------------ session history
    def _history_path(self) -> Path:
        return self.config.runtime.state / f"session-history-{self.run_id}.json"

    def _load_history(self) -> SessionHistory:
        path = self._history_path()
        if path.is_file():
            return SessionHistory.restore(json.loads(path.read_text(encoding="utf-8")))
        return SessionHistory()

    def _save_history(self) -> None:
        write_durably(self._history_path(), json.dumps(self.history.export()).encode("utf-8"))

    # ------------------------------------------------------------------ tasks
    def _ref(self, session: pb.SessionRef) -> pb.SessionRef:
        return pb.SessionRef(run_id=self.params.run_id, block=session.block, session_id=session.session_id)

    def _start_session(self, task: pb.StartSession) -> Callable[[], None]:
        block = task.session.block
        if block >= self.params.blocks:
            # Beyond what this site was charged for: the run announced (and the site accounted) only
            # `blocks` releases.
            raise ContradictoryViewError(
                f"a session for block {block}, outside the run's {self.params.blocks} blocks",
                check="session-block-outside-run",
            )
        if not task.HasField("parameters"):
            raise PrivacyError("the session task carries no parameters")
        self._check_session_frame(block, task.parameters)
        # A malformed message (not a lie about the run) is refused, and the site waits for the next task.
        parameters = convert.session_parameters_from_proto(
            task.parameters, max_bit_width=WIDE_MAX_BIT_WIDTH if self.fedspallm else MAX_BIT_WIDTH
        )
        context = SessionContext.decode(parameters.context)
        if (
            context.run_id != self.run_id
            or context.block != block
            or task.session.run_id != self.params.run_id
        ):
            raise ContradictoryViewError(
                "the session's context does not bind this run and block", check="session-context"
            )
        names = self._check_members(task.members, parameters.participant_ids)
        if self._codec is not None:
            self._check_assignment(block)
        keys = {
            m.participant_id: Ed25519PublicKey.from_public_bytes(m.identity_public_key) for m in task.members
        }
        vector = self._vector(block)
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
        released = self.history.released(block)
        digest = self._secagg.bind_votes(vector)
        if released is not None and released != digest:
            self._secagg.abort("a second release of the block")
            raise ContradictoryViewError(
                f"block {block} was released before with another vector; a second release is beyond what "
                "this site was charged for",
                check="second-release",
            )
        # The identities this roster fixed are on disk before the advertisement leaves. Saved before the
        # context is joined: a site that restarts before it answered gets the same task again from an
        # honest coordinator, and must not take that for a replayed context.
        self._save_history()
        request = pb.AdvertiseKeysRequest(
            session=self._ref(task.session),
            advertisement=convert.key_advertisement_to_proto(self._secagg.advertise_keys()),
        )
        logger.info("block %d: session started with %d participants", block, len(task.members))
        return lambda: self.client.advertise_keys(request)

    def _check_session_frame(self, block: int, parameters: secagg_pb.SessionParameters) -> None:
        """Raise CoordinatorMisbehaviour unless the session stays inside the frame the run announced.

        The run's t and c exactly (so t > (n + c)/2 holds with the run's c for the session's n), no more
        members than the run's n, the recipe's max_input and ring, the block's own dimension, and the
        chunking both roles derive from the announced chunk_coordinates.
        """
        run = self.params
        if parameters.threshold != run.threshold:
            raise ContradictoryViewError(
                f"session threshold {parameters.threshold} is not the run's {run.threshold}",
                check="session-threshold",
            )
        if parameters.colluders != run.colluders:
            raise ContradictoryViewError(
                f"session colluders {parameters.colluders} is not the run's {run.colluders}",
                check="session-colluders",
            )
        participants = len(parameters.participant_ids)
        if participants > run.participants:
            raise ContradictoryViewError(
                f"the session has {participants} participants; the run has {run.participants}",
                check="session-members",
            )
        if parameters.max_input != run.max_input or not parameters.ring_headroom:
            raise ContradictoryViewError(
                f"session max_input {parameters.max_input} (ring headroom {parameters.ring_headroom}) is not "
                f"the run's encoding: max_input {run.max_input} with ring headroom",
                check="session-encoding",
            )
        dimension = VoteLayout.for_block(self.model, block).dimension
        if parameters.dimension != dimension:
            raise ContradictoryViewError(
                f"session dimension {parameters.dimension} is not block {block}'s {dimension}",
                check="session-dimension",
            )
        chunk = run.chunk_coordinates
        if self.fedspallm:
            chunk = convert.session_chunk_coordinates(
                ring_bit_width(participants, parameters.max_input), limit=chunk
            )
        if parameters.chunk_coordinates != chunk:
            raise ContradictoryViewError(
                f"session chunk_coordinates {parameters.chunk_coordinates} is not the {chunk} the run "
                "announced",
                check="session-chunk",
            )

    def _check_assignment(self, block: int) -> None:
        """Refuse (PrivacyError) a FedSpaLLM session past ``runtime.max_blocks``."""
        assert self._codec is not None and self._pruner is not None
        budget = self.config.runtime.max_blocks
        if budget is not None and block not in self._vectors and len(self._pruner.pruned) >= budget:
            raise PrivacyError(
                f"block {block} would be block {len(self._pruner.pruned) + 1} this participant prunes, over "
                f"runtime.max_blocks = {budget}"
            )

    def _check_members(self, members: Iterable[pb.Member], participant_ids: Sequence[int]) -> dict[int, str]:
        """Return {participant id: name} of a session's members after checking who they are.

        Identities are fixed for the run: each member is one of the run's announced names, no name, id
        or key appears twice, the ids are the session's, and each name keeps the id and identity key it
        had the first time this site saw it (remembered durably in the history): CoordinatorMisbehaviour
        otherwise. A key that differs from the one pinned in [peers] refuses the run (PeerKeyError).
        """
        members = list(members)
        allowed = set(self.params.participant_names)
        if len(members) != len(participant_ids):
            raise ContradictoryViewError(
                "the session's members are not its participant ids", check="session-members"
            )
        for what, values in (
            ("name", [m.name for m in members]),
            ("participant id", [m.participant_id for m in members]),
            ("identity key", [bytes(m.identity_public_key) for m in members]),
        ):
            if len(set(values)) != len(values):
                raise ContradictoryViewError(
                    f"the session's roster repeats a {what}: one site under several ids would hold several "
                    "shares of every secret",
                    check="roster-repeats-identity",
                )
        if {m.participant_id for m in members} != set(participant_ids):
            raise ContradictoryViewError(
                "the session's members are not its participant ids", check="session-members"
            )
        strangers = sorted(m.name for m in members if m.name not in allowed)
        if strangers:
            raise ContradictoryViewError(
                f"the session's roster holds {strangers}, not among the run's participants",
                check="session-members",
            )
        if self.participant_id not in {m.participant_id for m in members}:
            raise ContradictoryViewError(
                "the session does not include this participant", check="session-members"
            )
        own = raw_public_key(self.identity_key)
        for member in members:
            key = bytes(member.identity_public_key)
            if member.participant_id == self.participant_id:
                if key != own or member.name != self.name:
                    raise PeerKeyError(
                        f"the coordinator announced another identity for this participant "
                        f"({member.name!r}): {key_fingerprint(key)} instead of {key_fingerprint(own)}"
                    )
            elif self.pins:
                pin = self.pins.get(member.name)
                if pin is None:
                    raise PeerKeyError(
                        f"the session's roster holds {member.name!r}, which has no pinned key in [peers]: "
                        "refusing a peer whose key only the coordinator vouches for"
                    )
                if not pin.matches(key):
                    raise PeerKeyError(
                        f"the identity key the coordinator relays for {member.name!r} "
                        f"({key_fingerprint(key)}) differs from the one pinned in peers.{member.name} "
                        f"({pin.fingerprint}): refusing the run"
                    )
        for member in members:
            self.history.bind_identity(
                name=member.name, participant=member.participant_id, key=bytes(member.identity_public_key)
            )
        return {m.participant_id: m.name for m in members}

    def _client_for(self, session: pb.SessionRef) -> SecAggClient:
        if self._secagg is None or self._block != session.block:
            raise PrivacyError(f"no session of block {session.block} in progress here")
        return self._secagg

    def _share_keys(self, task: pb.ShareKeysTask) -> Callable[[], None]:
        secagg = self._client_for(task.session)
        message = secagg.share_keys(convert.roster_from_proto(task.roster))
        request = pb.ShareKeysRequest(
            session=self._ref(task.session), share_keys=convert.share_keys_to_proto(message)
        )
        block = task.session.block

        def send() -> None:
            self.client.share_keys(request)
            logger.info("block %d: shares sent", block)

        return send

    def _masked_input(self, task: pb.MaskedInputTask) -> Callable[[], None]:
        secagg = self._client_for(task.session)
        secagg.receive_shares(convert.share_delivery_from_proto(task.delivery))
        ref = self._ref(task.session)
        parts: list[pb.MaskedInputPart] = []
        assert self._pending_vector is not None
        for message in secagg.masked_input(self._pending_vector):
            wire = convert.to_proto(message)
            if isinstance(wire, pb.MaskedInputPart):  # pragma: no cover - to_proto gives secagg messages
                parts.append(wire)
            elif wire.DESCRIPTOR.name == "MaskedInputChunk":
                parts.append(pb.MaskedInputPart(session=ref, chunk=wire))
            else:
                parts.append(pb.MaskedInputPart(session=ref, done=wire))

        digest = secagg.votes_digest
        assert digest is not None
        self.history.release(block=task.session.block, votes_digest=digest)

        def send() -> None:
            self._mark_released()  # on disk before anything computed from the data leaves
            self._save_history()
            self.client.masked_input(lambda: iter(parts))

        return send

    def _sign(self, task: pb.SignSurvivorsTask) -> Callable[[], None]:
        secagg = self._client_for(task.session)
        signature = secagg.sign_survivors(convert.consistency_check_from_proto(task.check))
        self._save_history()  # on disk before the signature leaves
        request = pb.SignSurvivorsRequest(
            session=self._ref(task.session), signature=convert.survivor_signature_to_proto(signature)
        )
        return lambda: self.client.sign_survivors(request)

    def _unmask(self, task: pb.UnmaskTask) -> Callable[[], None]:
        secagg = self._client_for(task.session)
        response = secagg.unmask(convert.unmask_request_from_proto(task.request))
        request = pb.UnmaskSubmission(
            session=self._ref(task.session), response=convert.unmask_response_to_proto(response)
        )
        block = task.session.block

        def send() -> None:
            self.client.unmask(request)
            logger.info("block %d: votes sent and unmasked", block)
            if self._on_block_done is not None:
                self._on_block_done(block, self.params.blocks)

        return send

    def _statement(self) -> Callable[[], None]:
        if self._iterative is not None:
            # Score every block (and so record every DP release) before attesting; a block whose session
            # this participant missed is still scored with the global mask.
            self._vector(self.params.blocks - 1)
        for block in range(self.params.blocks):
            self._packed_mask(block)  # confirm every block's global mask arrived intact before attesting
        statement = self.privacy.statement(self.identity_key)
        request = pb.SubmitStatementRequest(
            statement=pb.SignedStatement(
                run_id=self.params.run_id,
                participant=self.participant_id,
                statement=statement.model_dump_json().encode("utf-8"),
                signature=bytes.fromhex(statement.signature),
            )
        )
        return lambda: self.client.submit_statement(request)

    def _handle(self, task: pb.Task) -> Callable[[], None] | None:
        kind = task.WhichOneof("kind")
        if kind == "start_session":
            return self._start_session(task.start_session)
        if kind == "share_keys":
            return self._share_keys(task.share_keys)
        if kind == "masked_input":
            return self._masked_input(task.masked_input)
        if kind == "sign_survivors":
            return self._sign(task.sign_survivors)
        if kind == "unmask":
            return self._unmask(task.unmask)
        if kind == "statement":
            return self._statement()
        return None

    def run(self) -> None:
        """Return once the run is complete; raise RunRefusedError / RunAbortedError otherwise.

        Proof that the coordinator lied (a CoordinatorMisbehaviour) ends this site's part in the run:
        the session's secrets and the vectors are dropped, nothing more is sent, and CoordinatorLiedError
        (a RunRefusedError naming the check) is raised.
        """
        try:
            self._run()
        except CoordinatorMisbehaviour as proof:
            self._leave(proof)
            raise CoordinatorLiedError(proof) from None

    def _leave(self, proof: CoordinatorMisbehaviour) -> None:
        if self._secagg is not None:
            self._secagg.abort(f"the coordinator deviated ({proof.check})")
        self._secagg = None
        self._replay = None
        self._pending_vector = None
        self._vectors.clear()
        self._unpacked = None
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
            task = self.client.await_task(self.params.run_id, max_wait_s=AWAIT_S)
            kind = task.WhichOneof("kind")
            if kind == "run_complete":
                logger.info("run %s complete", self.run_id)
                return
            if kind == "run_aborted":
                raise RunAbortedError(f"the coordinator aborted the run: {task.run_aborted.reason}")
            if kind in (None, "wait"):
                continue
            try:
                if self._replay is not None and self._replay[0] == task.sequence:
                    send = self._replay[1]  # the answer was lost: send the same one again
                else:
                    handled = self._handle(task)
                    if handled is None:
                        continue
                    send = handled
                    self._replay = (task.sequence, send)
                send()
            except CoordinatorMisbehaviour:
                raise
            except grpc.RpcError as error:
                answer_refused = error.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                if not answer_refused or self._strict:
                    raise
                logger.warning("%s answer not taken (%s): %s", kind, error.code().name, error.details())
            except ValueError as error:
                # PrivacyError and the conversions' InvalidMessageError are ValueErrors: a malformed or
                # unexpected task is refused and logged; the participant waits for the next one.
                if self._strict:
                    raise
                logger.warning("%s refused by this participant: %s", kind, error)


def progress_reporter(enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """Return (on_block_done, close) driving a progress bar over the run's blocks."""
    bar: list[Any] = []

    def update(block: int, blocks: int) -> None:
        if not bar:
            bar.append(tqdm(total=blocks, desc="blocks", unit="block", disable=not enabled))
        bar[0].update(1)

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close


def _describe(privacy: pb.PrivacyParameters) -> str:
    fields = {
        "randomized_response": privacy.randomized_response,
        "epsilon0": privacy.epsilon0,
        "record_level_dp": privacy.record_level_dp,
        "delta": privacy.delta,
        "sample_rate": privacy.sample_rate,
    }
    if privacy.HasField("noise_multiplier"):
        fields["noise_multiplier"] = privacy.noise_multiplier
    if privacy.HasField("target_epsilon"):
        fields["target_epsilon"] = privacy.target_epsilon
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def _describe_plan(plan: PrivacyPlan) -> str:
    if not plan.reads_data:
        return "magnitude pruning reads no data (epsilon 0)"
    if plan.epsilon is None:
        return f"{plan.blocks} releases of exact statistics (no record-level DP: no finite epsilon)"
    return (
        f"{plan.releases} releases (this model's decoder blocks) at noise multiplier {plan.noise_multiplier:.4g}: "
        f"epsilon {plan.epsilon:.4g} at delta {plan.delta:g}"
    )


def iterate_parts(parts: list[pb.MaskedInputPart]) -> Iterator[pb.MaskedInputPart]:
    """Return an iterator over a prepared masked-input stream (one fresh iterator per attempt)."""
    return iter(parts)
