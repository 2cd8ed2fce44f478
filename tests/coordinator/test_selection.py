"""The coordinator's global mask equals the former two-sort selection bit for bit, in linear time and small memory.

The reference (``reference_selection``) is the coordinator's previous implementation: two full stable
sorts per group. Votes take few values and weights are drawn from a handful of magnitudes, so almost every
decision is a tie that the |W| and index rules must settle exactly as the reference does.
"""

from __future__ import annotations

import tracemalloc
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coordinator import selection
from coordinator.aggregation import ComparisonGroup, global_mask
from pruning.masks import SparsityPattern
from tests.coordinator.reference_selection import reference_global_mask

WEIGHT_VALUES = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.25, 3.0e-5, -3.0e-5, 1.0e-8, 0.1, -0.1, 65504.0]
"""Few magnitudes (exact ties), both signs, zeros, a float16 subnormal, a value below float16's range."""
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
GROUPS = [ComparisonGroup.LAYER, ComparisonGroup.ROW, ComparisonGroup.COLUMN]


@st.composite
def matrices(draw: st.DrawFn, *, columns_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (keep_votes, base_weight): one shape, votes in 0..n, weights from ``WEIGHT_VALUES``."""
    rows = draw(st.integers(1, 12))
    columns = columns_multiple_of * draw(st.integers(1, max(1, 40 // columns_multiple_of)))
    participants = draw(st.sampled_from([0, 1, 2, 3, 4, 16, 64]))
    vote_values = draw(st.lists(st.integers(0, participants), min_size=1, max_size=4, unique=True))
    votes = draw(hnp.arrays(np.int32, (rows, columns), elements=st.sampled_from(vote_values)))
    magnitudes = draw(st.lists(st.sampled_from(WEIGHT_VALUES), min_size=1, max_size=5, unique=True))
    values = draw(hnp.arrays(np.float32, (rows, columns), elements=st.sampled_from(magnitudes)))
    weight = torch.from_numpy(values).to(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):  # a transposed view, as GPT-2's Conv1D weights reach the coordinator
        weight = weight.t().contiguous().t()
    return torch.from_numpy(votes), weight


chunk_sizes = st.sampled_from([1, 7, 64, selection.CHUNK_ELEMENTS])
"""Small chunks make the walk over the matrix take many steps, as on a real matrix."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    matrix=matrices(),
    sparsity=st.floats(0.0, 0.999),
    group=st.sampled_from(GROUPS),
    chunk=chunk_sizes,
)
def test_unstructured_mask_equals_the_reference(
    matrix: tuple[torch.Tensor, torch.Tensor], sparsity: float, group: ComparisonGroup, chunk: int
) -> None:
    votes, weight = matrix
    with mock.patch.object(selection, "CHUNK_ELEMENTS", chunk):
        mask = global_mask(votes, weight, pattern=SparsityPattern(sparsity=sparsity), group=group)
    expected = reference_global_mask(votes, weight, sparsity=sparsity, group=group.value)
    assert mask.dtype == torch.bool and mask.is_contiguous()
    assert torch.equal(mask, expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), m=st.sampled_from([2, 4, 8, 16]), chunk=chunk_sizes)
def test_n_m_mask_equals_the_reference(data: st.DataObject, m: int, chunk: int) -> None:
    n = data.draw(st.integers(1, m - 1))
    votes, weight = data.draw(matrices(columns_multiple_of=m))
    with mock.patch.object(selection, "CHUNK_ELEMENTS", chunk):
        mask = global_mask(votes, weight, pattern=SparsityPattern(sparsity=n / m, n=n, m=m))
    assert torch.equal(mask, reference_global_mask(votes, weight, sparsity=n / m, group="layer", n=n, m=m))


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    edge=st.sampled_from(["none", "all-but-one"]),
    group=st.sampled_from(GROUPS),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_edge_sparsities_and_thin_matrices(
    shape: tuple[int, int], edge: str, group: ComparisonGroup, dtype: torch.dtype, data: st.DataObject
) -> None:
    """0 pruned, or all but one pruned per group, on 1-row and 1-column matrices among others."""
    rows, columns = shape
    size = {
        ComparisonGroup.LAYER: rows * columns,
        ComparisonGroup.ROW: columns,
        ComparisonGroup.COLUMN: rows,
    }[group]
    sparsity = 0.0 if edge == "none" else (size - 1) / size
    votes = torch.from_numpy(data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 2))))
    weight = torch.from_numpy(
        data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(WEIGHT_VALUES)))
    )
    mask = global_mask(votes, weight.to(dtype), pattern=SparsityPattern(sparsity=sparsity), group=group)
    assert torch.equal(
        mask, reference_global_mask(votes, weight.to(dtype), sparsity=sparsity, group=group.value)
    )
    assert int(mask.sum()) == (0 if edge == "none" else int(size * sparsity) * (rows * columns // size))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    group=st.sampled_from(GROUPS),
    sparsity=st.floats(0.05, 0.95),
    chunk=chunk_sizes,
)
def test_vote_counts_beyond_any_histogram_still_equal_the_reference(
    data: st.DataObject, group: ComparisonGroup, sparsity: float, chunk: int
) -> None:
    """Counts far apart (as an int64 tally of a huge federation could hold) take the selection fallbacks."""
    shape = data.draw(st.tuples(st.integers(1, 8), st.integers(1, 8)))
    values = st.sampled_from([0, 1, 70_000, 2**40, 2**40 + 1])
    votes = torch.from_numpy(data.draw(hnp.arrays(np.int64, shape, elements=values)))
    weight = torch.from_numpy(
        data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(WEIGHT_VALUES)))
    )
    with mock.patch.object(selection, "CHUNK_ELEMENTS", chunk):
        mask = global_mask(votes, weight, pattern=SparsityPattern(sparsity=sparsity), group=group)
    assert torch.equal(mask, reference_global_mask(votes, weight, sparsity=sparsity, group=group.value))


def test_nan_and_infinite_base_weights_order_as_the_reference() -> None:
    """A NaN |W| ranks above +inf and every NaN ties with every other, as in a sort."""
    weight = torch.tensor(
        [[float("nan"), -float("nan"), float("inf"), -float("inf"), 1.0, 0.0, -0.0, float("nan")]]
    )
    votes = torch.ones_like(weight, dtype=torch.int32)
    for dtype in DTYPES:
        for sparsity in (0.2, 0.3, 0.5, 0.7, 0.9):
            for group in GROUPS:
                mask = global_mask(
                    votes, weight.to(dtype), pattern=SparsityPattern(sparsity=sparsity), group=group
                )
                expected = reference_global_mask(
                    votes, weight.to(dtype), sparsity=sparsity, group=group.value
                )
                assert torch.equal(mask, expected), (dtype, sparsity, group)


def test_bool_and_float_votes_count_as_the_reference() -> None:
    weight = torch.tensor([[0.5, -0.5, 0.25, 1.0, 0.0, 0.5]])
    for votes in (
        torch.tensor([[True, False, True, True, False, True]]),
        torch.tensor([[1.9, 0.0, 2.0, 1.0, 2.0, 2.5]]),
    ):
        mask = global_mask(votes, weight, pattern=SparsityPattern(sparsity=0.5))
        assert torch.equal(mask, reference_global_mask(votes, weight, sparsity=0.5, group="layer"))


@pytest.mark.parametrize("group", ["layer", "row", "2:4"])
def test_selection_allocates_a_few_bytes_per_weight(group: str) -> None:
    """No matrix-sized index array: the traced peak stays under 4 bytes a weight (1 of them is the mask)."""
    rows, columns = 512, 2048
    generator = torch.Generator().manual_seed(0)
    votes = torch.randint(0, 5, (rows, columns), generator=generator, dtype=torch.int32)
    votes[:, ::2] = 2  # a large boundary group: half the matrix ties at the boundary count
    weight = torch.randn(rows, columns, generator=generator).to(torch.float16)
    pattern = SparsityPattern(sparsity=0.5, n=2, m=4) if group == "2:4" else SparsityPattern(sparsity=0.5)
    comparison = ComparisonGroup.ROW if group == "row" else ComparisonGroup.LAYER
    with mock.patch.object(selection, "CHUNK_ELEMENTS", 1 << 14):
        tracemalloc.start()
        try:
            mask = global_mask(votes, weight, pattern=pattern, group=comparison)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak / votes.numel() < 4.0, peak / votes.numel()
    assert torch.equal(
        mask,
        reference_global_mask(
            votes,
            weight,
            sparsity=0.5,
            group="layer" if group != "row" else "row",
            n=2 if group == "2:4" else 0,
            m=4 if group == "2:4" else 0,
        ),
    )
