"""Shamir t-of-n secret sharing of 256-bit secrets over GF(p), p = 2**256 + 297.

p is the smallest prime above 2**256, so every 32-byte secret is a field element and a share value fits
in 33 bytes. Evaluation points are the participant ids (non-zero, distinct, < 2**32 < p).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from privacy.secagg.errors import ShamirError
from privacy.secagg.primitives import RandomBytes

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33


@dataclass(frozen=True)
class Share:
    """One point (x, y) of a sharing polynomial; x is the holder's participant id."""

    x: int
    y: int

    def y_bytes(self) -> bytes:
        """Return y as 33 big-endian bytes (the form that travels in envelopes)."""
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, y: bytes) -> Share:
        """Return the share (x, y) after checking that y is a canonical field element."""
        if len(y) != SHARE_BYTES:
            raise ShamirError(f"a share value has {SHARE_BYTES} bytes, got {len(y)}")
        value = int.from_bytes(y, "big")
        if value >= PRIME:
            raise ShamirError("share value is not a field element")
        return cls(x=x, y=value)


def _random_field_element(random_bytes: RandomBytes) -> int:
    # Rejection sampling over 257-bit strings: uniform in [0, p), accepts with probability > 1/2.
    while True:
        candidate = int.from_bytes(random_bytes(SHARE_BYTES), "big") & ((1 << 257) - 1)
        if candidate < PRIME:
            return candidate


def split(
    secret: bytes, *, threshold: int, holders: Sequence[int], random_bytes: RandomBytes = os.urandom
) -> dict[int, Share]:
    """Return one share per holder id such that any `threshold` of them reconstruct `secret`."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(holders)
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} not in [1, {len(holders)}]")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_field_element(random_bytes) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = Share(x=x, y=y)
    return shares


def _check_points(xs: Iterable[int]) -> None:
    seen = set()
    for x in xs:
        if not 0 < x < PRIME:
            raise ShamirError(f"evaluation point {x} must be in [1, p)")
        if x in seen:
            raise ShamirError(f"duplicate evaluation point {x}")
        seen.add(x)


@lru_cache(maxsize=256)
def _lagrange_coefficients(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    # Cached because a server reconstructs many secrets from the same set of holders.
    coefficients = []
    for j, xj in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * (at - xm) % PRIME
                denominator = denominator * (xj - xm) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def _evaluate(shares: Sequence[Share], at: int) -> int:
    xs = tuple(share.x for share in shares)
    coefficients = _lagrange_coefficients(xs, at)
    return sum(c * share.y for c, share in zip(coefficients, shares, strict=True)) % PRIME


def reconstruct(shares: Iterable[Share], *, threshold: int) -> bytes:
    """Return the 32-byte secret from at least `threshold` shares.

    Shares beyond the first `threshold` are checked to lie on the same polynomial, so a corrupted share
    raises ShamirError instead of silently yielding a wrong secret.
    """
    ordered = sorted(shares, key=lambda share: share.x)
    _check_points(share.x for share in ordered)
    if len(ordered) < threshold:
        raise ShamirError(f"need {threshold} shares to reconstruct, got {len(ordered)}")
    base, extra = ordered[:threshold], ordered[threshold:]
    for share in extra:
        if _evaluate(base, share.x) != share.y:
            raise ShamirError("shares are inconsistent (not on one polynomial of degree < threshold)")
    secret = _evaluate(base, 0)
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("reconstructed value is not a 256-bit secret")
    return secret.to_bytes(SECRET_BYTES, "big")
