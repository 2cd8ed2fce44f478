"""Wanda in fedprune equals a plainly written implementation of the published definition.

The reference below shares no code with ``pruning``: it runs the *whole* model on all calibration samples
at once with hooks on one decoder block's linear layers, sums x_j^2 over every token, scores
|W_ij| * sqrt(s_j), prunes the int(in * s) lowest of every output row (ties to the lower column), and moves
to the next block only after pruning this one, so later blocks see the outputs of pruned earlier ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from tests.tiny import ARCHITECTURES, build_tiny_model, random_ids


def _blocks(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "model.decoder.layers", "transformer.h"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise AssertionError("no blocks")


def _as_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


def reference_wanda_masks(model: nn.Module, samples: torch.Tensor, sparsity: float, n: int = 0, m: int = 0):
    """Return {(block, name): pruned mask} computed the plain way, pruning ``model`` in place."""
    masks = {}
    for block_index, block in enumerate(_blocks(model)):
        linears = {name: mod for name, mod in block.named_modules() if isinstance(mod, (nn.Linear, Conv1D))}
        sums = {name: 0.0 for name in linears}
        handles = []
        for name, module in linears.items():

            def hook(mod, inputs, output, name=name, sums=sums):
                x = inputs[0].detach().to(torch.float64)
                sums[name] = sums[name] + (x.reshape(-1, x.shape[-1]) ** 2).sum(dim=0)

            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(input_ids=samples, use_cache=False)
        for handle in handles:
            handle.remove()
        for name, module in linears.items():
            weight = _as_out_in(module)
            score = weight.abs().to(torch.float64) * sums[name].sqrt()
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
            with torch.no_grad():
                weight[mask] = 0
            masks[(block_index, name)] = mask
    return masks


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(
    "pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None), ("4:8", None)]
)
def test_wanda_masks_equal_plain_reference(architecture: str, pattern: str, sparsity: float | None) -> None:
    samples = random_ids(6, 24)
    ours_model = build_tiny_model(architecture, dtype=torch.float64, layers=3)
    reference_model = build_tiny_model(architecture, dtype=torch.float64, layers=3)
    parsed = parse_pattern(pattern, sparsity)
    ours: dict[str, torch.Tensor] = {}
    prune_model(
        ours_model,
        samples,
        method=Method.WANDA,
        pattern=parsed,
        device=torch.device("cpu"),
        progress=False,
        on_decision=lambda name, decision: ours.__setitem__(name, decision.pruned.clone()),
    )
    reference = reference_wanda_masks(reference_model, samples, parsed.sparsity, parsed.n, parsed.m)
    assert len(ours) == len(reference) > 0
    for (block_index, name), expected in reference.items():
        got = ours[f"blocks.{block_index}.{name}"]
        assert torch.equal(got, expected), (
            f"block {block_index} {name}: {(got != expected).sum()} mask bits differ"
        )
    # The pruned models agree too, so the inputs propagated to later blocks matched.
    for a, b in zip(ours_model.parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_later_blocks_see_pruned_inputs() -> None:
    """Block 1's statistics come from the *pruned* block 0, as Wanda defines (not from the dense model)."""
    samples = random_ids(4, 16)
    pruned_model = build_tiny_model("llama", dtype=torch.float64)
    masks: dict[str, torch.Tensor] = {}
    prune_model(
        pruned_model,
        samples,
        method=Method.WANDA,
        pattern=parse_pattern("unstructured", 0.6),
        device=torch.device("cpu"),
        progress=False,
        on_decision=lambda name, decision: masks.__setitem__(name, decision.pruned.clone()),
    )
    # Scoring block 1 from dense inputs gives a different mask somewhere.
    dense = build_tiny_model("llama", dtype=torch.float64)
    block1_from_dense = {}
    block = _blocks(dense)[1]
    sums = {}
    handles = [
        mod.register_forward_hook(
            lambda mod, inp, out, name=name: sums.__setitem__(
                name, (inp[0].reshape(-1, inp[0].shape[-1]).double() ** 2).sum(0)
            )
        )
        for name, mod in block.named_modules()
        if isinstance(mod, nn.Linear)
    ]
    with torch.no_grad():
        dense(input_ids=samples, use_cache=False)
    for handle in handles:
        handle.remove()
    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear):
            score = mod.weight.abs() * sums[name].sqrt()
            order = torch.sort(score, dim=1, stable=True).indices[:, : int(score.shape[1] * 0.6)]
            block1_from_dense[name] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
    assert any(not torch.equal(masks[f"blocks.1.{name}"], mask) for name, mask in block1_from_dense.items())
