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
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from pruning.errors import PruningInputError

if TYPE_CHECKING:
    from pruning.layout import VoteLayout


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


EXACT_FRACTION_BITS = 20
""":class:`ExactSum` adds each window's contribution as a whole number of 2**-20 steps (the statistics
recipe's fixed point, ``privacy.secagg.fixed_point.STATISTIC_FRACTION_BITS``), so that its total does not
depend on how the windows are split or ordered: sites' sums added under secure aggregation are the pooled
sum, bit for bit."""

EXACT_LIMIT = float(1 << (63 - EXACT_FRACTION_BITS))
"""The first total :class:`ExactSum` cannot hold (2**43, about 8.8e12): its steps are int64."""

_STEP_CLAMP = float(1 << 62)
"""Steps beyond int64 are clamped before the cast (which would be undefined); ``result`` refuses them."""


class ExactSum:
    """The non-private aggregator: the plain sum over records, as Wanda and SparseGPT define it.

    Each window's contribution (fp32) is rounded to a multiple of 2**-20 and added as an int64 count of
    those steps: integer addition is associative, so the total is the same whatever order the windows come
    in and however they are split between runs (sites, ranks) whose totals are then added. Floating-point
    sums are not: a site's float32 sum over its own windows rounds differently from one sum over the pooled
    windows, and on a real model that flips near-tied weights of the mask. :meth:`result` returns the total
    in float64, which holds it exactly below 2**33 (2**53 steps); a total at or beyond
    :data:`EXACT_LIMIT`, or one that is not finite, is refused, naming the sublayer.
    """

    def __init__(self) -> None:
        self._totals: dict[str, torch.Tensor] = {}
        self._magnitudes: dict[str, torch.Tensor] = {}
        self._released: dict[str, torch.Tensor] = {}
        self._kind = StatisticKind.NONE
        self.records: dict[str, int] = {}

    def begin_block(self, *, block_index: int, kind: StatisticKind, sublayers: dict[str, int]) -> None:
        self._totals, self._magnitudes, self._released = {}, {}, {}
        self._kind = kind
        self.records = dict.fromkeys(sublayers, 0)

    def add(self, name: str, contribution: torch.Tensor, *, record: int | None = None) -> None:
        # The float64 magnitude (a Gram matrix's diagonal, which bounds every entry of it) decides in
        # ``result`` whether the total is held; steps out of range are clamped only to keep the cast defined.
        magnitude = _magnitude(self._kind, contribution)
        scaled = contribution.to(torch.float64, copy=True).mul_(float(1 << EXACT_FRACTION_BITS))
        steps = scaled.round_().clamp_(-_STEP_CLAMP, _STEP_CLAMP).to(torch.int64)
        del scaled
        total = self._totals.get(name)
        if total is None:
            self._totals[name], self._magnitudes[name] = steps, magnitude
        else:
            total.add_(steps)
            self._magnitudes[name].add_(magnitude)
        self.records[name] += 1

    def _summed(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``name``'s total steps and magnitude (a data-parallel aggregator sums them over ranks)."""
        if name not in self._totals:
            raise KeyError(f"no calibration records reached sublayer {name!r}")
        return self._totals[name], self._magnitudes[name]

    def result(self, name: str) -> torch.Tensor:
        if name in self._released:
            return self._released[name]
        steps, magnitude = self._summed(name)
        # The integer total goes as its float64 copy comes: a block's Gram matrices are not held twice.
        self._totals.pop(name, None)
        self._magnitudes.pop(name, None)
        largest = float(magnitude.max()) if magnitude.numel() else 0.0
        if not math.isfinite(largest):
            raise PruningInputError(
                f"{name}: the calibration statistic is not finite (an input was NaN or inf)"
            )
        if largest >= EXACT_LIMIT:
            raise PruningInputError(
                f"{name}: the calibration statistic reaches {largest:.4g}, beyond the {EXACT_LIMIT:.4g} an "
                "exact sum holds (activations of this size are not a model's)"
            )
        released = steps.to(torch.float64).div_(float(1 << EXACT_FRACTION_BITS))
        del steps
        self._released[name] = released
        return released


def _magnitude(kind: StatisticKind, contribution: torch.Tensor) -> torch.Tensor:
    """Return a contribution's nonnegative part that bounds all of it, in float64: a Gram matrix's diagonal
    (|x_i . x_j| <= max(x_i . x_i, x_j . x_j)), a vector of sums of squares itself."""
    values = torch.diagonal(contribution) if kind is StatisticKind.GRAM else contribution
    return values.detach().to(torch.float64).abs()


def statistic_size(kind: StatisticKind, width: int) -> int:
    """Return how many numbers one sublayer's statistic is sent as: ``width`` column sums, or the
    ``width (width + 1) / 2`` entries of the Gram matrix's upper triangle (diagonal included; it is
    symmetric)."""
    if kind is StatisticKind.COLUMN_SQUARES:
        return width
    if kind is StatisticKind.GRAM:
        return width * (width + 1) // 2
    raise ValueError(f"statistic kind {kind.value!r} is not sent")


def flatten_statistic(kind: StatisticKind, statistic: torch.Tensor) -> torch.Tensor:
    """Return the numbers ``statistic`` is sent as (float64, 1-D): the vector itself, or the Gram matrix's
    upper triangle row by row."""
    values = statistic.detach().to("cpu", torch.float64)
    if kind is StatisticKind.GRAM:
        width = values.shape[0]
        if values.shape != (width, width):
            raise ValueError(f"a Gram statistic must be square, got {tuple(values.shape)}")
        rows, columns = torch.triu_indices(width, width)
        return values[rows, columns]
    return values.reshape(-1)


def unflatten_statistic(kind: StatisticKind, values: torch.Tensor, width: int) -> torch.Tensor:
    """Return the statistic (float64) of the numbers :func:`flatten_statistic` made: the Gram matrix is
    mirrored from its upper triangle."""
    values = values.to(torch.float64).reshape(-1)
    if values.numel() != statistic_size(kind, width):
        raise ValueError(
            f"{values.numel()} numbers for a {kind.value} statistic of width {width}, "
            f"expected {statistic_size(kind, width)}"
        )
    if kind is StatisticKind.COLUMN_SQUARES:
        return values.clone()
    rows, columns = torch.triu_indices(width, width)
    matrix = torch.zeros(width, width, dtype=torch.float64)
    matrix[rows, columns] = values
    matrix[columns, rows] = values
    return matrix


class StatisticEncoding(Protocol):
    """How the numbers of one statistic travel through secure aggregation (``StatisticCodec``)."""

    @property
    def lanes(self) -> int:
        """Return the inputs each number is sent as."""
        ...

    def encode(self, values: np.ndarray, *, name: str) -> np.ndarray:
        """Return the inputs of ``values``."""
        ...

    def decode(self, sums: np.ndarray, *, contributors: int, name: str) -> np.ndarray:
        """Return the summed numbers (float64) from the summed inputs of ``contributors`` sites."""
        ...


def block_statistics_dimension(layout: VoteLayout, kind: StatisticKind, *, lanes: int) -> int:
    """Return the coordinates of a block's statistics vector: ``lanes`` per number of each matrix's
    statistic, matrix after matrix in layout order (what :func:`encode_block_statistics` makes)."""
    return lanes * sum(statistic_size(kind, entry.shape[1]) for entry in layout.entries)


def encode_block_statistics(
    codec: StatisticEncoding, kind: StatisticKind, layout: VoteLayout, statistics: dict[str, torch.Tensor]
) -> np.ndarray:
    """Return a block's statistics vector: each matrix's statistic (by qualified name) as ``codec`` inputs,
    in layout order."""
    return np.concatenate(
        [
            codec.encode(flatten_statistic(kind, statistics[entry.name]).numpy(), name=entry.name)
            for entry in layout.entries
        ]
    )


def iter_block_statistics(
    codec: StatisticEncoding, kind: StatisticKind, layout: VoteLayout, sums: np.ndarray, *, contributors: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (qualified name, summed statistic in float64) matrix by matrix from a block's summed vector,
    decoding each only when asked (a 4096-wide Gram matrix alone is 134 MB in float64)."""
    offset = 0
    for entry in layout.entries:
        width = entry.shape[1]
        count = codec.lanes * statistic_size(kind, width)
        values = codec.decode(sums[offset : offset + count], contributors=contributors, name=entry.name)
        offset += count
        yield entry.name, unflatten_statistic(kind, torch.from_numpy(values), width)


def decode_block_statistics(
    codec: StatisticEncoding, kind: StatisticKind, layout: VoteLayout, sums: np.ndarray, *, contributors: int
) -> dict[str, torch.Tensor]:
    """Return each matrix's summed statistic (float64, by qualified name) from a block's summed vector."""
    return dict(iter_block_statistics(codec, kind, layout, sums, contributors=contributors))
