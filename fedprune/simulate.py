"""One-process federated pruning: every participant and the coordinator's aggregation, no network.

This is the research harness and the reference behaviour of the service: the same participant code
(``participant.voting``) computes keep-votes, a vote aggregator sums them (plainly, or through the privacy
pipeline), and the coordinator's pure aggregation functions (``coordinator.aggregation``) turn the sums into
the global mask applied to the public base weights.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from coordinator.aggregation import ComparisonGroup, VoteTally, check_counts, global_mask, scaled_weight
from participant.voting import KeepVotes, iterative_votes, one_shot_votes
from pruning.adapters import iter_prunable, qualified_name
from pruning.data import CalibrationSet, calibration_records, calibration_samples, pooled
from pruning.local import check_pattern_fits, prune_model
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.perplexity import perplexity
from pruning.statistics import StatisticAggregator

logger = logging.getLogger(__name__)


class Mode(enum.Enum):
    """How often the coordinator aggregates."""

    ONE_SHOT = "one-shot"
    """Each participant prunes its own copy and votes on every block; one aggregation."""
    ITERATIVE = "iterative"
    """One aggregation per decoder block; block l's global mask is applied before block l+1 is scored."""


class VoteAggregator(Protocol):
    """Turns every participant's keep-votes for some matrices into per-weight sums."""

    def aggregate(self, votes: Sequence[KeepVotes], *, round_index: int) -> dict[str, torch.Tensor]:
        """Return the summed keep-votes per matrix name."""


class PlainVoteSum:
    """The research baseline: the coordinator sees every participant's votes and sums them."""

    def aggregate(self, votes: Sequence[KeepVotes], *, round_index: int) -> dict[str, torch.Tensor]:
        names = list(votes[0])
        sums = {}
        for name in names:
            rows, columns = votes[0][name].shape
            tally = VoteTally((rows, columns))
            for participant_votes in votes:
                tally.add(participant_votes[name])
            sums[name] = tally.keep_votes
        return sums


@dataclasses.dataclass(frozen=True)
class SimulationSettings:
    """What to prune and how; every field is validated by the CLI or by :func:`simulate`."""

    method: Method = Method.WANDA
    pattern: SparsityPattern = SparsityPattern(sparsity=0.5)
    group: ComparisonGroup = ComparisonGroup.LAYER
    mode: Mode = Mode.ONE_SHOT
    weight_scaling: bool = False
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0


@dataclasses.dataclass
class SimulationResult:
    """The global model and what produced it."""

    model: nn.Module
    global_masks: dict[str, torch.Tensor]
    keep_votes: dict[str, torch.Tensor]
    participants: int
    local_models: list[nn.Module] | None = None


def load_participant_samples(
    files: Sequence[str | Path],
    tokenizer: object,
    *,
    settings: SimulationSettings,
    vocab_size: int,
    disjoint: bool = False,
) -> list[torch.Tensor]:
    """Return each participant's ``nsamples`` calibration windows, drawn from its own file (exact statistics).

    ``disjoint`` draws non-overlapping windows.
    """
    return [
        calibration_samples(
            path,
            tokenizer,  # type: ignore[arg-type]
            nsamples=settings.nsamples,
            seqlen=settings.seqlen,
            seed=settings.seed,
            vocab_size=vocab_size,
            disjoint=disjoint,
        )
        for path in files
    ]


def load_participant_records(
    files: Sequence[str | Path],
    tokenizer: object,
    *,
    seqlen: int,
    vocab_size: int,
    max_windows_per_record: int | None = None,
) -> list[CalibrationSet]:
    """Return every document of each participant's file as windows tagged by document (record-level DP)."""
    return [
        calibration_records(
            path,
            tokenizer,  # type: ignore[arg-type]
            seqlen=seqlen,
            vocab_size=vocab_size,
            max_windows_per_record=max_windows_per_record,
        )
        for path in files
    ]


def _global_model(
    base: nn.Module,
    masks: dict[str, torch.Tensor],
    sums: dict[str, torch.Tensor],
    *,
    settings: SimulationSettings,
    participants: int,
) -> nn.Module:
    """Return a copy of ``base`` with the global masks applied (and the kept weights scaled if asked)."""
    model = copy.deepcopy(base)
    for block_index, name, sublayer in iter_prunable(model):
        key = qualified_name(block_index, name)
        if key not in masks:
            continue
        if settings.weight_scaling:
            sublayer.set_weight(scaled_weight(sublayer.weight(), sums[key], participants))
        sublayer.apply_pruned(masks[key])
    return model


def _select(
    base: nn.Module, sums: dict[str, torch.Tensor], settings: SimulationSettings, participants: int
) -> dict[str, torch.Tensor]:
    masks = {}
    for block_index, name, sublayer in iter_prunable(base):
        key = qualified_name(block_index, name)
        if key in sums:
            check_counts(sums[key], participants, name=key)
            masks[key] = global_mask(
                sums[key], sublayer.weight(), pattern=settings.pattern, group=settings.group
            )
    return masks


def simulate(
    base: nn.Module,
    participant_samples: Sequence[torch.Tensor | CalibrationSet | None],
    *,
    settings: SimulationSettings,
    device: torch.device,
    vote_aggregator: VoteAggregator | None = None,
    statistic_aggregators: Callable[[int], StatisticAggregator] | None = None,
    keep_local_models: bool = False,
    progress: bool = True,
) -> SimulationResult:
    """Return the federated global model built from every participant's votes; ``base`` is not modified.

    ``statistic_aggregators(i)`` gives participant i's calibration-statistics aggregator (exact by default;
    a private one makes the statistics record-level DP). In one-shot mode ``keep_local_models`` also returns
    each participant's own locally pruned copy (the local-only baseline).
    """
    if not participant_samples:
        raise ValueError("simulation needs at least one participant")
    check_pattern_fits(base, settings.pattern)
    vote_aggregator = vote_aggregator or PlainVoteSum()
    n = len(participant_samples)

    def aggregator_for(i: int) -> StatisticAggregator | None:
        return statistic_aggregators(i) if statistic_aggregators else None

    sums: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    local_models: list[nn.Module] | None = [] if keep_local_models else None
    if settings.mode is Mode.ONE_SHOT:
        all_votes: list[KeepVotes] = []
        for i, samples in enumerate(tqdm(participant_samples, desc="participants", disable=not progress)):
            votes: KeepVotes = {}
            own = copy.deepcopy(base)
            one_shot_votes(
                own,
                samples,
                method=settings.method,
                pattern=settings.pattern,
                device=device,
                aggregator=aggregator_for(i),
                on_votes=votes.__setitem__,
            )
            all_votes.append(votes)
            if local_models is not None:
                local_models.append(own)
        sums = vote_aggregator.aggregate(all_votes, round_index=0)
        masks = _select(base, sums, settings, n)
    else:
        copies = [copy.deepcopy(base) for _ in range(n)]
        runs = [
            iterative_votes(
                model,
                samples,
                method=settings.method,
                pattern=settings.pattern,
                device=device,
                aggregator=aggregator_for(i),
            )
            for i, (model, samples) in enumerate(zip(copies, participant_samples, strict=True))
        ]
        block_votes = [next(run) for run in runs]
        round_index = 0
        bar = tqdm(desc="aggregation rounds", unit="block", disable=not progress)
        while True:
            round_sums = vote_aggregator.aggregate(block_votes, round_index=round_index)
            round_masks = _select(base, round_sums, settings, n)
            sums.update(round_sums)
            masks.update(round_masks)
            bar.update()
            round_index += 1
            try:
                block_votes = [run.send(round_masks) for run in runs]
            except StopIteration:
                break
        bar.close()
        del copies
    model = _global_model(base, masks, sums, settings=settings, participants=n)
    return SimulationResult(
        model=model, global_masks=masks, keep_votes=sums, participants=n, local_models=local_models
    )


def global_model_from_votes(
    base: nn.Module, keep_votes: dict[str, torch.Tensor], *, settings: SimulationSettings, participants: int
) -> nn.Module:
    """Return the global model selected from one-shot keep-vote sums under ``settings``.

    Lets a study compare comparison groups and weight scaling on the same votes without re-running the
    participants.
    """
    masks = _select(base, keep_votes, settings, participants)
    return _global_model(base, masks, keep_votes, settings=settings, participants=participants)


def centralized_model(
    base: nn.Module,
    participant_samples: Sequence[torch.Tensor | CalibrationSet],
    *,
    settings: SimulationSettings,
    device: torch.device,
) -> nn.Module:
    """Return the model pruned at one site holding every participant's calibration samples."""
    model = copy.deepcopy(base)
    prune_model(
        model,
        pooled(participant_samples),
        method=settings.method,
        pattern=settings.pattern,
        device=device,
        progress=False,
    )
    return model


def magnitude_model(base: nn.Module, *, pattern: SparsityPattern, device: torch.device) -> nn.Module:
    """Return the magnitude-pruned model: the data-free (eps = 0) baseline."""
    model = copy.deepcopy(base)
    prune_model(model, None, method=Method.MAGNITUDE, pattern=pattern, device=device, progress=False)
    return model


def evaluate(model: nn.Module, stream: torch.Tensor, *, seqlen: int, device: torch.device) -> float:
    """Return the model's perplexity on a token stream."""
    return perplexity(model, stream, seqlen=seqlen, device=device).perplexity


__all__ = [
    "Mode",
    "PlainVoteSum",
    "SimulationResult",
    "SimulationSettings",
    "VoteAggregator",
    "centralized_model",
    "evaluate",
    "global_model_from_votes",
    "load_participant_records",
    "load_participant_samples",
    "magnitude_model",
    "simulate",
]
