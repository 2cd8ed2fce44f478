"""Perplexity over non-overlapping windows: exp of the mean next-token negative log-likelihood."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pruning.errors import PruningInputError


@dataclass(frozen=True)
class PerplexityResult:
    """The perplexity and what it was computed over."""

    perplexity: float
    mean_nll: float
    windows: int
    predicted_tokens: int
    seqlen: int


@torch.no_grad()
def perplexity(
    model: nn.Module, stream: torch.Tensor, *, seqlen: int, device: torch.device, batch_size: int = 1
) -> PerplexityResult:
    """Return the perplexity of ``model`` on the 1-D token ``stream`` cut into windows of ``seqlen``.

    Windows do not overlap and the tail shorter than one window is dropped, as in Wanda's evaluation.
    Every window predicts its tokens 2..seqlen; the result is exp(total NLL / predicted tokens).
    """
    if seqlen < 2:
        raise PruningInputError(f"--seqlen must be at least 2, got {seqlen}")
    windows = stream.numel() // seqlen
    if windows == 0:
        raise PruningInputError(f"the data has {stream.numel()} tokens, fewer than one window of {seqlen}")
    home = next(model.parameters()).device
    model.to(device)
    try:
        data = stream[: windows * seqlen].reshape(windows, seqlen)
        total_nll = 0.0
        for start in range(0, windows, batch_size):
            batch = data[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.to(torch.float32)
            total_nll += float(
                F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
                )
            )
    finally:
        model.to(home)
    predicted = windows * (seqlen - 1)
    mean_nll = total_nll / predicted
    return PerplexityResult(
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        windows=windows,
        predicted_tokens=predicted,
        seqlen=seqlen,
    )
