"""Every method leaves exactly the requested sparsity (and valid N:M groups); SparseGPT reconstructs best."""

from __future__ import annotations

import pytest
import torch

from pruning.adapters import iter_prunable, linear_sublayers
from pruning.local import prune_model
from pruning.masks import parse_pattern, select_per_row
from pruning.methods import Method, magnitude_scores
from pruning.sparsegpt import sparsegpt_prune
from tests.tiny import ARCHITECTURES, build_tiny_model, random_ids


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize(
    "pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.75), ("2:4", None), ("4:8", None)]
)
def test_each_matrix_has_exactly_the_requested_sparsity(architecture, method, pattern, sparsity) -> None:
    model = build_tiny_model(architecture)
    parsed = parse_pattern(pattern, sparsity)
    prune_model(
        model, random_ids(4, 16), method=method, pattern=parsed, device=torch.device("cpu"), progress=False
    )
    for _, name, sublayer in iter_prunable(model):
        weight = sublayer.weight()
        zeros = weight == 0
        expected = parsed.sparsity
        assert zeros.float().mean().item() == pytest.approx(expected, abs=1e-12), name
        if parsed.is_n_m:
            groups = zeros.reshape(weight.shape[0], -1, parsed.m).sum(dim=-1)
            assert torch.all(groups == parsed.n), (
                f"{name}: a group of {parsed.m} does not prune exactly {parsed.n}"
            )
        elif method is not Method.SPARSEGPT:
            # Local selection is per output row: every row prunes int(in * s).
            assert torch.all(zeros.sum(dim=1) == int(weight.shape[1] * expected)), name


def test_rows_that_do_not_divide_prune_int_in_times_s() -> None:
    scores = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    mask = select_per_row(scores, parse_pattern("unstructured", 0.57))
    assert mask.sum(dim=1).tolist() == [int(10 * 0.57)] * 3
    # The pruned ones are the lowest of each row.
    for row in range(3):
        assert scores[row][mask[row]].max() <= scores[row][~mask[row]].min()


def test_ties_go_to_the_lower_column() -> None:
    scores = torch.ones(2, 8)
    mask = select_per_row(scores, parse_pattern("unstructured", 0.5))
    assert mask[0].tolist() == [True] * 4 + [False] * 4
    nm = select_per_row(scores, parse_pattern("2:4", None))
    assert nm[0].tolist() == [True, True, False, False] * 2


def _reconstruction_error(weight, pruned_weight, inputs) -> float:
    return float(((inputs @ weight.t() - inputs @ pruned_weight.t()) ** 2).sum())


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)])
def test_sparsegpt_reconstructs_a_layer_better_than_magnitude(pattern, sparsity) -> None:
    generator = torch.Generator().manual_seed(3)
    # Correlated inputs with a few outlier features, as in real LLM activations.
    mixing = torch.randn(256, 256, generator=generator)
    inputs = torch.randn(2048, 256, generator=generator) @ mixing
    inputs[:, :4] *= 20
    weight = torch.randn(64, 256, generator=generator)
    parsed = parse_pattern(pattern, sparsity)
    hessian = inputs.t() @ inputs
    mask, reconstructed = sparsegpt_prune(weight, hessian, parsed)
    assert torch.all(reconstructed[mask] == 0)
    magnitude_weight = weight.masked_fill(select_per_row(magnitude_scores(weight), parsed), 0)
    sparsegpt_error = _reconstruction_error(weight, reconstructed, inputs)
    magnitude_error = _reconstruction_error(weight, magnitude_weight, inputs)
    assert sparsegpt_error < 0.7 * magnitude_error


def test_sparsegpt_beats_magnitude_on_a_model_block() -> None:
    """On the calibration inputs of a real block, SparseGPT's q_proj output error is below magnitude's."""
    samples = random_ids(8, 32)
    errors = {}
    for method in (Method.MAGNITUDE, Method.SPARSEGPT):
        model = build_tiny_model("llama", layers=1)
        dense = build_tiny_model("llama", layers=1)
        captured = []
        block = dense.model.layers[0]
        handle = block.mlp.down_proj.register_forward_hook(
            lambda m, i, o, captured=captured: captured.append(i[0].reshape(-1, i[0].shape[-1]))
        )
        with torch.no_grad():
            dense(input_ids=samples, use_cache=False)
        handle.remove()
        inputs = torch.cat(captured)
        prune_model(
            model,
            samples,
            method=method,
            pattern=parse_pattern("unstructured", 0.6),
            device=torch.device("cpu"),
            progress=False,
        )
        pruned = linear_sublayers(model.model.layers[0])["mlp.down_proj"].weight()
        original = linear_sublayers(block)["mlp.down_proj"].weight()
        errors[method] = _reconstruction_error(original, pruned, inputs)
    assert errors[Method.SPARSEGPT] < errors[Method.MAGNITUDE]


def test_wanda_ignores_constant_scaling_of_statistics() -> None:
    from pruning.methods import wanda_scores

    weight = torch.randn(8, 16)
    stats = torch.rand(16) + 0.1
    pattern = parse_pattern("unstructured", 0.5)
    assert torch.equal(
        select_per_row(wanda_scores(weight, stats), pattern),
        select_per_row(wanda_scores(weight, stats * 7.0), pattern),
    )
