"""Cryptographically secure randomness for the privacy mechanisms.

:class:`KeystreamRandom` gives back random bytes, 32-bit integers, uniforms and Gaussians drawn from an
AES-256-CTR keystream whose key and initial counter come from ``os.urandom``. numpy and torch generators
(Mersenne Twister, Philox) are fine for simulation but predictable from their outputs, so they never feed a
privacy mechanism. Python's ``random`` is never used.

Gaussians: Box-Muller on 53-bit uniforms from the keystream. Floating-point Gaussian samplers leak through
their least significant bits (Mironov 2012; Holohan and Braghin 2021); like Opacus' ``secure_mode`` we
return the sum of four independent draws scaled by 1/2, which has the same distribution and removes the
known bit-pattern attacks on a single draw. This is documented in docs/PRIVACY.md as a residual risk:
it is not a discrete Gaussian.

Usage::

    rng = KeystreamRandom()              # fresh key from the OS
    words = rng.uint32(1_000_000)        # numpy uint32 array
    noise = rng.standard_normal(4096)    # numpy float64 array
"""

from __future__ import annotations

import logging
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

logger = logging.getLogger(__name__)

RNG_SOURCE = "AES-256-CTR keystream, key and initial counter from os.urandom"
GAUSSIAN_SAMPLER = "Box-Muller on 53-bit keystream uniforms, sum of 4 draws / 2 (Opacus secure_mode style)"

_TWO_POW_MINUS_53 = 2.0**-53


class KeystreamRandom:
    """An AES-256-CTR keystream keyed from ``os.urandom``: the only source of noise for privacy mechanisms."""

    def __init__(self) -> None:
        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._encryptor = cipher.encryptor()
        self._zeros = bytes(0)

    def fill(self, buffer: np.ndarray) -> np.ndarray:
        """Return ``buffer`` (a C-contiguous numpy array) overwritten with keystream bytes."""
        view = buffer.data.cast("B")
        if len(self._zeros) < len(view):
            self._zeros = bytes(len(view))
        self._encryptor.update_into(memoryview(self._zeros)[: len(view)], view)
        return buffer

    def random_bytes(self, count: int) -> bytes:
        """Return ``count`` keystream bytes."""
        return self.fill(np.empty(count, dtype=np.uint8)).tobytes()

    def uint32(self, count: int) -> np.ndarray:
        """Return ``count`` independent uniform 32-bit unsigned integers."""
        return self.fill(np.empty(count, dtype=np.uint32))

    def uniform(self, count: int) -> np.ndarray:
        """Return ``count`` uniforms in the open interval (0, 1), each from 53 keystream bits."""
        words = self.fill(np.empty(count, dtype=np.uint64))
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * _TWO_POW_MINUS_53

    def bernoulli(self, count: int, probability: float) -> np.ndarray:
        """Return ``count`` booleans, each True with ``probability`` (to 2^-53 resolution)."""
        return self.uniform(count) < probability

    def _box_muller(self, count: int) -> np.ndarray:
        half = (count + 1) // 2
        radius = np.sqrt(-2.0 * np.log(self.uniform(half)))
        angle = 2.0 * np.pi * self.uniform(half)
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

    def standard_normal(self, count: int) -> np.ndarray:
        """Return ``count`` independent N(0, 1) draws (sum of four Box-Muller draws, halved)."""
        total = self._box_muller(count)
        for _ in range(3):
            total += self._box_muller(count)
        return total * 0.5
