"""The coordinator's former selection, kept as the plain reference the linear-time selection must equal.

Two full stable sorts per group give the lexicographic order (more keep-votes, then larger float32 |W|,
then lower index); the last ``prune`` entries of every group are pruned. It shares no code with
``coordinator.selection``.
"""

from __future__ import annotations

import torch


def _keep_order(keep_votes: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Return, along the last dim, indices ordered from most to least deserving of being kept."""
    by_magnitude = torch.sort(magnitude, dim=-1, descending=True, stable=True).indices
    votes_in_that_order = torch.gather(keep_votes, -1, by_magnitude)
    by_votes = torch.sort(votes_in_that_order, dim=-1, descending=True, stable=True).indices
    return torch.gather(by_magnitude, -1, by_votes)


def _prune_last_dim(keep_votes: torch.Tensor, magnitude: torch.Tensor, prune_count: int) -> torch.Tensor:
    mask = torch.zeros(keep_votes.shape, dtype=torch.bool)
    if prune_count:
        order = _keep_order(keep_votes, magnitude)
        size = keep_votes.shape[-1]
        mask.scatter_(-1, order[..., size - prune_count :], True)
    return mask


def reference_global_mask(
    keep_votes: torch.Tensor,
    base_weight: torch.Tensor,
    *,
    sparsity: float,
    group: str,
    n: int = 0,
    m: int = 0,
) -> torch.Tensor:
    """Return the mask (True = pruned) of one ``[out, in]`` matrix: ``group`` is layer, row or column; N:M if m."""
    votes = keep_votes.to(device="cpu", dtype=torch.int64)
    magnitude = base_weight.detach().to(device="cpu", dtype=torch.float32).abs()
    out_features, in_features = votes.shape
    if m:
        shape = (out_features, in_features // m, m)
        return _prune_last_dim(votes.reshape(shape), magnitude.reshape(shape), n).reshape(votes.shape)
    if group == "layer":
        count = int(votes.numel() * sparsity)
        return _prune_last_dim(votes.reshape(1, -1), magnitude.reshape(1, -1), count).reshape(votes.shape)
    if group == "row":
        return _prune_last_dim(votes, magnitude, int(in_features * sparsity))
    return _prune_last_dim(votes.t(), magnitude.t(), int(out_features * sparsity)).t().contiguous()
