"""Calibration statistics: what one pass of a decoder block collects for each linear sublayer.

A *record* is the unit a differentially private aggregator protects: one document of the calibration
corpus, which may span several calibration windows (rows). The block runner calls
:meth:`StatisticAggregator.add` once per window and sublayer with that window's contribution and the id of
the record it belongs to (the windows of one record come one after another), and
:meth:`StatisticAggregator.result` once per sublayer after all windows went through the block. The default aggregator sums exactly; a differentially
private aggregator (see ``privacy.calibration_dp``) clips each record's contribution and adds noise in
``result``, so everything computed from the statistics afterwards, masks included, is post-processing.
"""

from __future__ import annotations

import enum
from typing import Protocol

import torch


class StatisticKind(enum.Enum):
    """Which statistic a pruning method needs from the calibration inputs of a linear sublayer."""

    NONE = "none"
    """Magnitude pruning: no data at all."""
    COLUMN_SQUARES = "column_squares"
    """Wanda: per input feature j, the sum over the record's tokens of x_j^2 (a vector of length in)."""
    GRAM = "gram"
    """SparseGPT: the record's X^T X over its tokens (an in x in matrix)."""


def record_contribution(kind: StatisticKind, inputs: torch.Tensor) -> torch.Tensor:
    """Return one record's contribution to the statistic, from its sublayer inputs [tokens, in] in fp32."""
    if kind is StatisticKind.COLUMN_SQUARES:
        return inputs.pow(2).sum(dim=0)
    if kind is StatisticKind.GRAM:
        return inputs.t() @ inputs
    raise ValueError(f"statistic kind {kind.value!r} has no per-record contribution")


class StatisticAggregator(Protocol):
    """Receives per-record contributions for the sublayers of one block and releases their totals."""

    def begin_block(self, *, block_index: int, kind: StatisticKind, sublayers: dict[str, int]) -> None:
        """Start a block; ``sublayers`` maps each sublayer name to its input width."""

    def add(self, name: str, contribution: torch.Tensor, *, record: int | None = None) -> None:
        """Add one window's contribution (fp32, on the compute device) for sublayer ``name``.

        ``record`` is the id of the record (document) the window belongs to; ``None`` makes every call its
        own record.
        """

    def result(self, name: str) -> torch.Tensor:
        """Return the released statistic for ``name`` (same shape as a contribution)."""


class ExactSum:
    """The non-private aggregator: the plain sum over records, as Wanda and SparseGPT define it."""

    def __init__(self) -> None:
        self._totals: dict[str, torch.Tensor] = {}
        self.records: dict[str, int] = {}

    def begin_block(self, *, block_index: int, kind: StatisticKind, sublayers: dict[str, int]) -> None:
        self._totals = {}
        self.records = dict.fromkeys(sublayers, 0)

    def add(self, name: str, contribution: torch.Tensor, *, record: int | None = None) -> None:
        total = self._totals.get(name)
        self._totals[name] = contribution.clone() if total is None else total.add_(contribution)
        self.records[name] += 1

    def result(self, name: str) -> torch.Tensor:
        if name not in self._totals:
            raise KeyError(f"no calibration records reached sublayer {name!r}")
        return self._totals[name]
