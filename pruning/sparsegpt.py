"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order weight reconstruction.

Columns are processed left to right in blocks of 128. Within a block the mask is chosen adaptively from
w^2 / [H^-1]_jj^2 of the block's current (already updated) weights, then each pruned weight's error is
spread over the remaining columns through the inverse Hessian's Cholesky factor. The Hessian is X^T X of
the calibration inputs, damped by 1% of its mean diagonal.
"""

from __future__ import annotations

import torch

from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern

BLOCK_COLUMNS = 128
DAMPING = 0.01


def _inverse_hessian_factor(hessian: torch.Tensor, name: str) -> torch.Tensor:
    """Return the upper Cholesky factor of the damped inverse Hessian."""
    damp = DAMPING * torch.mean(torch.diag(hessian))
    hessian = hessian + damp * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    try:
        factor = torch.linalg.cholesky(hessian)
        inverse = torch.cholesky_inverse(factor)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError:
        raise PruningInputError(
            f"{name}: the calibration Hessian is not positive definite even after 1% damping; "
            "use more calibration samples"
        ) from None


def _block_prune_counts(out_features: int, in_features: int, sparsity: float) -> list[int]:
    """Return how many weights each column block prunes so the matrix prunes exactly int(out*in*s)."""
    counts, done = [], 0
    for start in range(0, in_features, BLOCK_COLUMNS):
        end = min(start + BLOCK_COLUMNS, in_features)
        target = int(out_features * end * sparsity)
        counts.append(target - done)
        done = target
    return counts


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, pattern: SparsityPattern, *, name: str = "layer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned mask, reconstructed weight) for an ``[out, in]`` weight and its ``[in, in]`` Hessian."""
    weight = weight.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    hessian = hessian.detach().to(device=weight.device, dtype=torch.float32).clone()
    out_features, in_features = weight.shape
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hinv = _inverse_hessian_factor(hessian, name)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    block_counts = (
        None if pattern.is_n_m else _block_prune_counts(out_features, in_features, pattern.sparsity)
    )

    for block_number, start in enumerate(range(0, in_features, BLOCK_COLUMNS)):
        end = min(start + BLOCK_COLUMNS, in_features)
        w_block = weight[:, start:end].clone()
        q_block = torch.zeros_like(w_block)
        err_block = torch.zeros_like(w_block)
        hinv_block = hinv[start:end, start:end]
        diag = torch.diag(hinv_block)
        mask_block = torch.zeros_like(w_block, dtype=torch.bool)
        if block_counts is not None and block_counts[block_number]:
            saliency = (w_block**2 / diag.reshape(1, -1) ** 2).flatten()
            lowest = torch.sort(saliency, stable=True).indices[: block_counts[block_number]]
            mask_block.view(-1)[lowest] = True
        for column in range(end - start):
            if pattern.is_n_m and column % pattern.m == 0:
                group = w_block[:, column : column + pattern.m] ** 2 / diag[column : column + pattern.m] ** 2
                lowest = torch.sort(group, dim=1, stable=True).indices[:, : pattern.n]
                mask_block.scatter_(1, column + lowest, True)
            w = w_block[:, column]
            d = hinv_block[column, column]
            q = w.clone()
            q[mask_block[:, column]] = 0
            q_block[:, column] = q
            err = (w - q) / d
            w_block[:, column:] -= err.unsqueeze(1) @ hinv_block[column, column:].unsqueeze(0)
            err_block[:, column] = err
        weight[:, start:end] = q_block
        mask[:, start:end] = mask_block
        weight[:, end:] -= err_block @ hinv[start:end, end:]
    weight[mask] = 0
    return mask, weight
