"""OWL: per-block sparsity from each block's share of outlier scores (Yin et al., ICML 2024).

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
Sparsity" (ICML 2024, arXiv:2310.05175; the authors' code, github.com/luuyin/OWL, ``prune_wanda_outlier``):

1. *Layerwise outlier distribution.* One calibration pass through the dense model; for every prunable
   matrix of block l the Wanda score ``|W_ij| * ||X_j||_2``; D_l is the share of the block's scores (all
   its matrices together) above M times their mean (M = 5 by default).
2. *Allocation.* D is min-max normalised into [0, 2 * lambda] (lambda = 0.08 by default), centred on its
   mean and subtracted from the target sparsity S: ``s_l = S - (n_l - mean(n))`` with
   ``n_l = 2 * lambda * (D_l - min D) / (max D - min D)``. A block with more outliers is pruned less; every
   s_l lies within 2 * lambda of S (within lambda when D's mean is its midpoint).

One deliberate difference: the mean is weighted by each block's prunable weight count, so the weighted
mean of the s_l is S exactly in real arithmetic (the code's plain mean is the same thing when all blocks
have the same size, as in the models OWL was published on). Each matrix of block l then prunes
``int(in * s_l)`` weights per output row, the same per-row rounding as a uniform run, so the model's
realized sparsity is S to within one weight per output row of every matrix (:func:`check_allocation`
checks the allocation's mean before anything is pruned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pruning.adapters import decoder_blocks, linear_sublayers
from pruning.calibration import BlockRunner
from pruning.data import CalibrationSet
from pruning.errors import PruningInputError
from pruning.methods import wanda_scores
from pruning.statistics import ExactSum, StatisticKind

OWL_OUTLIER_MULTIPLE = 5.0
"""M: a score is an outlier above M times its block's mean score (the paper's value for LLaMA)."""
OWL_LAMBDA = 0.08
"""lambda: how far a block's sparsity may move from the target (the paper's default)."""


@dataclasses.dataclass(frozen=True)
class OwlSettings:
    """OWL's two hyperparameters."""

    multiple: float = OWL_OUTLIER_MULTIPLE
    lam: float = OWL_LAMBDA

    def __post_init__(self) -> None:
        if not self.multiple > 0:
            raise PruningInputError(f"OWL's outlier multiple M must be > 0, got {self.multiple}")
        if not 0 <= self.lam < 0.5:
            raise PruningInputError(f"OWL's lambda must lie in [0, 0.5), got {self.lam}")


@dataclasses.dataclass(frozen=True)
class OwlAllocation:
    """Each block's outlier ratio and the sparsity allocated to it."""

    settings: OwlSettings
    target: float
    outlier_ratios: tuple[float, ...]
    sparsities: tuple[float, ...]
    weights: tuple[int, ...]
    """Prunable weights per block (what the mean is weighted by)."""

    def as_dict(self) -> dict[str, object]:
        """Return the allocation as ``sparsity.json`` records it."""
        return {
            "method": "owl",
            "outlier_multiple": self.settings.multiple,
            "lambda": self.settings.lam,
            "target_sparsity": self.target,
            "blocks": [
                {"block": i, "outlier_ratio": d, "sparsity": s, "weights": w}
                for i, (d, s, w) in enumerate(
                    zip(self.outlier_ratios, self.sparsities, self.weights, strict=True)
                )
            ],
        }


def block_outlier_ratio(scores: Sequence[torch.Tensor], *, multiple: float) -> float:
    """Return the share of ``scores`` (all of one block's matrices) above ``multiple`` times their mean."""
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores])
    if flat.numel() == 0:
        raise PruningInputError("a block without prunable weights has no outlier ratio")
    return float((flat > multiple * flat.mean()).sum()) / flat.numel()


def block_outlier_ratio_from_statistics(
    weights: Mapping[str, torch.Tensor], column_squares: Mapping[str, torch.Tensor], *, multiple: float
) -> float:
    """Return a block's outlier ratio from its matrices' weights and summed column statistics (sum x_j^2)."""
    return block_outlier_ratio(
        [wanda_scores(weights[name], column_squares[name]) for name in weights], multiple=multiple
    )


def allocate(
    outlier_ratios: Sequence[float], weights: Sequence[int], *, target: float, settings: OwlSettings
) -> OwlAllocation:
    """Return the per-block sparsities for the ``outlier_ratios`` (see the module docstring)."""
    if len(outlier_ratios) != len(weights) or not weights:
        raise PruningInputError("OWL needs one outlier ratio and one weight count per block")
    if not 0 < target < 1:
        raise PruningInputError(f"sparsity must lie strictly between 0 and 1, got {target}")
    ratios = torch.tensor(outlier_ratios, dtype=torch.float64)
    counts = torch.tensor(weights, dtype=torch.float64)
    spread = float(ratios.max() - ratios.min())
    normalized = (
        (ratios - ratios.min()) / spread * (2 * settings.lam) if spread > 0 else torch.zeros_like(ratios)
    )
    weighted_mean = float((normalized * counts).sum() / counts.sum())
    sparsities = tuple(float(target - (n - weighted_mean)) for n in normalized.tolist())
    for index, sparsity in enumerate(sparsities):
        if not 0 < sparsity < 1:
            raise PruningInputError(
                f"OWL would give block {index} sparsity {sparsity:.4f}, outside (0, 1): lower lambda "
                f"({settings.lam}) or move the target sparsity ({target}) away from 0 and 1"
            )
    allocation = OwlAllocation(
        settings, target, tuple(float(r) for r in outlier_ratios), sparsities, tuple(weights)
    )
    check_allocation(allocation)
    return allocation


def check_allocation(allocation: OwlAllocation) -> None:
    """Raise unless the allocation's mean, weighted by the blocks' weight counts, is the target."""
    total = sum(allocation.weights)
    pruned = sum(s * w for s, w in zip(allocation.sparsities, allocation.weights, strict=True))
    # Floating-point slack only: float64 sums of L products carry a relative error of about L * 2**-53, so
    # 1e-12 of the model (0.07 weights at 70 B) holds any real model's rounding and stays below one weight.
    if abs(pruned - allocation.target * total) > max(1e-6, 1e-12 * total):
        raise PruningInputError(
            f"OWL allocation prunes {pruned:.3f} weights, not the target {allocation.target * total:.3f}"
        )


def check_announced_sparsities(
    sparsities: Sequence[float], weights: Sequence[int], *, target: float, settings: OwlSettings
) -> None:
    """Raise PruningInputError unless ``sparsities`` could be an OWL allocation of a model with ``weights``.

    What a site checks of the allocation a coordinator announces, against its own model: one sparsity per
    block, each in (0, 1) and within 2 * lambda of ``target``, and their mean weighted by ``weights`` (each
    block's prunable weight count) equal to ``target`` (float slack only, far below one weight).
    """
    if len(sparsities) != len(weights):
        raise PruningInputError(
            f"the allocation has {len(sparsities)} sparsities for a model of {len(weights)} blocks"
        )
    slack = 1e-9
    for index, sparsity in enumerate(sparsities):
        if not 0 < sparsity < 1:
            raise PruningInputError(f"block {index}'s sparsity {sparsity!r} is outside (0, 1)")
        if abs(sparsity - target) > 2 * settings.lam + slack:
            raise PruningInputError(
                f"block {index}'s sparsity {sparsity:.6f} is more than 2 * lambda = {2 * settings.lam:g} "
                f"from the target {target}"
            )
    check_allocation(
        OwlAllocation(
            settings,
            target,
            tuple(0.0 for _ in sparsities),
            tuple(float(s) for s in sparsities),
            tuple(int(w) for w in weights),
        )
    )


@torch.no_grad()
def owl_allocation(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet,
    *,
    target: float,
    device: torch.device,
    settings: OwlSettings = OwlSettings(),
) -> OwlAllocation:
    """Return the allocation from one pass of ``samples`` through the dense ``model`` (left unchanged).

    The statistics are exact sums: this is the local and centralized allocation, with no private release.
    """
    ratios, weights = [], []
    aggregator = ExactSum()
    for step in BlockRunner(model, samples, device=device):
        statistics = step.collect(StatisticKind.COLUMN_SQUARES, aggregator)
        block_weights = {name: sub.weight() for name, sub in step.sublayers.items()}
        ratios.append(
            block_outlier_ratio_from_statistics(block_weights, statistics, multiple=settings.multiple)
        )
        weights.append(sum(w.numel() for w in block_weights.values()))
    return allocate(ratios, weights, target=target, settings=settings)


def block_weight_counts(model: nn.Module) -> list[int]:
    """Return the prunable weights of each decoder block."""
    return [
        sum(sub.out_features * sub.in_features for sub in linear_sublayers(block).values())
        for block in decoder_blocks(model)
    ]


__all__ = [
    "OWL_LAMBDA",
    "OWL_OUTLIER_MULTIPLE",
    "OwlAllocation",
    "OwlSettings",
    "allocate",
    "block_outlier_ratio",
    "block_outlier_ratio_from_statistics",
    "block_weight_counts",
    "check_allocation",
    "check_announced_sparsities",
    "owl_allocation",
]
