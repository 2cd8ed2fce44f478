"""Federated aggregation through the roles: the global mask is the plain sum-of-masks recipe, exactly.

Every run here is the service's coordinator and participants in one process (``fedprune.simulate``), privacy
off: true keep-votes summed by secure aggregation, which sums exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import ComparisonGroup, VoteTally, check_counts, global_mask, scaled_weight
from fedprune.simulate import SimulationSettings
from pruning.adapters import iter_prunable, qualified_name
from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from pruning.recipes import Mode
from tests.reference import as_out_in, blocks_of, plain_global_mask, reference_wanda_masks, wanda_block_masks
from tests.roles import run_roles
from tests.tiny import build_tiny_model, random_ids

CPU = torch.device("cpu")


def _participant_samples(count: int) -> list[torch.Tensor]:
    # Non-IID: each participant draws from a different slice of the vocabulary.
    return [(random_ids(3, 16, seed=10 + i) % 24) + 24 * (i % 4) for i in range(count)]


def _weights(model) -> dict[str, torch.Tensor]:
    return {qualified_name(b, n): s.weight().clone() for b, n, s in iter_prunable(model)}


@pytest.mark.parametrize("group", ["layer", "row", "column"])
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_one_shot_global_mask_equals_plain_sum_of_masks(
    group: str, architecture: str, tmp_path: Path
) -> None:
    base = build_tiny_model(architecture, dtype=torch.float64)
    samples = _participant_samples(3)
    sparsity = 0.6
    settings = SimulationSettings(
        method=Method.WANDA, pattern=parse_pattern("unstructured", sparsity), group=ComparisonGroup(group)
    )
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    # Reference: each participant's own one-shot Wanda masks, summed as keep-votes, selected per group.
    votes: dict[str, torch.Tensor] = {}
    for own_samples in samples:
        for (block, name), pruned in reference_wanda_masks(
            copy.deepcopy(base), own_samples, sparsity
        ).items():
            key = f"blocks.{block}.{name}"
            votes[key] = votes.get(key, 0) + (~pruned).long()
    base_weights = _weights(base)
    for key, keep_votes in votes.items():
        assert torch.equal(result.keep_votes[key].long(), keep_votes), key
        expected = plain_global_mask(keep_votes, base_weights[key], sparsity, group)
        assert torch.equal(result.global_masks[key], expected), (
            f"{key}: {(result.global_masks[key] != expected).sum()}"
        )
    # The global model is the base model with exactly those weights zeroed.
    for key, weight in _weights(result.model).items():
        assert torch.equal(weight, base_weights[key].masked_fill(result.global_masks[key], 0))


def test_iterative_global_mask_equals_plain_reference(tmp_path: Path) -> None:
    base = build_tiny_model("qwen2", dtype=torch.float64, layers=3)
    samples = _participant_samples(3)
    sparsity = 0.5
    settings = SimulationSettings(pattern=parse_pattern("unstructured", sparsity), mode=Mode.ITERATIVE)
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    # Plain reference: in iterative mode every participant's copy equals the global model so far, so block l
    # is scored on the global model with blocks < l globally pruned.
    reference = copy.deepcopy(base)
    for block_index, block in enumerate(blocks_of(reference)):
        votes: dict[str, torch.Tensor] = {}
        for own_samples in samples:
            for name, pruned in wanda_block_masks(reference, own_samples, block_index, sparsity).items():
                votes[name] = votes.get(name, 0) + (~pruned).long()
        modules = dict(block.named_modules())
        for name, keep_votes in votes.items():
            weight = as_out_in(modules[name])
            expected = plain_global_mask(keep_votes, weight, sparsity, "layer")
            key = f"blocks.{block_index}.{name}"
            assert torch.equal(result.global_masks[key], expected), key
            with torch.no_grad():
                weight[expected] = 0


def test_iterative_differs_from_one_shot_after_the_first_block(tmp_path: Path) -> None:
    base = build_tiny_model("llama", layers=3)
    samples = _participant_samples(2)
    pattern = parse_pattern("unstructured", 0.7)
    one = run_roles(base, samples, settings=SimulationSettings(pattern=pattern), directory=tmp_path)
    it = run_roles(
        base, samples, settings=SimulationSettings(pattern=pattern, mode=Mode.ITERATIVE), directory=tmp_path
    )
    first = [k for k in one.global_masks if k.startswith("blocks.0.")]
    assert all(torch.equal(one.global_masks[k], it.global_masks[k]) for k in first)
    later = [k for k in one.global_masks if not k.startswith("blocks.0.")]
    assert any(not torch.equal(one.global_masks[k], it.global_masks[k]) for k in later)


@pytest.mark.parametrize("method", [Method.WANDA, Method.RIA, Method.MAGNITUDE])
def test_one_participant_equals_local_pruning(method: Method, tmp_path: Path) -> None:
    """Secure aggregation with one site (t = 1) sums its one vector: the global model is its own."""
    base = build_tiny_model("opt")
    samples = random_ids(4, 16)
    pattern = parse_pattern("unstructured", 0.5)
    result = run_roles(
        base, [samples], settings=SimulationSettings(method=method, pattern=pattern), directory=tmp_path
    )
    assert result.threshold == 1
    local = copy.deepcopy(base)
    prune_model(local, samples, method=method, pattern=pattern, device=CPU, progress=False)
    for a, b in zip(result.model.state_dict().values(), local.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_n_m_global_masks_are_valid_and_match_reference(tmp_path: Path) -> None:
    base = build_tiny_model("mistral")
    samples = _participant_samples(4)
    pattern = parse_pattern("2:4", None)
    result = run_roles(base, samples, settings=SimulationSettings(pattern=pattern), directory=tmp_path)
    weights = _weights(base)
    for key, mask in result.global_masks.items():
        assert torch.all(mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2), key
        expected = plain_global_mask(result.keep_votes[key], weights[key], 0.5, "layer", n=2, m=4)
        assert torch.equal(mask, expected), key


def test_counts_for_a_thousand_participants_are_exact() -> None:
    generator = torch.Generator().manual_seed(7)
    votes = [{"m": torch.rand(16, 32, generator=generator) < 0.9} for _ in range(1000)]
    tally = VoteTally((16, 32))
    for participant_votes in votes:
        tally.add(participant_votes["m"])
    sums = tally.keep_votes
    expected = torch.stack([v["m"] for v in votes]).to(torch.int64).sum(0)
    assert torch.equal(sums.to(torch.int64), expected)
    assert int(sums.max()) > 900
    all_keep = VoteTally((4, 4))
    for _ in range(1000):
        all_keep.add(torch.ones(4, 4, dtype=torch.bool))
    assert torch.all(all_keep.keep_votes == 1000) and all_keep.participants == 1000
    check_counts(all_keep.keep_votes, 1000, name="m")
    with pytest.raises(ValueError, match="only 999 participants"):
        check_counts(all_keep.keep_votes, 999, name="m")


def test_ties_prefer_larger_base_weight_then_lower_index() -> None:
    votes = torch.tensor([[2, 2, 2, 2]])
    weight = torch.tensor([[0.1, -0.5, 0.5, 0.2]])
    mask = global_mask(votes, weight, pattern=parse_pattern("unstructured", 0.5), group=ComparisonGroup.LAYER)
    # |W| 0.5 twice (index 1 and 2) kept; 0.1 and 0.2 pruned.
    assert mask.tolist() == [[True, False, False, True]]
    equal = global_mask(
        torch.ones(1, 4, dtype=torch.int32),
        torch.ones(1, 4),
        pattern=parse_pattern("unstructured", 0.5),
        group=ComparisonGroup.LAYER,
    )
    assert equal.tolist() == [[False, False, True, True]]


def test_weight_scaling_multiplies_by_vote_share(tmp_path: Path) -> None:
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    votes = torch.tensor([[4, 2], [0, 1]])
    assert torch.equal(scaled_weight(weight, votes, 4), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    base = build_tiny_model("llama")
    samples = _participant_samples(2)
    settings = SimulationSettings(pattern=parse_pattern("unstructured", 0.5), weight_scaling=True)
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    base_weights = _weights(base)
    for key, weight in _weights(result.model).items():
        expected = base_weights[key] * result.keep_votes[key] / 2
        assert torch.allclose(weight, expected.masked_fill(result.global_masks[key], 0)), key
