"""Accounting: exact randomized-response composition, Opacus Gaussian accountants, shuffle amplification."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.accounting import (
    GaussianRelease,
    gaussian_epsilon,
    noise_multiplier_for_epsilon,
    rr_composition,
    rr_delta,
    rr_epsilon,
    shuffle_amplification,
)
from privacy.errors import PrivacyError


def test_rr_composition_golden_value() -> None:
    composed = rr_composition(epsilon0=1.0, coordinates=100, delta=1e-5)
    assert composed.epsilon == pytest.approx(79.84, abs=0.05)
    assert composed.naive_epsilon == 100.0


def _brute_force_delta(epsilon: float, epsilon0: float, k: int) -> float:
    p = 1 / (1 + math.exp(epsilon0))
    total = 0.0
    for i in range(k + 1):
        loss = epsilon0 * (k - 2 * i)
        if loss > epsilon:
            total += math.comb(k, i) * p**i * (1 - p) ** (k - i) * (1 - math.exp(epsilon - loss))
    return total


@settings(max_examples=25, deadline=None)
@given(st.floats(0.1, 3.0), st.integers(1, 60), st.floats(0.0, 50.0))
def test_rr_delta_matches_the_binomial_sum(epsilon0: float, k: int, epsilon: float) -> None:
    assert rr_delta(epsilon, epsilon0=epsilon0, coordinates=k) == pytest.approx(
        _brute_force_delta(epsilon, epsilon0, k), rel=1e-9, abs=1e-300
    )


def test_one_coordinate_is_eps0_dp() -> None:
    assert rr_epsilon(1e-9, epsilon0=2.0, coordinates=1) == pytest.approx(2.0, rel=1e-6)


def test_composed_epsilon_scales_to_billions_of_coordinates() -> None:
    k = 10**9
    epsilon = rr_epsilon(1e-5, epsilon0=1.0, coordinates=k)
    mean_loss = k * 1.0 * math.tanh(0.5)  # E[L] = k eps0 (1 - 2p) = k eps0 tanh(eps0 / 2)
    assert mean_loss < epsilon < 1.01 * mean_loss < k


@pytest.mark.parametrize(("epsilon0", "k"), [(4.0, 1000), (4.0, 10**6), (1.0, 10**6), (0.5, 10**5)])
def test_composed_epsilon_follows_the_asymptotic_form_in_the_docs(epsilon0: float, k: int) -> None:
    # docs/PRIVACY.md: k eps0 tanh(eps0/2) plus a deviation term, below the Kairouz-Oh-Viswanath bound
    # k eps0 tanh(eps0/2) + eps0 sqrt(2 k ln(e + eps0 sqrt(k) / delta)). Without the factor eps0 the
    # leading term would be 4x too small at eps0 = 4.
    delta = 1e-5
    leading = k * epsilon0 * math.tanh(epsilon0 / 2)
    kov = leading + epsilon0 * math.sqrt(2 * k * math.log(math.e + epsilon0 * math.sqrt(k) / delta))
    assert leading < rr_epsilon(delta, epsilon0=epsilon0, coordinates=k) <= kov


def test_composition_never_exceeds_k_eps0_and_grows_with_k() -> None:
    previous = 0.0
    for k in (1, 10, 100, 1000):
        epsilon = rr_epsilon(1e-6, epsilon0=0.5, coordinates=k)
        assert previous < epsilon <= 0.5 * k
        previous = epsilon


def test_gaussian_golden_value_both_accountants() -> None:
    # sigma = 1, 32 releases, q = 1, delta = 1e-5; recomputed independently by the audit.
    figures = gaussian_epsilon([GaussianRelease(noise_multiplier=1.0, sample_rate=1.0, count=32)], delta=1e-5)
    assert figures.rdp == pytest.approx(41.6455, abs=5e-5)
    assert figures.prv == pytest.approx(39.39, abs=0.01)  # PRV's own discretisation error is 0.01
    assert figures.epsilon == figures.rdp


def test_the_tolerance_can_be_left_unchecked_at_deltas_it_was_not_planned_at() -> None:
    # q = 0.1: the RDP/PRV gap is 16% at delta 1e-5 and 19% at 1e-4, so a tolerance of 17% planned at
    # 1e-5 fails at 1e-4; the report checks it only at its stated delta and shows the larger elsewhere.
    releases = [GaussianRelease(noise_multiplier=1.0, sample_rate=0.1, count=12)]
    gaussian_epsilon(releases, delta=1e-5, tolerance=0.17)
    with pytest.raises(PrivacyError, match="disagree"):
        gaussian_epsilon(releases, delta=1e-4, tolerance=0.17)
    unchecked = gaussian_epsilon(releases, delta=1e-4, tolerance=0.17, check_tolerance=False)
    assert unchecked.epsilon == unchecked.rdp > unchecked.prv


def test_accountant_disagreement_fails_loudly_unless_tolerated() -> None:
    releases = [GaussianRelease(noise_multiplier=1.0, sample_rate=0.1, count=12)]
    with pytest.raises(PrivacyError, match="disagree"):
        gaussian_epsilon(releases, delta=1e-5)
    tolerated = gaussian_epsilon(releases, delta=1e-5, tolerance=0.3)
    assert tolerated.epsilon == tolerated.rdp > tolerated.prv


def test_noise_multiplier_for_target_reaches_it_and_no_lower_sigma_does() -> None:
    sigma = noise_multiplier_for_epsilon(target_epsilon=8.0, delta=1e-5, releases=12)
    at_sigma = gaussian_epsilon([GaussianRelease(noise_multiplier=sigma, count=12)], delta=1e-5).epsilon
    assert at_sigma <= 8.0
    lower = gaussian_epsilon([GaussianRelease(noise_multiplier=sigma * 0.99, count=12)], delta=1e-5).epsilon
    assert lower > 8.0


def test_eps0_of_one_needs_562_honest_voters_at_delta_1e5() -> None:
    # docs/PRIVACY.md: valid only when n >= 16 e^eps0 ln(4/delta) = 561.02 at eps0 = 1, delta = 1e-5.
    assert 16 * math.e * math.log(4 / 1e-5) == pytest.approx(561.019, abs=1e-3)
    assert not shuffle_amplification(epsilon0=1.0, honest_voters=561, delta=1e-5).valid
    assert shuffle_amplification(epsilon0=1.0, honest_voters=562, delta=1e-5).valid


def test_shuffle_bound_is_reported_only_where_valid() -> None:
    small = shuffle_amplification(epsilon0=1.0, honest_voters=4, delta=1e-5)
    assert not small.valid and small.epsilon is None and "invalid" in small.reason
    large = shuffle_amplification(epsilon0=1.0, honest_voters=100_000, delta=1e-5)
    assert large.valid and 0 < large.epsilon < 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf])
def test_bad_gaussian_parameters_are_refused(bad: float) -> None:
    with pytest.raises(PrivacyError):
        GaussianRelease(noise_multiplier=bad)
