"""Randomized response on mask bits: eps0 <-> p, the integer threshold, flip frequencies, the estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import PrivacyError
from privacy.randomized_response import (
    MAX_EPSILON0,
    RandomizedResponse,
    epsilon0_from_flip_probability,
    epsilon0_from_threshold,
    flip_probability,
    threshold_for_epsilon0,
    unbiased_count,
    unbiased_count_variance,
)


@pytest.mark.parametrize(
    ("epsilon0", "p"),
    [
        (0.0, 0.5),
        (1.0, 0.2689414213699951),
        (math.log(3), 0.25),
        (math.log(9), 0.1),
        (5.0, 0.0066928509242848554),
    ],
)
def test_flip_probability_golden_values_both_ways(epsilon0: float, p: float) -> None:
    assert flip_probability(epsilon0) == pytest.approx(p, rel=1e-12)
    assert epsilon0_from_flip_probability(p) == pytest.approx(epsilon0, abs=1e-12)


@given(st.floats(min_value=0.0, max_value=MAX_EPSILON0 - 1e-9))
def test_effective_epsilon0_never_exceeds_the_request_and_is_close(epsilon0: float) -> None:
    threshold = threshold_for_epsilon0(epsilon0)
    effective = epsilon0_from_threshold(threshold)
    assert effective <= epsilon0
    # T is the smallest threshold that does not exceed the request: one less would exceed it.
    if threshold > 1:
        assert epsilon0_from_threshold(threshold - 1) > epsilon0


def test_reported_epsilon0_comes_from_the_threshold_used() -> None:
    rr = RandomizedResponse(epsilon0=3.0)
    assert rr.flip_probability == rr.threshold / 2**32
    assert rr.epsilon0 == pytest.approx(math.log((2**32 - rr.threshold) / rr.threshold), rel=1e-14)
    assert rr.epsilon0 <= 3.0 and rr.requested_epsilon0 == 3.0


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, 30.0])
def test_unusable_epsilon0_is_refused(bad: float) -> None:
    with pytest.raises(PrivacyError):
        RandomizedResponse(epsilon0=bad)


@pytest.mark.parametrize("epsilon0", [0.5, 2.0])
def test_flip_frequency_over_ten_million_bits_is_within_four_standard_deviations(epsilon0: float) -> None:
    n = 10_000_000
    rr = RandomizedResponse(epsilon0=epsilon0)
    bits = np.zeros(n, dtype=bool)
    bits[::3] = True
    noisy = rr.randomize(bits)
    flips = np.count_nonzero(noisy != bits)
    p = rr.flip_probability
    assert abs(flips - n * p) <= 4 * math.sqrt(n * p * (1 - p))
    assert rr.coordinates == n


def test_every_call_draws_fresh_randomness_and_keeps_shape() -> None:
    rr = RandomizedResponse(epsilon0=0.0)
    bits = np.zeros((64, 512), dtype=bool)
    first, second = rr.randomize(bits), rr.randomize(bits)
    assert first.shape == bits.shape and first.dtype == np.bool_
    assert not np.array_equal(first, second)
    assert not np.array_equal(RandomizedResponse(epsilon0=0.0).randomize(bits), first)


def test_a_layer_is_never_randomized_twice() -> None:
    rr = RandomizedResponse(epsilon0=1.0)
    rr.randomize(np.ones(10, dtype=bool), layer="blocks.0.mlp.up_proj")
    with pytest.raises(PrivacyError, match="already randomized"):
        rr.randomize(np.ones(10, dtype=bool), layer="blocks.0.mlp.up_proj")


def test_non_boolean_input_is_refused() -> None:
    with pytest.raises(PrivacyError):
        RandomizedResponse(epsilon0=1.0).randomize(np.ones(4, dtype=np.uint8))


def test_unbiased_count_recovers_the_true_count_on_average() -> None:
    n_voters, true_ones, trials = 50, 30, 20_000
    rr = RandomizedResponse(epsilon0=1.5)
    bits = np.zeros((trials, n_voters), dtype=bool)
    bits[:, :true_ones] = True
    noisy_counts = rr.randomize(bits).sum(axis=1)
    estimates = unbiased_count(noisy_counts, n_voters, rr.flip_probability)
    standard_error = math.sqrt(unbiased_count_variance(n_voters, rr.flip_probability) / trials)
    assert abs(estimates.mean() - true_ones) < 4 * standard_error
    assert estimates.var() == pytest.approx(unbiased_count_variance(n_voters, rr.flip_probability), rel=0.05)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=100), st.floats(min_value=0.0, max_value=0.49))
def test_unbiased_count_inverts_the_expected_noisy_count(count: int, p: float) -> None:
    n = 100
    expected_noisy = count * (1 - p) + (n - count) * p
    assert unbiased_count(expected_noisy, n, p) == pytest.approx(count, abs=1e-9)
