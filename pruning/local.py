"""Local (single-site) pruning of a whole model: the baseline every federated result is compared with."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from pruning.adapters import decoder_blocks, iter_prunable, linear_sublayers, qualified_name
from pruning.calibration import BlockRunner
from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method, apply_decision, decide
from pruning.statistics import ExactSum, StatisticAggregator

logger = logging.getLogger(__name__)


def check_pattern_fits(model: nn.Module, pattern: SparsityPattern) -> None:
    """Raise before any work if the pattern does not fit one of the model's prunable matrices."""
    for block_index, name, sublayer in iter_prunable(model):
        pattern.check_fits(qualified_name(block_index, name), sublayer.in_features)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    samples: torch.Tensor | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
    progress: bool = True,
    on_decision: Callable[[str, LocalDecision], None] | None = None,
) -> None:
    """Prune the model in place, block by block, handing each matrix's decision to ``on_decision``.

    ``samples`` (``[nsamples, seqlen]`` token ids) are needed by every method but magnitude.
    ``aggregator`` turns per-record contributions into statistics (exact sums by default; a private
    aggregator from ``privacy`` makes the statistics, and so every mask, differentially private).
    """
    check_pattern_fits(model, pattern)
    blocks = decoder_blocks(model)
    bar = tqdm(total=len(blocks), desc=f"{method.value} {pattern}", unit="block", disable=not progress)
    if method is Method.MAGNITUDE:
        for index, block in enumerate(blocks):
            for name, sublayer in linear_sublayers(block).items():
                decision = decide(method, sublayer, pattern, None)
                apply_decision(sublayer, decision)
                if on_decision is not None:
                    on_decision(qualified_name(index, name), decision)
            bar.update()
        bar.close()
        return
    if samples is None:
        raise PruningInputError(f"{method.value} needs calibration data (--data)")
    aggregator = aggregator or ExactSum()
    for step in BlockRunner(model, samples, device=device):
        statistics = step.collect(method.statistic, aggregator)
        for name, sublayer in step.sublayers.items():
            decision = decide(method, sublayer, pattern, statistics[name])
            apply_decision(sublayer, decision)
            if on_decision is not None:
                on_decision(qualified_name(step.index, name), decision)
        bar.update()
    bar.close()
