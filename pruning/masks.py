"""Sparsity patterns and local mask selection from scores.

A mask is a bool tensor shaped like the ``[out, in]`` weight matrix, True where the weight is pruned.
Local selection (one site's own decision) is per output row, as in Wanda: the ``int(in * s)`` lowest
scores of each row are pruned, ties going to the lower column index (stable sort). N:M prunes the N lowest
of each aligned group of M consecutive inputs.
"""

from __future__ import annotations

import dataclasses
import enum
import re

import torch

from pruning.errors import PruningInputError


class ComparisonGroup(enum.Enum):
    """Which weights compete with each other for the kept places when votes are aggregated."""

    LAYER = "layer"
    """One weight matrix (the recipe the FedPrLLM study found best)."""
    ROW = "row"
    """One output row of a matrix."""
    COLUMN = "column"
    """One input column of a matrix."""


@dataclasses.dataclass(frozen=True)
class SparsityPattern:
    """Unstructured sparsity ``sparsity`` in (0, 1), or N:M (``n`` pruned of every ``m``)."""

    sparsity: float
    n: int = 0
    m: int = 0

    @property
    def is_n_m(self) -> bool:
        """Return True for an N:M pattern."""
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_n_m else f"unstructured {self.sparsity:g}"

    def check_fits(self, name: str, in_features: int) -> None:
        """Raise if the pattern cannot be applied to a matrix with ``in_features`` columns."""
        if self.is_n_m and in_features % self.m:
            raise PruningInputError(
                f"{self.n}:{self.m} sparsity needs the input width to be a multiple of {self.m}, "
                f"but {name} has {in_features} inputs"
            )


def parse_pattern(pattern: str, sparsity: float | None) -> SparsityPattern:
    """Return the pattern for ``--pattern`` (``unstructured`` or ``N:M``) and ``--sparsity``."""
    pattern = pattern.strip().lower()
    if pattern == "unstructured":
        if sparsity is None:
            raise PruningInputError("unstructured pruning needs a sparsity")
        if not (0.0 < sparsity < 1.0):
            raise PruningInputError(f"sparsity must lie strictly between 0 and 1, got {sparsity}")
        return SparsityPattern(sparsity=float(sparsity))
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not match:
        raise PruningInputError(f"pattern must be 'unstructured' or N:M such as 2:4, got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not (0 < n < m):
        raise PruningInputError(f"N:M pattern needs 0 < N < M, got {n}:{m}")
    if sparsity is not None and abs(sparsity - n / m) > 1e-9:
        raise PruningInputError(f"sparsity {sparsity} contradicts pattern {n}:{m} (= {n / m:g})")
    return SparsityPattern(sparsity=n / m, n=n, m=m)


def pruned_count(size: int, sparsity: float) -> int:
    """Return how many of ``size`` competing weights are pruned: ``int(size * s)``, as Wanda counts."""
    return int(size * sparsity)


def select_per_row(scores: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Return the local mask (True = pruned) that drops the lowest scores of each output row."""
    out_features, in_features = scores.shape
    if pattern.is_n_m:
        groups = scores.reshape(out_features, in_features // pattern.m, pattern.m)
        order = torch.sort(groups, dim=-1, stable=True).indices[..., : pattern.n]
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(-1, order, True)
        return mask.reshape(out_features, in_features)
    count = pruned_count(in_features, pattern.sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count:
        order = torch.sort(scores, dim=-1, stable=True).indices[:, :count]
        mask.scatter_(1, order, True)
    return mask
