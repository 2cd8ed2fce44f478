"""The participant's own privacy pipeline: DP statistics, randomized votes, its ledger and signed statement.

Everything here runs on the participant's machine. It randomizes one block's flat keep-vote vector (in
``pruning.layout.VoteLayout`` order) exactly once, records each mechanism it applied in its own ledger, and
signs the statement of those events with its long-term identity key, so the coordinator can neither forge
nor drop what a site attests.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from privacy.accounting import GaussianRelease, gaussian_epsilon
from privacy.calibration_dp import DPStatisticAggregator, SignalOutlook, signal_outlook
from privacy.errors import PrivacyError
from privacy.ledger import Mechanism, MechanismEvent, PrivacyLedger
from privacy.parameters import PrivacyParameters
from privacy.randomized_response import THRESHOLD_BITS, RandomizedResponse
from privacy.secagg.fixed_point import VoteValueCodec
from privacy.signing import ParticipantStatement, sign_participant_statement
from proto.config_file import describe_validation_error
from pruning.layout import VoteLayout
from pruning.methods import LocalDecision, Method
from pruning.updates import local_updates, update_bound

logger = logging.getLogger(__name__)


class RunPrivacy(PrivacyParameters):
    """The run's privacy parameters as the coordinator announced them (and the participant accepted).

    :class:`privacy.parameters.PrivacyParameters`, the model the coordinator's ``[privacy]`` table is
    too; built here, a parameter that breaks its rules raises PrivacyError naming the field, which the
    site turns into a refusal of the run.
    """

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as error:
            raise PrivacyError(f"the run's privacy parameters: {describe_validation_error(error)}") from None


def planned_noise_multiplier(settings: RunPrivacy, *, blocks: int) -> float | None:
    """Return the noise multiplier of the run's DP statistics (None when record-level DP is off).

    ``blocks``: the releases the target epsilon is planned over (one per block, two under OWL)."""
    from privacy.accounting import noise_multiplier_for_epsilon

    if not settings.record_level_dp:
        return None
    if settings.noise_multiplier is not None:
        return settings.noise_multiplier
    assert settings.target_epsilon is not None
    return noise_multiplier_for_epsilon(
        target_epsilon=settings.target_epsilon,
        delta=settings.delta,
        releases=blocks,
        sample_rate=settings.sample_rate,
        tolerance=settings.accountant_tolerance,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """What one run will spend on this site's data, derived by the site from its own model and data.

    The coordinator announces the mechanism (target or noise multiplier, sample rate, delta); the counts
    the accounting rests on are the site's own: its model's decoder blocks, one joint Gaussian release per
    block (``DPStatisticAggregator``; two under OWL: the block's dense statistics for the allocation, then
    the block's own), and its calibration file's documents. The lifetime budget is
    charged ``epsilon`` and ``delta`` for at most ``releases`` releases, and the statistics aggregator
    refuses to make more.
    """

    reads_data: bool
    """False for magnitude pruning, which releases nothing computed from the data."""
    blocks: int
    """Decoder blocks of the site's own model."""
    releases: int
    """Releases of statistics of the site's data this run may make: one per decoder block of its own
    model (two under OWL), 0 when it reads no data. What the lifetime budget is charged for, and the most the record-level
    aggregator makes; each block's vector is randomized once, so no block is ever released twice."""
    noise_multiplier: float | None
    """Noise multiplier of each release (planned here for ``releases`` when the run states a target)."""
    epsilon: float | None
    """Record-level epsilon at ``delta`` of ``releases`` releases (the larger of RDP and PRV); 0 when it
    reads no data; None without record-level DP (exact statistics: no finite epsilon bounds them)."""
    delta: float
    documents: int | None
    """Documents in the site's calibration file (None when not read at join: no record-level DP)."""


def plan_privacy(
    settings: RunPrivacy,
    *,
    reads_data: bool,
    blocks: int,
    documents: int | None = None,
    releases_per_block: int = 1,
) -> PrivacyPlan:
    """Return the site's privacy plan for a run with ``settings`` on its own ``blocks``-block model.

    ``releases_per_block``: 2 for an OWL run (the allocation phase releases each block's dense statistics
    once more), else 1.

    Raises PrivacyError when the settings cannot be accounted (a delta outside (0, 1), a sample rate
    outside (0, 1], a noise multiplier that is not positive, a target no noise multiplier reaches).
    """
    if blocks < 1:
        raise PrivacyError(f"blocks must be >= 1, got {blocks}")
    if releases_per_block not in (1, 2):
        raise PrivacyError(f"releases_per_block must be 1 or 2, got {releases_per_block}")
    releases = blocks * releases_per_block
    if not reads_data:
        return PrivacyPlan(
            reads_data=False,
            blocks=blocks,
            releases=0,
            noise_multiplier=None,
            epsilon=0.0,
            delta=0.0,
            documents=documents,
        )
    sigma = epsilon = None  # exact statistics: no finite epsilon bounds them
    if settings.record_level_dp:
        sigma = planned_noise_multiplier(settings, blocks=releases)
        assert sigma is not None
        release = GaussianRelease(noise_multiplier=sigma, sample_rate=settings.sample_rate, count=releases)
        epsilon = gaussian_epsilon(
            [release], delta=settings.delta, tolerance=settings.accountant_tolerance
        ).epsilon
    return PrivacyPlan(
        reads_data=True,
        blocks=blocks,
        releases=releases,
        noise_multiplier=sigma,
        epsilon=epsilon,
        delta=settings.delta,
        documents=documents,
    )


def block_signal_outlook(
    model: torch.nn.Module, *, method: Method, records: int, noise_multiplier: float, sample_rate: float
) -> SignalOutlook:
    """Return what the record-level noise will leave of a site's statistics, said before any release.

    One function for every host that says it: the participant's log and ``fedprune simulate``'s printout.
    """
    from pruning.adapters import decoder_blocks
    from pruning.statistics import StatisticKind

    return signal_outlook(
        records=records,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        dimension=released_dimension(decoder_blocks(model)[0], gram=method.statistic is StatisticKind.GRAM),
    )


def released_dimension(block: object, *, gram: bool) -> int:
    """Return D, the coordinates of one block's joint DP release (inputs shared by sublayers counted once)."""
    from privacy.calibration_dp import shared_input_group
    from pruning.adapters import linear_sublayers

    widths = {shared_input_group(name): sub.in_features for name, sub in linear_sublayers(block).items()}  # type: ignore[arg-type]
    return sum(w * (w + 1) // 2 if gram else w for w in widths.values())


class ParticipantPrivacy:
    """One participant's mechanisms for one run: its DP statistics, its randomized response, its ledger."""

    def __init__(
        self,
        *,
        name: str,
        run_id: str,
        settings: RunPrivacy,
        blocks: int,
        ledger: PrivacyLedger | None = None,
        plan: PrivacyPlan | None = None,
    ) -> None:
        """``ledger``: where the events go (a fresh one of this participant's own by default).

        ``plan``: the site's own privacy plan (``plan_privacy``); its noise multiplier is applied and its
        release count is the most the statistics aggregator makes. Without one, the noise is planned for
        ``blocks`` releases and their number is not capped (a library host that counts its own blocks).
        """
        if blocks < 1:
            raise PrivacyError(f"blocks must be >= 1, got {blocks}")
        if plan is not None and plan.blocks != blocks:
            raise PrivacyError(f"the plan is for {plan.blocks} blocks, not {blocks}")
        self.name = name
        self.run_id = run_id
        self.settings = settings
        self.blocks = blocks
        self.plan = plan
        self.ledger = ledger if ledger is not None else PrivacyLedger()
        self._randomizer = (
            RandomizedResponse(epsilon0=settings.epsilon0) if settings.randomized_response else None
        )
        self._randomized: set[int] = set()

    def statistic_aggregator(self) -> DPStatisticAggregator | None:
        """Return the record-level DP aggregator of the calibration statistics, or None when that is off.

        Its Gaussian releases are recorded in this participant's ledger under its name.
        """
        from pruning.distributed import ranks_reduction

        settings = self.settings
        if not settings.record_level_dp:
            return None
        ranks = ranks_reduction()  # None in one process (the daemon always is; a library host may not be)
        plan = self.plan
        if plan is not None:
            assert plan.noise_multiplier is not None
            return DPStatisticAggregator(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=settings.sample_rate,
                accountant_tolerance=settings.accountant_tolerance,
                ledger=self.ledger,
                participant=self.name,
                max_releases=plan.releases,
                ranks=ranks,
            )
        if settings.target_epsilon is not None:
            return DPStatisticAggregator.for_target(
                target_epsilon=settings.target_epsilon,
                delta=settings.delta,
                blocks=self.blocks,
                sample_rate=settings.sample_rate,
                accountant_tolerance=settings.accountant_tolerance,
                ledger=self.ledger,
                participant=self.name,
                ranks=ranks,
            )
        assert settings.noise_multiplier is not None
        return DPStatisticAggregator(
            noise_multiplier=settings.noise_multiplier,
            sample_rate=settings.sample_rate,
            accountant_tolerance=settings.accountant_tolerance,
            ledger=self.ledger,
            participant=self.name,
            ranks=ranks,
        )

    def randomize_block(self, block: int, keep_votes: np.ndarray) -> np.ndarray:
        """Return block ``block``'s keep-vote bits after randomized response (a copy when it is off).

        A block is randomized once per run: fresh noise on the same votes would let the sums be averaged.
        The caller keeps the result and sends it again if a session must be repeated.
        """
        if block in self._randomized:
            raise PrivacyError(f"block {block} was already randomized in this run; never re-randomize")
        bits = np.ascontiguousarray(keep_votes, dtype=np.bool_).reshape(-1)
        self._randomized.add(block)
        if self._randomizer is None:
            return bits.copy()
        noisy = self._randomizer.randomize(bits, layer=f"block-{block}")
        self.ledger.record(
            MechanismEvent(
                mechanism=Mechanism.RANDOMIZED_RESPONSE,
                participant=self.name,
                round=block,
                block=block,
                count=int(bits.size),
                parameters={
                    "epsilon0": self._randomizer.epsilon0,
                    "requested_epsilon0": self._randomizer.requested_epsilon0,
                    "threshold": self._randomizer.threshold,
                    "threshold_bits": THRESHOLD_BITS,
                    "flip_probability": self._randomizer.flip_probability,
                },
            )
        )
        return noisy

    def events(self) -> list[MechanismEvent]:
        """Return every mechanism event this participant recorded, in order (its own only, in a shared ledger)."""
        return [event for event in self.ledger.events() if event.participant == self.name]

    def statement(self, identity_key: Ed25519PrivateKey) -> ParticipantStatement:
        """Return the statement of this participant's events, signed with its long-term identity key.

        It states no size of the data, not even a coarse class: any function of the document count is
        outside the DP guarantee (the count differs between neighbouring datasets), so ``data_size_class``
        stays empty.
        """
        return sign_participant_statement(
            participant=self.name, run_id=self.run_id, events=self.events(), private_key=identity_key
        )


def encode_votes_and_updates(
    codec: VoteValueCodec,
    layout: VoteLayout,
    bits: np.ndarray,
    decisions: Mapping[str, LocalDecision],
    base_weights: Mapping[str, torch.Tensor],
) -> tuple[np.ndarray, int]:
    """Return (one block's FedSpaLLM inputs in ``layout`` order, how many updates were clipped).

    ``bits`` are the block's randomized keep bits (flat, ``layout`` order); each r = 1 coordinate carries
    the site's SparseGPT update w - W0 of that weight (0 where it pruned: a vote flipped to keep), in fixed
    point against the matrix's public bound (``pruning.updates.update_bound``).
    """
    updates = local_updates(decisions, base_weights)
    inputs = np.empty(layout.dimension, dtype=np.uint64)
    clipped = 0
    for entry in layout:
        encoded = codec.encode(
            updates[entry.name].numpy().reshape(-1),
            bound=update_bound(base_weights[entry.name]),
            votes=bits[entry.coordinates],
        )
        inputs[entry.coordinates] = encoded.inputs
        clipped += encoded.clipped
    return inputs, clipped
