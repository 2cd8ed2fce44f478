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

    @property
    def statistic(self) -> StatisticKind:
        """Return the calibration statistic the method needs."""
        return {
            Method.MAGNITUDE: StatisticKind.NONE,
            Method.WANDA: StatisticKind.COLUMN_SQUARES,
            Method.SPARSEGPT: StatisticKind.GRAM,
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
    if method is Method.WANDA:
        return LocalDecision(select_per_row(wanda_scores(weight, statistic), pattern))
    pruned, reconstructed = sparsegpt_prune(weight, statistic, pattern, name=sublayer.name)
    return LocalDecision(pruned, reconstructed)


def apply_decision(sublayer: LinearSublayer, decision: LocalDecision) -> None:
    """Write the decision into the sublayer: reconstructed weights if any, then exact zeros."""
    if decision.weight is not None:
        sublayer.set_weight(decision.weight)
    sublayer.apply_pruned(decision.pruned)
