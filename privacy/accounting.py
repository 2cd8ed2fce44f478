"""Privacy accounting: exact randomized-response composition, Gaussian accountants, shuffle amplification.

Pure functions (the math)::

    rr_delta(epsilon, epsilon0=, coordinates=) -> delta            exact, privacy-loss distribution
    rr_epsilon(delta, epsilon0=, coordinates=) -> epsilon          its inverse (bisection, rounded up)
    rr_composition(epsilon0=, coordinates=, delta=) -> RRComposition   eps0, naive k*eps0, exact eps
    shuffle_amplification(epsilon0=, honest_voters=, delta=) -> ShuffleBound   valid flag + reason
    gaussian_epsilon(releases, delta=, tolerance=) -> GaussianEpsilon  RDP and PRV (opacus), the larger
    noise_multiplier_for_epsilon(target_epsilon=, delta=, releases=, sample_rate=) -> sigma

Randomized response over k coordinates. The privacy loss of one eps0-RR bit is +eps0 with probability
1 - p and -eps0 with probability p (p = 1/(1+e^eps0)); over k coordinates it is eps0 (k - 2I) with
I ~ Binomial(k, p), and ``delta(eps) = E[(1 - e^(eps - L))_+]``. This equals the optimal composition
theorem of Kairouz, Oh and Viswanath (2015) for k-fold eps0-DP, since RR is the worst eps0-DP mechanism.
The binomial terms are computed in log space. For k above a few thousand only the window
|i - kp| <= 10 sqrt(k) + 50 is summed; Hoeffding bounds the omitted probability mass, hence the error in
delta, by 2 exp(-200) (absolute), so k can be billions of coordinates.

Gaussian releases are accounted with both Opacus accountants (RDP and PRV) on the history of
(noise multiplier, Poisson sample rate, count); the reported epsilon is the larger. They must agree within
``tolerance`` (relative to the larger, plus 0.02 absolute for PRV's discretisation error): a larger gap
raises :class:`~privacy.errors.PrivacyError`. RDP is a loose upper bound under strong subsampling
(measured: 4-8% looser at q = 1, 10-16% at q = 0.1, up to 60% at q = 0.01), so runs with q < 1 need an
explicit, recorded, larger tolerance. The tolerance is planned (``noise_multiplier_for_epsilon``) and
checked (the report) at the same single delta, the report's stated one; the report's other deltas show
the larger of the two accountants without the check (``check_tolerance=False``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from privacy.errors import PrivacyError

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNTANT_TOLERANCE = 0.10
PRV_ABSOLUTE_SLACK = 0.02
_RR_WINDOW_SIGMAS = 10.0
RR_TRUNCATION_ERROR = 2.0 * math.exp(-2.0 * _RR_WINDOW_SIGMAS**2)


# --------------------------------------------------------------------------------------------------
# Randomized response: exact composition
# --------------------------------------------------------------------------------------------------


def _check_rr(epsilon0: float, coordinates: int) -> None:
    if not (math.isfinite(epsilon0) and epsilon0 >= 0):
        raise PrivacyError(f"epsilon0 must be finite and >= 0, got {epsilon0}")
    if int(coordinates) != coordinates or coordinates < 1:
        raise PrivacyError(f"coordinates must be a positive integer, got {coordinates}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")


@dataclasses.dataclass(frozen=True)
class _RRLossDistribution:
    """The log-probabilities of I (flipped coordinates) over the window that matters, and the losses."""

    log_pmf: np.ndarray
    loss: np.ndarray


def _rr_loss_distribution(epsilon0: float, coordinates: int) -> _RRLossDistribution:
    k = int(coordinates)
    p = 1.0 / (1.0 + math.exp(epsilon0))
    window = math.ceil(_RR_WINDOW_SIGMAS * math.sqrt(k) + 50)
    centre = math.floor(k * p)
    low, high = max(0, centre - window), min(k, centre + window)
    log_p, log_q = math.log(p), math.log1p(-p)
    anchor = (
        math.lgamma(k + 1) - math.lgamma(low + 1) - math.lgamma(k - low + 1) + low * log_p + (k - low) * log_q
    )
    i = np.arange(low, high + 1, dtype=np.float64)
    steps = np.log(k - i[:-1]) - np.log(i[:-1] + 1.0) + (log_p - log_q)
    log_pmf = np.concatenate([[anchor], anchor + np.cumsum(steps)])
    return _RRLossDistribution(log_pmf=log_pmf, loss=epsilon0 * (k - 2.0 * i))


def _rr_delta_from(distribution: _RRLossDistribution, epsilon: float) -> float:
    above = distribution.loss > epsilon
    if not np.any(above):
        return 0.0
    excess = epsilon - distribution.loss[above]
    log_terms = distribution.log_pmf[above] + np.log(-np.expm1(excess))
    top = float(np.max(log_terms))
    return float(math.exp(top) * np.sum(np.exp(log_terms - top)))


def rr_delta(epsilon: float, *, epsilon0: float, coordinates: int) -> float:
    """Return the exact delta at ``epsilon`` of eps0-randomized response composed over ``coordinates``."""
    _check_rr(epsilon0, coordinates)
    if epsilon0 == 0.0:
        return 0.0
    return _rr_delta_from(_rr_loss_distribution(epsilon0, coordinates), epsilon)


def rr_epsilon(delta: float, *, epsilon0: float, coordinates: int) -> float:
    """Return the smallest epsilon (rounded up to 1e-9 relative) with delta(epsilon) <= ``delta``."""
    _check_rr(epsilon0, coordinates)
    _check_delta(delta)
    if epsilon0 == 0.0:
        return 0.0
    distribution = _rr_loss_distribution(epsilon0, coordinates)
    if _rr_delta_from(distribution, 0.0) <= delta:
        return 0.0
    low, high = 0.0, epsilon0 * coordinates
    while high - low > 1e-9 * max(1.0, high):
        middle = 0.5 * (low + high)
        if _rr_delta_from(distribution, middle) <= delta:
            high = middle
        else:
            low = middle
    return high


@dataclasses.dataclass(frozen=True)
class RRComposition:
    """Randomized response over k coordinates: the per-coordinate eps0 and the composed guarantee."""

    epsilon0: float
    coordinates: int
    delta: float
    epsilon: float
    """The exact composed epsilon at ``delta`` (optimal composition)."""
    naive_epsilon: float
    """k * eps0: the composed epsilon at delta = 0 (pure DP), never the only figure reported."""
    method: str = "optimal composition (Kairouz-Oh-Viswanath), exact binomial privacy-loss distribution"


def rr_composition(*, epsilon0: float, coordinates: int, delta: float) -> RRComposition:
    """Return the composition of eps0-randomized response over ``coordinates`` at ``delta``."""
    return RRComposition(
        epsilon0=epsilon0,
        coordinates=int(coordinates),
        delta=delta,
        epsilon=rr_epsilon(delta, epsilon0=epsilon0, coordinates=coordinates),
        naive_epsilon=epsilon0 * coordinates,
    )


# --------------------------------------------------------------------------------------------------
# Amplification by secure aggregation (shuffle model)
# --------------------------------------------------------------------------------------------------

SHUFFLE_ASSUMPTIONS = (
    "the coordinator is honest-but-curious and sees only the per-coordinate sums of keep-votes",
    "at least `honest_voters` participants, the victim included, survived and followed the protocol; "
    "their randomized-response noise is unknown to the coordinator and to colluding participants",
    "the bound is per coordinate (one weight's vote); it does not cover the participant's whole mask",
)


@dataclasses.dataclass(frozen=True)
class ShuffleBound:
    """The shuffle-model bound for a sum of n randomized-response bits, when it is valid."""

    epsilon0: float
    honest_voters: int
    delta: float
    valid: bool
    epsilon: float | None
    reason: str
    method: str = "Feldman-McMillan-Talwar 2021 closed form (hiding among the clones)"


def shuffle_amplification(*, epsilon0: float, honest_voters: int, delta: float) -> ShuffleBound:
    """Return the amplified per-coordinate (epsilon, delta) of a sum of n eps0-RR bits, or why it is invalid.

    Closed form of Feldman, McMillan and Talwar (FOCS 2021), in the form of Apple's reference
    implementation, valid only when eps0 <= ln(n / (16 ln(4/delta))).
    """
    _check_delta(delta)
    n = int(honest_voters)
    if n < 2:
        return ShuffleBound(epsilon0, n, delta, False, None, "fewer than 2 honest voters: no amplification")
    limit = math.log(n / (16.0 * math.log(4.0 / delta))) if n > 16.0 * math.log(4.0 / delta) else -math.inf
    if epsilon0 > limit:
        return ShuffleBound(
            epsilon0,
            n,
            delta,
            False,
            None,
            # Equivalently n >= 16 e^eps0 ln(4/delta); stated that way, it reads for any n (for small n the
            # limit on eps0 is negative or -inf, which says nothing to a reader).
            f"bound invalid: needs n >= 16 e^eps0 ln(4/delta) = "
            f"{16.0 * math.exp(epsilon0) * math.log(4.0 / delta):.2f} honest voters, has {n}",
        )
    a = 8.0 * math.sqrt(math.exp(epsilon0) * math.log(4.0 / delta)) / math.sqrt(n)
    c = 8.0 * math.exp(epsilon0) / n
    e = math.log1p(a + c)
    b = -math.expm1(-epsilon0)
    d = 1.0 + math.exp(-epsilon0 - e)
    epsilon = min(epsilon0, math.log1p((b / d) * (a + c)))
    return ShuffleBound(epsilon0, n, delta, True, epsilon, "valid")


# --------------------------------------------------------------------------------------------------
# Gaussian releases: Opacus RDP and PRV accountants
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianRelease:
    """``count`` releases of a Gaussian mechanism with this noise multiplier, each on a fresh Poisson sample."""

    noise_multiplier: float
    sample_rate: float = 1.0
    count: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(f"noise multiplier must be finite and > 0, got {self.noise_multiplier}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise PrivacyError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if int(self.count) != self.count or self.count < 1:
            raise PrivacyError(f"release count must be a positive integer, got {self.count}")


@dataclasses.dataclass(frozen=True)
class GaussianEpsilon:
    """Both accountants' epsilons at ``delta`` and the reported (larger) one."""

    delta: float
    rdp: float
    prv: float
    epsilon: float
    tolerance: float
    method: str = "max(Opacus RDP, Opacus PRV)"


def _history(releases: Sequence[GaussianRelease]) -> list[tuple[float, float, int]]:
    merged: list[tuple[float, float, int]] = []
    for release in releases:
        if merged and merged[-1][:2] == (release.noise_multiplier, release.sample_rate):
            merged[-1] = (release.noise_multiplier, release.sample_rate, merged[-1][2] + int(release.count))
        else:
            merged.append((float(release.noise_multiplier), float(release.sample_rate), int(release.count)))
    return merged


def rdp_epsilon(releases: Sequence[GaussianRelease], *, delta: float) -> float:
    """Return Opacus' RDP-accountant epsilon at ``delta`` for the releases."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = _history(releases)
    return float(accountant.get_epsilon(delta))


def prv_epsilon(releases: Sequence[GaussianRelease], *, delta: float) -> float:
    """Return Opacus' PRV-accountant epsilon (upper bound, eps_error 0.01) at ``delta`` for the releases."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = _history(releases)
    try:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(accountant.get_epsilon(delta))
    except (ValueError, RuntimeError, OverflowError) as error:
        raise PrivacyError(f"the PRV accountant failed on {accountant.history}: {error}") from error


def gaussian_epsilon(
    releases: Sequence[GaussianRelease],
    *,
    delta: float,
    tolerance: float = DEFAULT_ACCOUNTANT_TOLERANCE,
    check_tolerance: bool = True,
) -> GaussianEpsilon:
    """Return the composed epsilon at ``delta`` of Gaussian releases: the larger of RDP and PRV.

    Raises PrivacyError if the two disagree by more than ``tolerance`` relative to the larger
    (plus PRV's 0.02 absolute discretisation slack). ``check_tolerance=False`` skips that check: use it
    only at deltas other than the one the tolerance was planned at (the RDP/PRV gap grows as delta grows,
    so a tolerance planned at one delta may not hold at another). Both accountants give valid upper
    bounds, so the larger is a valid epsilon either way; the check guards against a broken accountant,
    and one delta suffices for that.
    """
    _check_delta(delta)
    if not releases:
        return GaussianEpsilon(delta=delta, rdp=0.0, prv=0.0, epsilon=0.0, tolerance=tolerance)
    rdp = rdp_epsilon(releases, delta=delta)
    prv = prv_epsilon(releases, delta=delta)
    larger, smaller = max(rdp, prv), min(rdp, prv)
    if not (math.isfinite(rdp) and math.isfinite(prv)):
        raise PrivacyError(f"an accountant returned a non-finite epsilon (RDP {rdp}, PRV {prv})")
    if check_tolerance and larger - smaller > tolerance * larger + PRV_ABSOLUTE_SLACK:
        raise PrivacyError(
            f"the RDP ({rdp:.4f}) and PRV ({prv:.4f}) accountants disagree by "
            f"{(larger - smaller) / larger:.1%}, more than the tolerance {tolerance:.0%}. RDP is loose under "
            "strong subsampling; to accept the larger value knowingly, raise the accountant tolerance "
            "(--accountant-tolerance, accountant_tolerance=)"
        )
    return GaussianEpsilon(delta=delta, rdp=rdp, prv=prv, epsilon=larger, tolerance=tolerance)


def noise_multiplier_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    releases: int,
    sample_rate: float = 1.0,
    tolerance: float = DEFAULT_ACCOUNTANT_TOLERANCE,
) -> float:
    """Return the smallest noise multiplier (to 0.1%) whose composed epsilon, max(RDP, PRV), is <= target."""
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"target epsilon must be finite and > 0, got {target_epsilon}")

    def plan(sigma: float) -> list[GaussianRelease]:
        return [GaussianRelease(noise_multiplier=sigma, sample_rate=sample_rate, count=releases)]

    def bisect(low: float, high: float, fits: Any) -> float:
        while high / low > 1.001:
            middle = math.sqrt(low * high)
            if fits(middle):
                high = middle
            else:
                low = middle
        return high

    high = 1.0
    while rdp_epsilon(plan(high), delta=delta) > target_epsilon:
        high *= 2.0
        if high > 1e6:
            raise PrivacyError(f"no noise multiplier below 1e6 reaches epsilon {target_epsilon}")
    low = high / 2.0
    while rdp_epsilon(plan(low), delta=delta) <= target_epsilon and low > 1e-3:
        low /= 2.0
    sigma = bisect(low, high, lambda s: rdp_epsilon(plan(s), delta=delta) <= target_epsilon)
    # RDP is almost always the larger; PRV only needs to be checked (and, rarely, bisected on).
    if gaussian_epsilon(plan(sigma), delta=delta, tolerance=tolerance).epsilon > target_epsilon:
        high = sigma
        while gaussian_epsilon(plan(high), delta=delta, tolerance=tolerance).epsilon > target_epsilon:
            high *= 1.5
        sigma = bisect(
            sigma,
            high,
            lambda s: gaussian_epsilon(plan(s), delta=delta, tolerance=tolerance).epsilon <= target_epsilon,
        )
    return sigma
