"""Plain reference implementations the tests compare against; they share no code with the project."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def blocks_of(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "model.decoder.layers", "transformer.h"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise AssertionError("no blocks")


def as_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def wanda_block_masks(
    model: nn.Module, samples: torch.Tensor, block_index: int, sparsity: float, n: int = 0, m: int = 0
) -> dict[str, torch.Tensor]:
    """Return {name: pruned mask} of one block, scored on the model as it is (nothing is pruned)."""
    block = blocks_of(model)[block_index]
    linears = {name: mod for name, mod in block.named_modules() if isinstance(mod, (nn.Linear, Conv1D))}
    sums = {name: 0.0 for name in linears}
    handles = []
    for name, module in linears.items():

        def hook(mod, inputs, output, name=name):
            x = inputs[0].detach().to(torch.float64)
            sums[name] = sums[name] + (x.reshape(-1, x.shape[-1]) ** 2).sum(dim=0)

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=samples, use_cache=False)
    for handle in handles:
        handle.remove()
    masks = {}
    for name, module in linears.items():
        score = as_out_in(module).abs().to(torch.float64) * sums[name].sqrt()
        rows, cols = score.shape
        mask = torch.zeros(rows, cols, dtype=torch.bool)
        for r in range(rows):
            if m:
                for g in range(0, cols, m):
                    group = [(float(score[r, c]), c) for c in range(g, g + m)]
                    for _, c in sorted(group)[:n]:
                        mask[r, c] = True
            else:
                ranked = sorted((float(score[r, c]), c) for c in range(cols))
                for _, c in ranked[: int(cols * sparsity)]:
                    mask[r, c] = True
        masks[name] = mask
    return masks


def reference_wanda_masks(model: nn.Module, samples: torch.Tensor, sparsity: float, n: int = 0, m: int = 0):
    """Return {(block, name): pruned mask}, pruning ``model`` in place one block after the other."""
    masks = {}
    for block_index, block in enumerate(blocks_of(model)):
        modules = dict(block.named_modules())
        for name, mask in wanda_block_masks(model, samples, block_index, sparsity, n, m).items():
            with torch.no_grad():
                as_out_in(modules[name])[mask] = 0
            masks[(block_index, name)] = mask
    return masks


def plain_global_mask(
    keep_votes: torch.Tensor, weight: torch.Tensor, sparsity: float, group: str, n: int = 0, m: int = 0
) -> torch.Tensor:
    """Return the global mask by sorting each group in Python: keep most votes, then larger |W|, then lower index."""
    rows, cols = keep_votes.shape
    if m:
        groups = [[(r, c) for c in range(g, g + m)] for r in range(rows) for g in range(0, cols, m)]
    elif group == "layer":
        groups = [[(r, c) for r in range(rows) for c in range(cols)]]
    elif group == "row":
        groups = [[(r, c) for c in range(cols)] for r in range(rows)]
    else:
        groups = [[(r, c) for r in range(rows)] for c in range(cols)]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for members in groups:
        prune = n if m else int(len(members) * sparsity)
        ranked = sorted(
            members, key=lambda rc: (-int(keep_votes[rc]), -abs(float(weight[rc])), rc[0] * cols + rc[1])
        )
        for rc in ranked[len(members) - prune :]:
            mask[rc] = True
    return mask
