"""FedSpaLLM's weight updates: what a participant sends besides its keep-votes, and their public bound.

A participant's update of a matrix is w_i - W0 at the positions its SparseGPT run kept (w_i its
reconstructed weight, W0 the public base weight) and 0 where it pruned. Sums of updates travel in fixed
point (``privacy.secagg.fixed_point``), which needs a bound both roles derive from public data alone: the
base weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pruning.methods import LocalDecision

UPDATE_RANGE_FACTOR = 4.0
"""The public bound on a participant's weight update |w_i - W0| is this factor times max |W0| of the matrix.

SparseGPT's reconstruction moves a kept weight by the compensated error of the pruned ones; on the tiny
test models the largest move is 1.2 max|W0| at 50% and 1.5 max|W0| at 70% sparsity, and no update was
clipped in any row of the demo benchmark (docs/BENCHMARKS.md), private or not. 4 leaves room while the
fixed-point error stays below 1e-8 max|W0| (4 max|W0| x n / 2**31 at n = 4). An update beyond the bound is
clipped to it and the run warns with the count.
"""


def update_bound(base_weight: torch.Tensor) -> float:
    """Return the public bound on one matrix's weight updates: UPDATE_RANGE_FACTOR x max |W0| (at least 1e-8)."""
    largest = float(base_weight.detach().abs().max()) if base_weight.numel() else 0.0
    return max(UPDATE_RANGE_FACTOR * largest, 1e-8)


def local_updates(
    result: Mapping[str, LocalDecision], base_weights: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return each matrix's update w_i - W0 at the participant's kept positions, 0 at its pruned ones (float64)."""
    updates = {}
    for name, decision in result.items():
        if decision.weight is None:
            raise ValueError(f"{name}: FedSpaLLM needs reconstructed weights (method sparsegpt)")
        update = decision.weight.detach().cpu().to(torch.float64) - base_weights[name].detach().cpu().to(
            torch.float64
        )
        updates[name] = torch.where(decision.pruned.cpu(), 0.0, update)
    return updates
