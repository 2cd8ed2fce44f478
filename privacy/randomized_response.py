"""Randomized response on mask bits: each keep-vote bit is flipped with probability p = 1 / (1 + e^eps0).

Public API::

    rr = RandomizedResponse(epsilon0=2.0)
    noisy = rr.randomize(keep_bits, layer="blocks.3.mlp.down_proj")  # numpy bool array, same shape
    rr.epsilon0          # the eps0 actually achieved (from the integer threshold), <= the one asked for
    rr.flip_probability  # threshold / 2^32
    rr.threshold         # flip a bit iff its 32-bit keystream word is < threshold
    rr.coordinates       # bits randomized so far (for the ledger)

    flip_probability(eps0) -> p;  epsilon0_from_flip_probability(p) -> eps0
    unbiased_count(noisy_count, n, p) -> estimate of the true keep-vote count among n voters
    unbiased_count_variance(n, p) -> its variance

Randomness: one 32-bit word of an AES-256-CTR keystream (keyed from ``os.urandom``, see
:mod:`privacy.dp_random`) per bit, compared with an integer threshold T; the bit flips with probability
exactly T / 2^32. T is rounded *up* from p * 2^32, so the effective eps0 = ln((2^32 - T) / T) is never larger
than requested, and that effective value is the one reported. Each call draws fresh keystream; the caller
must randomize each weight's bit once per run (a re-randomized bit would leak through averaging). Passing
``layer`` lets this object refuse a second randomization of the same layer.

Throughput: see ``bench/randomized_response.py`` (chunked, in-place numpy ops; well over 2e8 bits/s).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from privacy.dp_random import KeystreamRandom
from privacy.errors import PrivacyError

logger = logging.getLogger(__name__)

THRESHOLD_BITS = 32
_SCALE = 1 << THRESHOLD_BITS
MAX_EPSILON0 = math.log(_SCALE - 1)
"""The largest eps0 a 32-bit threshold can realise (T = 1)."""
_CHUNK = 1 << 20


def flip_probability(epsilon0: float) -> float:
    """Return p = 1 / (1 + e^eps0), the flip probability of eps0-randomized response."""
    _check_epsilon0(epsilon0)
    return 1.0 / (1.0 + math.exp(epsilon0))


def epsilon0_from_flip_probability(p: float) -> float:
    """Return eps0 = ln((1 - p) / p), the privacy of randomized response that flips with probability p."""
    if not 0.0 < p <= 0.5:
        raise PrivacyError(f"flip probability must be in (0, 0.5], got {p}")
    return math.log1p(-p) - math.log(p)


def threshold_for_epsilon0(epsilon0: float) -> int:
    """Return the integer threshold T (flip iff a uniform 32-bit word < T) with effective eps0 <= epsilon0."""
    _check_epsilon0(epsilon0)
    threshold = max(1, math.ceil(flip_probability(epsilon0) * _SCALE))
    threshold = min(threshold, _SCALE // 2)
    # Float rounding must never make the effective eps0 exceed the request.
    while threshold < _SCALE // 2 and epsilon0_from_threshold(threshold) > epsilon0:
        threshold += 1
    return threshold


def epsilon0_from_threshold(threshold: int) -> float:
    """Return the exact eps0 = ln((2^32 - T) / T) of randomized response with integer threshold T."""
    if not 1 <= threshold <= _SCALE // 2:
        raise PrivacyError(f"threshold must be in [1, 2^31], got {threshold}")
    return math.log(_SCALE - threshold) - math.log(threshold)


def unbiased_count(noisy_count: np.ndarray | float, n: int, p: float) -> np.ndarray | float:
    """Return the unbiased estimate (noisy - n p) / (1 - 2p) of the true number of 1-bits among n voters."""
    if not 0.0 <= p < 0.5:
        raise PrivacyError(f"flip probability must be in [0, 0.5) for an unbiased count, got {p}")
    return (noisy_count - n * p) / (1.0 - 2.0 * p)


def unbiased_count_variance(n: int, p: float) -> float:
    """Return the variance n p (1 - p) / (1 - 2p)^2 of :func:`unbiased_count`."""
    if not 0.0 <= p < 0.5:
        raise PrivacyError(f"flip probability must be in [0, 0.5), got {p}")
    return n * p * (1.0 - p) / (1.0 - 2.0 * p) ** 2


def _check_epsilon0(epsilon0: float) -> None:
    if not (isinstance(epsilon0, (int, float)) and math.isfinite(epsilon0) and epsilon0 >= 0.0):
        raise PrivacyError(f"epsilon0 must be a finite number >= 0, got {epsilon0!r}")
    if epsilon0 > MAX_EPSILON0:
        raise PrivacyError(
            f"epsilon0 {epsilon0} cannot be realised with a {THRESHOLD_BITS}-bit threshold "
            f"(largest: {MAX_EPSILON0:.3f})"
        )


class RandomizedResponse:
    """eps0-randomized response on boolean arrays, with CSPRNG randomness and an integer threshold."""

    def __init__(self, *, epsilon0: float, rng: KeystreamRandom | None = None) -> None:
        self.threshold = threshold_for_epsilon0(epsilon0)
        self.requested_epsilon0 = float(epsilon0)
        self.epsilon0 = epsilon0_from_threshold(self.threshold)
        self.flip_probability = self.threshold / _SCALE
        self.coordinates = 0
        self._rng = rng or KeystreamRandom()
        self._layers_done: set[str] = set()
        self._words = np.empty(_CHUNK, dtype=np.uint32)
        self._flips = np.empty(_CHUNK, dtype=np.bool_)

    def randomize(self, bits: np.ndarray, *, layer: str | None = None) -> np.ndarray:
        """Return a new boolean array: ``bits`` with each entry flipped independently with flip_probability."""
        if bits.dtype != np.bool_:
            raise PrivacyError(f"randomized response takes a boolean array, got dtype {bits.dtype}")
        if layer is not None:
            if layer in self._layers_done:
                raise PrivacyError(f"layer {layer!r} was already randomized in this run; never re-randomize")
            self._layers_done.add(layer)
        source = np.ascontiguousarray(bits).reshape(-1)
        noisy = np.empty_like(source)
        threshold = np.uint32(self.threshold)
        for start in range(0, source.size, _CHUNK):
            stop = min(start + _CHUNK, source.size)
            words = self._rng.fill(self._words[: stop - start])
            flips = self._flips[: stop - start]
            np.less(words, threshold, out=flips)
            np.bitwise_xor(source[start:stop], flips, out=noisy[start:stop])
        self.coordinates += source.size
        return noisy.reshape(bits.shape)
