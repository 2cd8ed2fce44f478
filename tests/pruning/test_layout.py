"""pruning.layout: one explicit vote order both roles agree on, and the fingerprint of the base weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruning.adapters import iter_prunable, qualified_name
from pruning.errors import PruningInputError
from pruning.layout import VoteLayout, base_model_fingerprint
from tests.tiny import ARCHITECTURES, build_tiny_model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_model_layout_covers_every_prunable_matrix_once_with_its_shape(architecture: str) -> None:
    model = build_tiny_model(architecture)
    layout = VoteLayout.for_model(model)
    expected = {qualified_name(b, n): (s.out_features, s.in_features) for b, n, s in iter_prunable(model)}
    assert {entry.name: entry.shape for entry in layout} == expected
    assert layout.dimension == sum(rows * columns for rows, columns in expected.values())


def test_the_order_is_blocks_ascending_then_sublayer_names_sorted() -> None:
    layout = VoteLayout.for_model(build_tiny_model("llama", layers=2))
    blocks = [int(name.split(".")[1]) for name in layout.names]
    assert blocks == sorted(blocks)
    for block in (0, 1):
        names = [name for name in layout.names if name.startswith(f"blocks.{block}.")]
        assert names == sorted(names)
    # the model's layout is its block layouts one after the other
    model = build_tiny_model("llama", layers=2)
    assert layout.names == VoteLayout.for_block(model, 0).names + VoteLayout.for_block(model, 1).names


def test_flatten_then_unflatten_gives_back_every_matrix() -> None:
    model = build_tiny_model("gpt2")  # Conv1D: stored [in, out], laid out [out, in]
    layout = VoteLayout.for_block(model, 1)
    votes = {entry.name: torch.randint(0, 2, entry.shape, dtype=torch.uint8) for entry in layout}
    vector = layout.flatten(votes)
    assert vector.shape == (layout.dimension,) and vector.dtype == torch.uint8
    back = layout.unflatten(vector)
    assert list(back) == list(layout.names)
    for name, tensor in votes.items():
        assert torch.equal(back[name], tensor)
    first = layout.entries[0]
    assert torch.equal(vector[: first.size], votes[first.name].reshape(-1))


def test_flatten_does_not_depend_on_the_dicts_order() -> None:
    layout = VoteLayout.for_block(build_tiny_model("opt"), 0)
    votes = {entry.name: torch.full(entry.shape, i, dtype=torch.int32) for i, entry in enumerate(layout)}
    reversed_votes = dict(reversed(list(votes.items())))
    assert torch.equal(layout.flatten(votes), layout.flatten(reversed_votes))


def test_flatten_refuses_a_missing_extra_or_misshapen_matrix() -> None:
    layout = VoteLayout.for_block(build_tiny_model("llama"), 0)
    votes = {entry.name: torch.zeros(entry.shape) for entry in layout}
    missing = dict(votes)
    del missing[layout.names[0]]
    with pytest.raises(PruningInputError, match="missing"):
        layout.flatten(missing)
    with pytest.raises(PruningInputError, match="unexpected"):
        layout.flatten({**votes, "blocks.9.extra": torch.zeros(1, 1)})
    wrong = {**votes, layout.names[1]: torch.zeros(1, 2)}
    with pytest.raises(PruningInputError, match=layout.names[1]):
        layout.flatten(wrong)
    with pytest.raises(PruningInputError, match="does not fit"):
        layout.unflatten(torch.zeros(layout.dimension + 1))


def test_the_fingerprint_is_the_same_for_the_same_architecture_and_differs_otherwise() -> None:
    first = VoteLayout.for_block(build_tiny_model("llama", seed=0), 0)
    same = VoteLayout.for_block(build_tiny_model("llama", seed=1), 0)  # other weights, same layout
    assert first.fingerprint() == same.fingerprint() and first == same
    assert first.fingerprint() != VoteLayout.for_block(build_tiny_model("llama"), 1).fingerprint()
    assert (
        first.fingerprint()
        != VoteLayout.for_block(build_tiny_model("llama", intermediate=128), 0).fingerprint()
    )
    swapped = VoteLayout(tuple((e.name, e.shape) for e in reversed(first.entries)))
    assert swapped.fingerprint() != first.fingerprint()
    first.check_fingerprint(same.fingerprint())
    with pytest.raises(PruningInputError, match=swapped.fingerprint().hex()):
        swapped.check_fingerprint(first.fingerprint())


def test_the_base_weights_fingerprint_is_stable_and_sees_any_change() -> None:
    model = build_tiny_model("qwen2", seed=0)
    fingerprint = base_model_fingerprint(model)
    assert len(fingerprint) == 32
    assert base_model_fingerprint(build_tiny_model("qwen2", seed=0)) == fingerprint
    assert base_model_fingerprint(build_tiny_model("qwen2", seed=1)) != fingerprint
    assert base_model_fingerprint(build_tiny_model("qwen2", seed=0, dtype=torch.bfloat16)) != fingerprint
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[5] += 1e-3
    assert base_model_fingerprint(model) != fingerprint


def test_the_base_weights_fingerprint_survives_save_and_load(tmp_path: Path) -> None:
    from pruning.model_io import load_model

    model = build_tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    assert base_model_fingerprint(load_model(tmp_path)) == base_model_fingerprint(model)
