"""What a federated model is compared with: dense, magnitude, centralized and local-only models.

One implementation for every host that compares (``fedprune simulate --baselines`` and the benchmarks).
The baselines have no privacy layer, on purpose: local-only is what a site gets alone with its own data
(nothing leaves it), and centralized is what pooling every site's calibration data at one place would give,
which is exactly what the sites cannot do. Magnitude uses no data: the eps = 0 baseline every private
result must beat. ``base`` is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from pruning.data import CalibrationSet, pooled
from pruning.local import prune_model
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.owl import OwlSettings, owl_allocation
from pruning.perplexity import perplexity


def magnitude_model(base: nn.Module, *, pattern: SparsityPattern, device: torch.device) -> nn.Module:
    """Return the magnitude-pruned copy of ``base``."""
    model = copy.deepcopy(base)
    prune_model(model, None, method=Method.MAGNITUDE, pattern=pattern, device=device, progress=False)
    return model


def centralized_model(
    base: nn.Module,
    samples: Sequence[torch.Tensor | CalibrationSet],
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    owl: OwlSettings | None = None,
) -> nn.Module:
    """Return the copy of ``base`` pruned at one site holding every participant's calibration data.

    With ``owl`` each block gets its OWL sparsity, allocated from the pooled data (``pruning.owl``).
    """
    model = copy.deepcopy(base)
    _prune(model, pooled(samples), method=method, pattern=pattern, device=device, owl=owl)
    return model


def _prune(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    owl: OwlSettings | None,
) -> None:
    sparsities = None
    if owl is not None:
        if samples is None:
            raise ValueError("OWL needs calibration data for the outlier ratios")
        allocation = owl_allocation(model, samples, target=pattern.sparsity, device=device, settings=owl)
        sparsities = allocation.sparsities
    prune_model(
        model,
        samples,
        method=method,
        pattern=pattern,
        device=device,
        progress=False,
        block_sparsities=sparsities,
    )


def local_only_models(
    base: nn.Module,
    samples: Sequence[torch.Tensor | CalibrationSet | None],
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    owl: OwlSettings | None = None,
) -> list[nn.Module]:
    """Return each participant's own copy of ``base``, pruned alone with its own calibration data (and,
    with ``owl``, its own OWL allocation)."""
    models = []
    for own in samples:
        model = copy.deepcopy(base)
        _prune(model, own, method=method, pattern=pattern, device=device, owl=owl)
        models.append(model)
    return models


def evaluate(
    model: nn.Module, stream: torch.Tensor, *, seqlen: int, device: torch.device, batch_size: int = 1
) -> float:
    """Return the model's perplexity on a token stream (``pruning.perplexity``, what ``fedprune eval`` runs)."""
    return perplexity(model, stream, seqlen=seqlen, device=device, batch_size=batch_size).perplexity


__all__ = ["centralized_model", "evaluate", "local_only_models", "magnitude_model"]
