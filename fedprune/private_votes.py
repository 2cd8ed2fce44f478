"""The privacy pipeline of a run, as the service runs it: noisy statistics, randomized votes, secure sums.

- Calibration statistics (record-level DP, on by default): each participant's statistics go through a
  ``privacy.calibration_dp.DPStatisticAggregator``; every mask is then post-processing. The record is one
  document of the participant's calibration file.
- Mask bits: each participant randomizes its keep-vote bits with eps0-randomized response (one noisy bit
  per weight per run).
- Aggregation: the randomized bits are summed by a full secure-aggregation session (``privacy.secagg``),
  so the coordinator's view is the per-weight count only.
Every mechanism use is recorded in a hash-chained ledger, from which the signed privacy report is built.

``fedprune simulate`` runs both recipes through the service's own roles instead
(``fedprune.simulate.simulate_service``). What stays here is what the benchmarks and library tests use: the
FedSpaLLM sums of the library's ``simulate`` (``PrivateBlockAggregation``, whose sites randomize and add
noise with ``participant.privacy`` and whose one packed session per block is the service's), the FedPrLLM
aggregation (``PrivateVoteAggregation``), and the settings both take.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from participant.privacy import ParticipantPrivacy, RunPrivacy
from privacy.accounting import DEFAULT_ACCOUNTANT_TOLERANCE
from privacy.calibration_dp import DEFAULT_TARGET_EPSILON, DPStatisticAggregator
from privacy.errors import PrivacyError
from privacy.ledger import Mechanism, MechanismEvent, PrivacyLedger
from privacy.randomized_response import THRESHOLD_BITS, RandomizedResponse
from privacy.report import SummedInputs, contributors_parameter, tolerated_colluders
from privacy.secagg import SessionContext, aggregate_in_process, resolve_threshold

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """The privacy parameters of a run."""

    epsilon0: float | None = 4.0
    """Randomized response on mask bits; None (or inf) sends true bits (only secure aggregation hides them)."""
    record_level_dp: bool = True
    """DP calibration statistics, the only record-level guarantee; off leaves the statistics exact."""
    noise_multiplier: float | None = None
    """Noise multiplier of the record-level DP statistics (instead of ``target_epsilon``)."""
    target_epsilon: float | None = None
    """The record-level epsilon at ``delta`` the noise is derived from; default
    :data:`DEFAULT_TARGET_EPSILON` when record-level DP is on and no noise multiplier is given."""
    delta: float = 1e-5
    sample_rate: float = 1.0
    """Poisson sampling rate of each participant's records per block (amplification by subsampling)."""
    secure_aggregation: bool = True
    threshold: int | None = None
    """Secure-aggregation threshold t; default floor(2n/3) + 1 (at least floor((n + c) / 2) + 1)."""
    colluders: int | None = None
    """Participants assumed to collude with the coordinator (c); default the most the threshold tolerates."""
    accountant_tolerance: float = DEFAULT_ACCOUNTANT_TOLERANCE
    """Largest relative gap allowed between the RDP and PRV accountants before the run fails."""

    def __post_init__(self) -> None:
        if self.epsilon0 is not None and not (self.epsilon0 > 0):
            raise PrivacyError(f"epsilon0 must be positive, got {self.epsilon0}")
        if not self.record_level_dp and (
            self.noise_multiplier is not None or self.target_epsilon is not None
        ):
            raise PrivacyError("noise_multiplier and target_epsilon need record_level_dp")
        if self.record_level_dp and self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)
        if self.colluders is not None and self.colluders < 0:
            raise PrivacyError(f"colluders must be >= 0, got {self.colluders}")
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise PrivacyError("give either a noise multiplier (sigma) or a target epsilon, not both")
        if self.noise_multiplier is not None and not (self.noise_multiplier > 0):
            raise PrivacyError(f"noise multiplier must be positive, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not (self.target_epsilon > 0):
            raise PrivacyError(f"target epsilon must be positive, got {self.target_epsilon}")
        if not (0 < self.delta < 1):
            raise PrivacyError(f"delta must lie in (0, 1), got {self.delta}")
        if not (0 < self.sample_rate <= 1):
            raise PrivacyError(f"sample rate must lie in (0, 1], got {self.sample_rate}")

    @property
    def randomizes_bits(self) -> bool:
        """Return True when mask bits go through randomized response."""
        return self.epsilon0 is not None and math.isfinite(self.epsilon0)

    @property
    def private_statistics(self) -> bool:
        """Return True when calibration statistics are record-level DP."""
        return self.record_level_dp

    def run_privacy(self) -> RunPrivacy:
        """Return these settings as the run's privacy parameters a participant applies."""
        return RunPrivacy(
            randomized_response=self.randomizes_bits,
            epsilon0=self.epsilon0 if self.randomizes_bits and self.epsilon0 is not None else 0.0,
            record_level_dp=self.record_level_dp,
            noise_multiplier=self.noise_multiplier,
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            sample_rate=self.sample_rate,
            accountant_tolerance=self.accountant_tolerance,
        )

    def describe(self) -> dict[str, object]:
        """Return the layers of the run in words and numbers (for ``simulation.json`` and logs)."""
        return {
            "record_level_dp": (
                {
                    "unit": "one document of a participant's calibration file (add/remove)",
                    "target_epsilon": self.target_epsilon,
                    "noise_multiplier": self.noise_multiplier,
                    "delta": self.delta,
                    "sample_rate": self.sample_rate,
                }
                if self.record_level_dp
                else "off: calibration statistics are exact, no record-level guarantee"
            ),
            "randomized_response": (
                {
                    "epsilon0": self.epsilon0,
                    "note": "limits what one vote reveals; not a record-level guarantee",
                }
                if self.randomizes_bits
                else "off"
            ),
            "secure_aggregation": self.secure_aggregation,
        }


def participant_name(index: int) -> str:
    """Return the ledger name of simulated participant ``index``."""
    return f"participant-{index:03d}"


def site_privacy(
    settings: PrivacySettings, ledger: PrivacyLedger, *, participant: int, blocks: int, run_id: str = ""
) -> ParticipantPrivacy:
    """Return participant ``participant``'s own mechanisms (``participant.privacy``), recording into ``ledger``."""
    return ParticipantPrivacy(
        name=participant_name(participant),
        run_id=run_id,
        settings=settings.run_privacy(),
        blocks=blocks,
        ledger=ledger,
    )


def statistic_aggregator(
    settings: PrivacySettings, ledger: PrivacyLedger, *, participant: int, blocks: int
) -> DPStatisticAggregator:
    """Return participant ``participant``'s record-level DP statistics aggregator (the participant's own)."""
    aggregator = site_privacy(settings, ledger, participant=participant, blocks=blocks).statistic_aggregator()
    if aggregator is None:
        raise PrivacyError("statistic_aggregator needs settings.record_level_dp")
    return aggregator


def threshold_and_colluders(settings: PrivacySettings, *, participants: int) -> tuple[int, int]:
    """Return (t, c): the secure-aggregation threshold and the colluders assumed, checked together.

    t is ``settings.threshold`` or the default for ``participants``; c is ``settings.colluders`` or the
    most t tolerates. Raises PrivacyError unless t > (n + c) / 2 and c < t.
    """
    threshold = resolve_threshold(
        settings.threshold, participants=participants, colluders=settings.colluders or 0
    )
    tolerated = tolerated_colluders(participants, threshold)
    colluders = tolerated if settings.colluders is None else settings.colluders
    if colluders > tolerated:
        raise PrivacyError(
            f"colluders {colluders} exceeds what threshold {threshold} of {participants} tolerates "
            f"({tolerated}: c < t and t > (n + c) / 2)"
        )
    return threshold, colluders


class PrivateVoteAggregation:
    """Randomizes every participant's keep-votes and sums them by secure aggregation."""

    def __init__(
        self,
        settings: PrivacySettings,
        ledger: PrivacyLedger,
        *,
        participants: int,
        run_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.participants = participants
        # Validated here, before any ledger event: t > (n + c) / 2 for the colluders assumed.
        self.threshold, self.colluders = threshold_and_colluders(settings, participants=participants)
        self.run_id = run_id or uuid.uuid4().hex
        self._randomizers = (
            [RandomizedResponse(epsilon0=settings.epsilon0) for _ in range(participants)]  # type: ignore[arg-type]
            if settings.randomizes_bits
            else None
        )

    def aggregate(
        self, votes: Sequence[dict[str, torch.Tensor]], *, round_index: int
    ) -> dict[str, torch.Tensor]:
        """Return the per-weight sums of the (randomized) keep-votes, computed by secure aggregation."""
        if len(votes) != self.participants:
            raise PrivacyError(f"expected votes from {self.participants} participants, got {len(votes)}")
        names = list(votes[0])
        shapes = [tuple(votes[0][name].shape) for name in names]
        vectors = []
        for index, participant_votes in enumerate(votes):
            bits = np.concatenate(
                [participant_votes[name].numpy().astype(np.bool_).reshape(-1) for name in names]
            )
            if self._randomizers is not None:
                randomizer = self._randomizers[index]
                bits = randomizer.randomize(bits, layer=f"round-{round_index}")
                self.ledger.record(
                    MechanismEvent(
                        mechanism=Mechanism.RANDOMIZED_RESPONSE,
                        participant=participant_name(index),
                        round=round_index,
                        count=int(bits.size),
                        parameters={
                            "epsilon0": randomizer.epsilon0,
                            "requested_epsilon0": randomizer.requested_epsilon0,
                            "threshold": randomizer.threshold,
                            "threshold_bits": THRESHOLD_BITS,
                            "flip_probability": randomizer.flip_probability,
                        },
                    )
                )
            vectors.append(bits.astype(np.uint8))
        if self.settings.secure_aggregation:
            sums = aggregate_in_process(
                vectors,
                threshold=self.threshold,
                colluders=self.colluders,
                context=SessionContext.fresh(run_id=self.run_id, round=round_index, block=round_index),
            )
            self.ledger.record(
                MechanismEvent(
                    mechanism=Mechanism.SECURE_AGGREGATION,
                    participant="*",
                    round=round_index,
                    count=int(vectors[0].size),
                    parameters={
                        "participants": self.participants,
                        "threshold": self.threshold,
                        # In one process nobody drops out: every participant's vector is in the sum.
                        "survivors": self.participants,
                        "colluders": self.colluders,
                        "contributors": contributors_parameter(
                            participant_name(i) for i in range(self.participants)
                        ),
                        "summed": SummedInputs.KEEP_VOTES.value,
                    },
                )
            )
        else:
            sums = np.sum(np.stack(vectors).astype(np.int64), axis=0)
        result, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            result[name] = torch.from_numpy(
                np.asarray(sums[offset : offset + size], dtype=np.int32).reshape(shape)
            )
            offset += size
        return result


class PrivateBlockAggregation:
    """FedSpaLLM's sums for one block over its assigned participants: randomized votes, fixed-point updates.

    Per block, over the block's participants only (``members``, at least the threshold t of them):
    1. each participant randomizes its keep bits m with eps0-randomized response into r (one noisy bit per
       weight per run, as in the FedPrLLM recipe);
    2. one secure-aggregation session in a wide ring sums, per weight, r packed with the fixed-point
       encoding of r * m * (w - W0) (:class:`privacy.secagg.fixed_point.VoteValueCodec`): the
       participant's SparseGPT update at the positions it votes keep and truly kept (a vote flipped to
       keep carries a zero update, i.e. the public base weight W0); the sum splits into the keep-vote
       counts S and the update sums, over exactly the same survivors;
    3. the divisor of the l0-norm average is the estimated number of true keeps among the S votes
       (:func:`coordinator.aggregation.true_keepers_estimate`), which undoes the shrinkage toward W0.
    The session runs at the run's threshold t over the block's k >= t participants (t > (n + c)/2 >=
    (k + c)/2, so t is safe for every subset) and is recorded in the ledger with its block and k. This is
    what the service's coordinator and participants do (``run.recipe = "fedspallm"``).
    The weight updates are post-processing of the record-level DP statistics; randomized response covers
    the vote counts only (docs/PRIVACY.md, "FedSpaLLM: averaged weights").
    """

    def __init__(
        self,
        settings: PrivacySettings,
        ledger: PrivacyLedger,
        *,
        participants: int,
        run_id: str | None = None,
    ) -> None:
        # The run-level checks (threshold, colluders, run id) are the FedPrLLM recipe's, unchanged.
        votes = PrivateVoteAggregation(settings, ledger, participants=participants, run_id=run_id)
        self.settings = settings
        self.ledger = ledger
        self.participants = participants
        self.threshold = votes.threshold
        self.colluders = votes.colluders
        self.run_id = votes.run_id
        self._flip_probability = (
            RandomizedResponse(epsilon0=settings.epsilon0).flip_probability  # type: ignore[arg-type]
            if settings.randomizes_bits
            else 0.0
        )
        self._sites: dict[int, ParticipantPrivacy] = {}
        self.clipped = 0

    @property
    def coverage(self) -> int:
        """Return t: every block's session needs at least t participants."""
        return self.threshold

    @property
    def flip_probability(self) -> float:
        """Return the randomized-response flip probability p of the vote bits (0 without randomization)."""
        return self._flip_probability

    def _site(self, member: int) -> ParticipantPrivacy:
        """Return participant ``member``'s own mechanisms (it randomizes each block's votes once)."""
        if member not in self._sites:
            self._sites[member] = site_privacy(
                self.settings, self.ledger, participant=member, blocks=1, run_id=self.run_id
            )
        return self._sites[member]

    def _sum(
        self, vectors: list[np.ndarray], *, block: int, members: Sequence[int], max_input: int | None = None
    ) -> np.ndarray:
        if not self.settings.secure_aggregation:
            return np.sum(np.stack(vectors).astype(np.int64), axis=0)
        from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH

        sums = aggregate_in_process(
            vectors,
            threshold=self.threshold,
            colluders=self.colluders,
            context=SessionContext.fresh(run_id=self.run_id, round=block, block=block),
            max_input=max_input,
            max_bit_width=WIDE_MAX_BIT_WIDTH if max_input is not None else MAX_BIT_WIDTH,
        )
        self.ledger.record(
            MechanismEvent(
                mechanism=Mechanism.SECURE_AGGREGATION,
                participant="*",
                round=block,
                block=block,
                count=int(vectors[0].size),
                parameters={
                    "participants": len(vectors),
                    "threshold": self.threshold,
                    "survivors": len(vectors),
                    "colluders": self.colluders,
                    "contributors": contributors_parameter(participant_name(m) for m in members),
                    "summed": SummedInputs.KEEP_VOTES_AND_WEIGHT_UPDATES.value,
                },
            )
        )
        return sums

    def aggregate_block(
        self,
        block: int,
        members: Sequence[int],
        results: Sequence[dict[str, Any]],
        base_weights: dict[str, torch.Tensor],
    ) -> Any:
        """Return the block's :class:`fedprune.simulate.BlockSums`, every sum computed by secure aggregation."""
        from coordinator.aggregation import decode_votes_and_updates
        from fedprune.simulate import BlockSums
        from participant.privacy import encode_votes_and_updates
        from privacy.secagg.fixed_point import VoteValueCodec
        from pruning.layout import VoteLayout

        k = len(members)
        if k < self.threshold:
            raise PrivacyError(
                f"block {block} has {k} participants, fewer than the threshold {self.threshold}"
            )
        if len(results) != k:
            raise PrivacyError(f"block {block}: {len(results)} results for {k} members")
        shapes = {name: base_weights[name].shape for name in results[0]}
        layout = VoteLayout(tuple((name, (int(shape[0]), int(shape[1]))) for name, shape in shapes.items()))
        codec = VoteValueCodec(participants=self.participants)
        clipped_before = self.clipped
        vectors = []
        for member, result in zip(members, results, strict=True):
            keep = layout.flatten({name: decision.keep_votes for name, decision in result.items()})
            bits = self._site(member).randomize_block(block, keep.numpy())
            inputs, clipped = encode_votes_and_updates(codec, layout, bits, result, base_weights)
            self.clipped += clipped
            vectors.append(inputs)
        packed_sums = self._sum(vectors, block=block, members=members, max_input=codec.max_input)
        decoded = decode_votes_and_updates(
            codec, layout, packed_sums, base_weights, contributors=k, flip_probability=self.flip_probability
        )
        return BlockSums(
            keep_votes={name: matrix.keep_votes for name, matrix in decoded.items()},
            update_sums={name: matrix.update_sums for name, matrix in decoded.items()},
            contributors={name: matrix.divisor for name, matrix in decoded.items()},
            clipped=self.clipped - clipped_before,
        )
