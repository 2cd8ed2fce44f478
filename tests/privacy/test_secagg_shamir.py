"""Shamir t-of-n sharing over GF(2**256 + 297): any t shares reconstruct, t - 1 do not."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import shamir
from privacy.secagg.errors import ShamirError


def test_field_is_the_smallest_prime_above_2_to_the_256() -> None:
    sympy = pytest.importorskip("sympy")
    assert sympy.nextprime(2**256) == shamir.PRIME


def test_any_t_shares_reconstruct_and_t_minus_1_fail() -> None:
    secret = os.urandom(32)
    holders = [1, 2, 3, 5, 8, 13]
    shares = shamir.split(secret, threshold=4, holders=holders)
    for subset in itertools.combinations(shares.values(), 4):
        assert shamir.reconstruct(subset, threshold=4) == secret
    for subset in itertools.combinations(shares.values(), 3):
        with pytest.raises(ShamirError, match="need 4 shares"):
            shamir.reconstruct(subset, threshold=4)


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    # Perfect secrecy, concretely: for t - 1 fixed shares and any candidate secret there is a polynomial
    # of degree < t through them, so interpolating with the candidate as an extra point (x = 0) and
    # evaluating at a fresh point always succeeds; nothing singles out the true secret.
    secret = os.urandom(32)
    shares = list(shamir.split(secret, threshold=3, holders=[1, 2, 3]).values())[:2]
    for candidate in (bytes(32), b"\xff" * 32, secret):
        completed = shares + [shamir.Share(x=7, y=_interpolate_through(shares, candidate, at=7))]
        assert shamir.reconstruct(completed, threshold=3) == candidate


def _interpolate_through(shares: list[shamir.Share], secret: bytes, at: int) -> int:
    points = [(0, int.from_bytes(secret, "big"))] + [(s.x, s.y) for s in shares]
    total = 0
    for j, (xj, yj) in enumerate(points):
        term = yj
        for m, (xm, _) in enumerate(points):
            if m != j:
                term = term * (at - xm) * pow(xj - xm, -1, shamir.PRIME) % shamir.PRIME
        total += term
    return total % shamir.PRIME


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_reconstruction_from_random_subsets(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    holders = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    secret = os.urandom(32)
    shares = list(shamir.split(secret, threshold=t, holders=holders).values())
    chosen = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct(chosen, threshold=t) == secret


def test_a_corrupted_share_is_detected_when_there_are_spare_shares() -> None:
    shares = list(shamir.split(os.urandom(32), threshold=3, holders=[1, 2, 3, 4]).values())
    shares[3] = shamir.Share(x=shares[3].x, y=(shares[3].y + 1) % shamir.PRIME)
    with pytest.raises(ShamirError, match="inconsistent"):
        shamir.reconstruct(shares, threshold=3)


def test_shares_round_trip_through_33_bytes_and_reject_non_field_values() -> None:
    share = shamir.split(b"\x07" * 32, threshold=2, holders=[4, 9])[9]
    assert shamir.Share.from_bytes(9, share.y_bytes()) == share
    with pytest.raises(ShamirError):
        shamir.Share.from_bytes(9, shamir.PRIME.to_bytes(33, "big"))
    with pytest.raises(ShamirError):
        shamir.Share.from_bytes(9, b"\x00" * 32)


@pytest.mark.parametrize(
    ("secret", "threshold", "holders"),
    [
        (b"\x00" * 31, 2, [1, 2]),  # not 32 bytes
        (b"\x00" * 32, 3, [1, 2]),  # threshold above n
        (b"\x00" * 32, 2, [1, 1]),  # duplicate evaluation point
        (b"\x00" * 32, 2, [0, 1]),  # x = 0 would be the secret itself
    ],
)
def test_split_rejects_bad_arguments(secret: bytes, threshold: int, holders: list[int]) -> None:
    with pytest.raises(ShamirError):
        shamir.split(secret, threshold=threshold, holders=holders)
