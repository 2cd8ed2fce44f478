"""The exact aggregator: totals that do not depend on how the windows are split or ordered, so that sites'
sums added under secure aggregation are the pooled sum bit for bit (and centralized pruning's masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privacy.secagg.fixed_point import STATISTIC_FRACTION_BITS, StatisticCodec
from pruning.errors import PruningInputError
from pruning.statistics import (
    EXACT_FRACTION_BITS,
    ExactSum,
    StatisticKind,
    flatten_statistic,
    record_contribution,
    unflatten_statistic,
)

WIDTH = 24


def _windows(count: int, seed: int) -> list[torch.Tensor]:
    # Activations over six orders of magnitude, as a real model's outlier features are: float32 sums of
    # their squares round differently in different orders.
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 3, WIDTH)
    return [torch.randn(7, WIDTH, generator=generator) * scales for _ in range(count)]


def _total(kind: StatisticKind, windows: list[torch.Tensor]) -> torch.Tensor:
    aggregator = ExactSum()
    aggregator.begin_block(block_index=0, kind=kind, sublayers={"mlp.fc": WIDTH})
    for window in windows:
        aggregator.add("mlp.fc", record_contribution(kind, window))
    return aggregator.result("mlp.fc")


def test_the_exact_fraction_is_the_statistics_codecs() -> None:
    # A site's exact total must travel through the codec without rounding.
    assert EXACT_FRACTION_BITS == STATISTIC_FRACTION_BITS


@pytest.mark.parametrize("kind", [StatisticKind.COLUMN_SQUARES, StatisticKind.GRAM])
def test_sites_totals_summed_through_the_codec_are_the_pooled_total_bit_for_bit(kind: StatisticKind) -> None:
    windows = _windows(60, seed=1)
    sites = [windows[:7], windows[7:31], windows[31:]]
    codec = StatisticCodec(signed=kind is StatisticKind.GRAM)
    lanes = sum(
        codec.encode(flatten_statistic(kind, _total(kind, site)).numpy(), name="mlp.fc").astype(np.uint64)
        for site in sites
    )
    summed = codec.decode(lanes, contributors=len(sites), name="mlp.fc")
    federated = unflatten_statistic(kind, torch.from_numpy(summed), WIDTH)
    pooled = _total(kind, windows)
    assert pooled.dtype == torch.float64
    assert torch.equal(federated, pooled)
    assert torch.equal(_total(kind, windows[::-1]), pooled)  # and in any order

    # The data does exercise rounding: float32 sums split the same way are not the pooled float32 sum.
    def float32_sum(part: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros_like(record_contribution(kind, part[0]))
        for window in part:
            total += record_contribution(kind, window)
        return total

    split = sum(float32_sum(site) for site in sites)
    assert not torch.equal(split, float32_sum(windows))
    # And the exact total is the float64 sum of the windows' contributions to within the steps' rounding.
    reference = sum(record_contribution(kind, w).double() for w in windows)
    assert torch.allclose(pooled, reference, rtol=0, atol=len(windows) * 2.0 ** -(EXACT_FRACTION_BITS + 1))


def test_a_statistic_that_is_not_finite_is_refused_naming_the_sublayer() -> None:
    windows = _windows(3, seed=2)
    windows[1][3, 5] = float("nan")
    with pytest.raises(PruningInputError, match=r"mlp\.fc: .*not finite"):
        _total(StatisticKind.COLUMN_SQUARES, windows)


@pytest.mark.parametrize("kind", [StatisticKind.COLUMN_SQUARES, StatisticKind.GRAM])
def test_a_total_beyond_what_int64_steps_hold_is_refused_not_wrapped(kind: StatisticKind) -> None:
    # Each window alone fits; their total does not (a silently wrapped sum would be a wrong mask).
    window = torch.zeros(1, WIDTH)
    window[0, 2] = 2.0**21  # its square is 2**42, half the limit
    with pytest.raises(PruningInputError, match=r"mlp\.fc: .*reaches"):
        _total(kind, [window, window, window])
    assert float(_total(kind, [window]).max()) == 2.0**42
