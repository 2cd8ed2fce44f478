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

from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from tests.reference import blocks_of, reference_wanda_masks
from tests.tiny import ARCHITECTURES, build_tiny_model, random_ids


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
    block = blocks_of(dense)[1]
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
