"""Local (single-site) pruning of a whole model: the baseline every federated result is compared with."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.adapters import LinearSublayer, decoder_blocks, iter_prunable, linear_sublayers, qualified_name
from pruning.calibration import BlockRunner
from pruning.data import CalibrationSet
from pruning.distributed import exact_aggregator
from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method, apply_decision, decide
from pruning.statistics import StatisticAggregator

logger = logging.getLogger(__name__)


def check_pattern_fits(model: nn.Module, pattern: SparsityPattern) -> None:
    """Raise before any work if the pattern does not fit one of the model's prunable matrices."""
    for block_index, name, sublayer in iter_prunable(model):
        pattern.check_fits(qualified_name(block_index, name), sublayer.in_features)


BlockStatistics = dict[str, torch.Tensor | None]


def scored_blocks(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
) -> Iterator[tuple[int, dict[str, LinearSublayer], BlockStatistics]]:
    """Yield (block index, sublayers, each sublayer's statistic) block by block.

    The caller prunes the block's sublayers before asking for the next block: for data-driven methods the
    next block's inputs are computed from the block as the caller left it. Magnitude needs no data and
    yields no statistics.
    """
    if method is Method.MAGNITUDE:
        for index, block in enumerate(decoder_blocks(model)):
            sublayers = linear_sublayers(block)
            yield index, sublayers, dict.fromkeys(sublayers)
        return
    if samples is None:
        raise PruningInputError(f"{method.value} needs calibration data (--data)")
    aggregator = aggregator or exact_aggregator()  # summed over the ranks when data-parallel
    for step in BlockRunner(model, samples, device=device):
        statistics: BlockStatistics = dict(step.collect(method.statistic, aggregator))
        yield step.index, step.sublayers, statistics


@torch.no_grad()
def prune_model(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
    progress: bool = True,
    on_decision: Callable[[str, LocalDecision], None] | None = None,
    block_sparsities: Sequence[float] | None = None,
) -> None:
    """Prune the model in place, block by block, handing each matrix's decision to ``on_decision``.

    ``samples`` (``[nsamples, seqlen]`` token ids) are needed by every method but magnitude.
    ``aggregator`` turns per-record contributions into statistics (exact sums by default; a private
    aggregator from ``privacy`` makes the statistics, and so every mask, differentially private).
    ``block_sparsities`` (unstructured patterns only) gives each decoder block its own sparsity in place of
    ``pattern.sparsity`` (an OWL allocation, ``pruning.owl``).
    """
    check_pattern_fits(model, pattern)
    blocks = len(decoder_blocks(model))
    if block_sparsities is not None:
        if pattern.is_n_m:
            raise PruningInputError(f"per-block sparsities apply to unstructured sparsity, not {pattern}")
        if len(block_sparsities) != blocks:
            raise PruningInputError(
                f"{len(block_sparsities)} block sparsities for a model of {blocks} blocks"
            )
        for index, value in enumerate(block_sparsities):
            if not 0 < value < 1:
                raise PruningInputError(
                    f"block {index}'s sparsity must lie strictly between 0 and 1, got {value}"
                )
    with tqdm(total=blocks, desc=f"{method.value} {pattern}", unit="block", disable=not progress) as bar:
        for index, sublayers, statistics in scored_blocks(
            model, samples, method=method, device=device, aggregator=aggregator
        ):
            block_pattern = (
                pattern
                if block_sparsities is None
                else dataclasses.replace(pattern, sparsity=float(block_sparsities[index]))
            )
            for name, sublayer in sublayers.items():
                decision = decide(method, sublayer, block_pattern, statistics[name])
                apply_decision(sublayer, decision)
                if on_decision is not None:
                    on_decision(qualified_name(index, name), decision)
            bar.update()
