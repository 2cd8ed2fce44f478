"""Local pruning methods: what statistic each needs and how it turns weights and statistics into a mask."""

from __future__ import annotations

import dataclasses
import enum

import torch

from pruning.adapters import LinearSublayer
from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern, select_per_row
from pruning.sparsegpt import sparsegpt_prune
from pruning.statistics import StatisticKind


class Method(enum.Enum):
    """A local pruning method."""

    MAGNITUDE = "magnitude"
    WANDA = "wanda"
    SPARSEGPT = "sparsegpt"
    RIA = "ria"

    @property
    def statistic(self) -> StatisticKind:
        """Return the calibration statistic the method needs."""
        return {
            Method.MAGNITUDE: StatisticKind.NONE,
            Method.WANDA: StatisticKind.COLUMN_SQUARES,
            Method.SPARSEGPT: StatisticKind.GRAM,
            Method.RIA: StatisticKind.COLUMN_SQUARES,
        }[self]

    @classmethod
    def parse(cls, value: str) -> Method:
        """Return the method named ``value``, or raise listing the choices."""
        try:
            return cls(value.lower())
        except ValueError:
            raise PruningInputError(
                f"unknown method {value!r}; choose one of {', '.join(m.value for m in cls)}"
            ) from None


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Return |W| (the score of magnitude pruning)."""
    return weight.abs().to(torch.float32)


def wanda_scores(weight: torch.Tensor, column_squares: torch.Tensor) -> torch.Tensor:
    """Return Wanda's score |W_ij| * sqrt(s_j), with s_j the sum of x_j^2 over calibration tokens."""
    return weight.abs().to(torch.float32) * torch.sqrt(column_squares.to(torch.float32)).reshape(1, -1)


RIA_ACTIVATION_POWER = 0.5
"""RIA's exponent ``a`` on the input channel's activation norm (the paper's default and recommended value)."""


def ria_scores(
    weight: torch.Tensor, column_squares: torch.Tensor, *, power: float = RIA_ACTIVATION_POWER
) -> torch.Tensor:
    """Return RIA's score (Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning Method for Large
    Language Models", ICLR 2024, eq. 1 and 3):

        score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * (||X_j||_2)^a,   a = 0.5

    for the ``[out, in]`` weight: the weight's magnitude relative to the total magnitude of its output row i
    and of its input column j ("relative importance"), times a power of input channel j's activation norm
    ``||X_j||_2 = sqrt(s_j)``, with ``s_j`` the sum of x_j^2 over the calibration tokens (the statistic
    Wanda collects). A row or column with no magnitude at all only holds zeros, whose score is 0.
    """
    magnitude = weight.abs().to(torch.float32)
    # A zero total only ever divides zeros: the clamp keeps them 0 instead of 0/0.
    row_totals = magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    column_totals = magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    relative = magnitude / row_totals + magnitude / column_totals
    norms = torch.sqrt(column_squares.to(torch.float32).clamp_min(0.0)).reshape(1, -1)
    return relative * norms.pow(power)


def method_scores(method: Method, weight: torch.Tensor, statistic: torch.Tensor | None) -> torch.Tensor:
    """Return the per-weight score of a score-based method (magnitude, Wanda, RIA); higher = keep."""
    if method is Method.MAGNITUDE:
        return magnitude_scores(weight)
    if statistic is None:
        raise ValueError(f"{method.value} needs a calibration statistic")
    statistic = statistic.to(weight.device)
    if method is Method.WANDA:
        return wanda_scores(weight, statistic)
    if method is Method.RIA:
        return ria_scores(weight, statistic)
    raise ValueError(f"{method.value} is not a score-based method")


@dataclasses.dataclass(frozen=True)
class LocalDecision:
    """One site's decision for one matrix: the mask, and reconstructed weights where the method makes them."""

    pruned: torch.Tensor
    weight: torch.Tensor | None = None

    @property
    def keep_votes(self) -> torch.Tensor:
        """Return the site's keep-vote per weight (True = keep)."""
        return ~self.pruned


def decide(
    method: Method,
    sublayer: LinearSublayer,
    pattern: SparsityPattern,
    statistic: torch.Tensor | None,
) -> LocalDecision:
    """Return the local decision for one sublayer from its weight and calibration statistic."""
    weight = sublayer.weight()
    if method is Method.MAGNITUDE:
        return LocalDecision(select_per_row(magnitude_scores(weight), pattern))
    if statistic is None:
        raise ValueError(f"{method.value} needs a calibration statistic for {sublayer.name}")
    statistic = statistic.to(weight.device)
    if method in (Method.WANDA, Method.RIA):
        return LocalDecision(select_per_row(method_scores(method, weight, statistic), pattern))
    pruned, reconstructed = sparsegpt_prune(weight, statistic, pattern, name=sublayer.name)
    return LocalDecision(pruned, reconstructed)


def apply_decision(sublayer: LinearSublayer, decision: LocalDecision) -> None:
    """Write the decision into the sublayer: reconstructed weights if any, then exact zeros."""
    if decision.weight is not None:
        sublayer.set_weight(decision.weight)
    sublayer.apply_pruned(decision.pruned)
