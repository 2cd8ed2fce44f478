"""RIA in fedprune equals a plainly written implementation of the published definition.

Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models" (ICLR
2024): score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ^ a with a = 0.5, pruned per
output row like Wanda. The reference below shares no code with ``pruning``: it runs the whole model with
hooks on one block's linear layers, sums x_j^2 over every token, computes the score entry by entry from row
and column sums written as Python loops, prunes the int(in * s) lowest of each row (ties to the lower
column; N lowest of each group of M for N:M), and moves on only after pruning the block.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fedprune.simulate import SimulationSettings
from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method, ria_scores, wanda_scores
from tests.reference import as_out_in, blocks_of
from tests.roles import run_roles
from tests.tiny import ARCHITECTURES, build_tiny_model, random_ids


def reference_ria_masks(model: nn.Module, samples: torch.Tensor, sparsity: float, n: int = 0, m: int = 0):
    """Return {(block, name): pruned mask}, pruning ``model`` in place one block after the other."""
    masks = {}
    for block_index, block in enumerate(blocks_of(model)):
        linears = {name: mod for name, mod in block.named_modules() if isinstance(mod, (nn.Linear, Conv1D))}
        sums: dict[str, torch.Tensor] = {}

        def hook(mod, inputs, output, name, sums=sums):
            x = inputs[0].detach().to(torch.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x**2).sum(dim=0)

        handles = [
            mod.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
            for name, mod in linears.items()
        ]
        with torch.no_grad():
            model(input_ids=samples, use_cache=False)
        for handle in handles:
            handle.remove()
        for name, module in linears.items():
            w = as_out_in(module).to(torch.float64).abs().tolist()
            rows, cols = len(w), len(w[0])
            row_sum = [sum(w[r]) for r in range(rows)]
            col_sum = [sum(w[r][c] for r in range(rows)) for c in range(cols)]
            norm = [float(v) ** 0.5 for v in sums[name]]
            mask = torch.zeros(rows, cols, dtype=torch.bool)
            for r in range(rows):
                score = [(w[r][c] / row_sum[r] + w[r][c] / col_sum[c]) * norm[c] ** 0.5 for c in range(cols)]
                groups = [range(g, g + m) for g in range(0, cols, m)] if m else [range(cols)]
                for group in groups:
                    ranked = sorted((score[c], c) for c in group)
                    for _, c in ranked[: n if m else int(cols * sparsity)]:
                        mask[r, c] = True
            with torch.no_grad():
                as_out_in(module)[mask] = 0
            masks[(block_index, name)] = mask
    return masks


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)])
def test_ria_masks_equal_plain_reference(architecture: str, pattern: str, sparsity: float | None) -> None:
    samples = random_ids(6, 24)
    ours_model = build_tiny_model(architecture, dtype=torch.float64, layers=2)
    reference_model = build_tiny_model(architecture, dtype=torch.float64, layers=2)
    parsed = parse_pattern(pattern, sparsity)
    ours: dict[str, torch.Tensor] = {}
    prune_model(
        ours_model,
        samples,
        method=Method.RIA,
        pattern=parsed,
        device=torch.device("cpu"),
        progress=False,
        on_decision=lambda name, decision: ours.__setitem__(name, decision.pruned.clone()),
    )
    reference = reference_ria_masks(reference_model, samples, parsed.sparsity, parsed.n, parsed.m)
    assert len(ours) == len(reference) > 0
    for (block_index, name), expected in reference.items():
        got = ours[f"blocks.{block_index}.{name}"]
        assert torch.equal(got, expected), (
            f"block {block_index} {name}: {(got != expected).sum()} bits differ"
        )
    for a, b in zip(ours_model.parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ria_votes_through_the_roles_are_the_sites_reference_masks(tmp_path: Path) -> None:
    """As a site's scorer in the voting recipe: the summed keep-votes are the sites' own RIA masks, summed."""
    base = build_tiny_model("llama", dtype=torch.float64, layers=2)
    samples = [random_ids(3, 16, seed=40 + i) for i in range(3)]
    settings = SimulationSettings(method=Method.RIA, pattern=parse_pattern("unstructured", 0.6))
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    votes: dict[str, torch.Tensor] = {}
    for own in samples:
        for (block, name), pruned in reference_ria_masks(copy.deepcopy(base), own, 0.6).items():
            key = f"blocks.{block}.{name}"
            votes[key] = votes.get(key, 0) + (~pruned).long()
    assert votes.keys() == result.keep_votes.keys()
    for key, expected in votes.items():
        assert torch.equal(result.keep_votes[key].long(), expected), key


def test_ria_is_not_wanda() -> None:
    """The relative-importance terms change the ranking within a row (a real difference, not a rename)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=generator) * torch.rand(16, 1, generator=generator) * 10
    weight[:, :4] *= 8  # heavy columns: RIA divides them down, Wanda does not
    column_squares = torch.rand(32, generator=generator) + 0.1
    ria, wanda = ria_scores(weight, column_squares), wanda_scores(weight, column_squares)
    assert not torch.equal(ria.argsort(dim=1), wanda.argsort(dim=1))


def test_ria_scores_of_zero_rows_and_columns_are_zero_not_nan() -> None:
    weight = torch.zeros(3, 4)
    weight[0, 1] = 2.0
    scores = ria_scores(weight, torch.ones(4))
    assert torch.isfinite(scores).all()
    assert scores[0, 1] == pytest.approx(2.0)  # 2/2 + 2/2, times 1
    assert int((scores == 0).sum()) == 11


def test_ria_is_parsed_and_crosses_the_wire() -> None:
    from proto.convert import _METHODS
    from proto.fedprune.v1 import service_pb2 as spb

    assert Method.parse("RIA") is Method.RIA
    assert _METHODS[Method.RIA] == spb.METHOD_RIA
