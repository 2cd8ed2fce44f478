"""Fixed-point encoding of real values for secure aggregation in a wide ring (e.g. averaged weights).

A value v with |v| <= bound is sent as q = offset + round(v * scale), an integer in [0, max_input] with
offset = max_input / 2 and scale = offset / bound; a coordinate a participant does not contribute to is
sent as 0. The secure sum of q over the contributors is then offset * count + sum(round(v * scale)), so
the sum of the values is recovered as (sum - offset * count) / scale when the count of contributors per
coordinate is known (for averaged weights: the keep-vote count, which :class:`VoteValueCodec` packs into the
same input so that one session sums both).

Ring and scale: max_input is the largest even integer with 2 * n * max_input < 2**ring_bits (the session's
ring b = ceil(log2(2 * n * max_input + 1)), one bit of headroom, then fits ``ring_bits``) and at most
``MAX_INPUT`` (2**32 - 1, the wire's uint32). Rounding error: each encoded value is off by at most
1 / (2 * scale) = bound / max_input, so the sum of k values is off by at most k * bound / max_input and
their mean by at most bound / max_input (:meth:`FixedPointCodec.max_error`). At 32 bits and n = 4 that is
about 1.9e-9 * bound. Values beyond ``bound`` are clipped to it, counted, and the caller says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from privacy.errors import PrivacyError
from privacy.secagg.parameters import MAX_INPUT, WIDE_MAX_BIT_WIDTH, ring_bit_width

DEFAULT_RING_BITS = 32
"""uint32 lanes, packed as a plain copy: 4 bytes a coordinate on the wire, error ~ 2n * bound / 2**32."""


@dataclasses.dataclass(frozen=True)
class EncodedValues:
    """Fixed-point inputs for one session, and how many values had to be clipped to the bound."""

    inputs: np.ndarray
    clipped: int


@dataclasses.dataclass(frozen=True)
class FixedPointCodec:
    """Encodes values in [-bound, bound] as integers in [0, max_input] and decodes their secure sums."""

    participants: int
    max_input: int

    def __post_init__(self) -> None:
        if self.participants < 1:
            raise PrivacyError(f"participants must be >= 1, got {self.participants}")
        if self.max_input < 2 or self.max_input % 2 or self.max_input > MAX_INPUT:
            raise PrivacyError(f"max_input must be an even integer in [2, {MAX_INPUT}], got {self.max_input}")

    @classmethod
    def for_ring(cls, *, participants: int, ring_bits: int = DEFAULT_RING_BITS) -> FixedPointCodec:
        """Return the finest codec whose sums over ``participants`` fit a ring of ``ring_bits`` bits."""
        if participants < 1:
            raise PrivacyError(f"participants must be >= 1, got {participants}")
        if not 3 <= ring_bits <= WIDE_MAX_BIT_WIDTH:
            raise PrivacyError(f"ring_bits must be in [3, {WIDE_MAX_BIT_WIDTH}], got {ring_bits}")
        max_input = min(((1 << ring_bits) - 1) // (2 * participants), MAX_INPUT) & ~1
        if max_input < 2:
            raise PrivacyError(f"ring_bits {ring_bits} is too narrow for {participants} participants")
        return cls(participants=participants, max_input=max_input)

    @property
    def offset(self) -> int:
        """Return the integer that encodes the value 0."""
        return self.max_input // 2

    @property
    def ring_bits(self) -> int:
        """Return b, the ring width of a session with this codec's participants and max_input (headroom on)."""
        return ring_bit_width(self.participants, self.max_input)

    def scale(self, bound: float) -> float:
        """Return the fixed-point scale (integer steps per unit value) for values in [-bound, bound]."""
        if not (bound > 0 and np.isfinite(bound)):
            raise PrivacyError(f"bound must be positive and finite, got {bound}")
        return self.offset / bound

    def max_error(self, bound: float) -> float:
        """Return the largest rounding error of one decoded value, and so of a decoded mean: bound / max_input."""
        return 0.5 / self.scale(bound)

    def encode(self, values: np.ndarray, *, bound: float, contributes: np.ndarray) -> EncodedValues:
        """Return the inputs (uint64) for ``values``: offset + round(v * scale) where ``contributes``, else 0."""
        scale = self.scale(bound)
        values = np.asarray(values, dtype=np.float64)
        contributes = np.asarray(contributes, dtype=np.bool_)
        if values.shape != contributes.shape:
            raise PrivacyError(f"values {values.shape} and contributes {contributes.shape} differ in shape")
        if not np.all(np.isfinite(values[contributes])):
            raise PrivacyError("values to encode must be finite")
        steps = np.rint(values * scale)
        outside = contributes & (np.abs(steps) > self.offset)
        np.clip(steps, -self.offset, self.offset, out=steps)
        inputs = np.where(contributes, steps + self.offset, 0).astype(np.uint64)
        return EncodedValues(inputs=inputs, clipped=int(outside.sum()))

    def decode_sum(self, sums: np.ndarray, counts: np.ndarray, *, bound: float) -> np.ndarray:
        """Return the sums of the values (float64) from the secure sums and the contributors per coordinate."""
        sums = np.asarray(sums)
        counts = np.asarray(counts)
        if sums.shape != counts.shape:
            raise PrivacyError(f"sums {sums.shape} and counts {counts.shape} differ in shape")
        if counts.size and (int(counts.min()) < 0 or int(counts.max()) > self.participants):
            raise PrivacyError(f"counts must lie in [0, {self.participants}]")
        centred = sums.astype(np.int64) - counts.astype(np.int64) * self.offset
        return centred.astype(np.float64) / self.scale(bound)


COUNT_SHIFT = 31
"""Bit position of the keep-vote in a :class:`VoteValueCodec` input: inputs stay below 2**32 (the wire's uint32)."""


@dataclasses.dataclass(frozen=True)
class DecodedVotesAndValues:
    """One session's sums split into the keep-vote counts and the sums of the values voted with them."""

    counts: np.ndarray
    """Keep-votes per coordinate (int64, in [0, participants])."""
    value_sums: np.ndarray
    """Sum of the values sent with those votes (float64)."""


@dataclasses.dataclass(frozen=True)
class VoteValueCodec:
    """Packs a keep-vote bit and a fixed-point value into one input, so one session sums both.

    FedSpaLLM needs, per weight, the keep-vote count S and the sum of the keep-voters' weight updates; the
    two must be sums over exactly the same survivors. One input carries both: a participant sends
    r * (2**COUNT_SHIFT + offset + round(v * scale)) for its vote bit r and its value v (0 where r = 0).
    Over at most ``participants`` contributors the value parts sum to less than 2**COUNT_SHIFT, so the
    secure sum is S * 2**COUNT_SHIFT + (offset * S + sum of the rounded values): S is the sum shifted right by
    COUNT_SHIFT and the value sum is read from the low bits exactly as :class:`FixedPointCodec` decodes it.
    The values' codec has max_input = the largest even m with participants * m < 2**COUNT_SHIFT, so each
    value is off by at most bound / m (about participants * bound / 2**31: 1.9e-9 * bound at 4). A session
    carrying it has max_input = 2**COUNT_SHIFT + m < 2**32 and ring b = ceil(log2(2 n max_input + 1)):
    35 bits at n = 4, 39 at n = 64, about what the keep-vote session and a 32-bit value session would send
    together, in one session with one survivor set.

    The codec is fixed by ``participants`` alone (the run's n, not a session's size), so a participant's
    vector for a block does not change when a session is retried with fewer members.
    """

    participants: int

    def __post_init__(self) -> None:
        if self.participants < 1:
            raise PrivacyError(f"participants must be >= 1, got {self.participants}")

    @property
    def values(self) -> FixedPointCodec:
        """Return the codec of the value part (the low COUNT_SHIFT bits)."""
        return FixedPointCodec(
            participants=self.participants,
            max_input=((1 << COUNT_SHIFT) - 1) // self.participants & ~1,
        )

    @property
    def max_input(self) -> int:
        """Return the largest input one participant sends: a keep-vote with the largest value."""
        return (1 << COUNT_SHIFT) + self.values.max_input

    def max_error(self, bound: float) -> float:
        """Return the largest rounding error of one decoded value, and so of a decoded mean."""
        return self.values.max_error(bound)

    def encode(self, values: np.ndarray, *, bound: float, votes: np.ndarray) -> EncodedValues:
        """Return the inputs (uint64): vote * 2**COUNT_SHIFT plus the value's fixed-point code where vote is 1."""
        votes = np.asarray(votes)
        if votes.size and (votes.min() < 0 or votes.max() > 1):
            raise PrivacyError("votes must be 0 or 1")
        voted = votes.astype(np.bool_)
        encoded = self.values.encode(values, bound=bound, contributes=voted)
        inputs = encoded.inputs + (voted.astype(np.uint64) << np.uint64(COUNT_SHIFT))
        return EncodedValues(inputs=inputs, clipped=encoded.clipped)

    def decode(self, sums: np.ndarray, *, bound: float, contributors: int) -> DecodedVotesAndValues:
        """Return the keep-vote counts and value sums of ``contributors`` participants' summed inputs.

        Raises PrivacyError naming how many coordinates are inconsistent: a count above ``contributors``
        or a value part that ``count`` honest inputs cannot produce (both mean a participant sent an input
        outside the encoding, or the sums are corrupt).
        """
        if not 1 <= contributors <= self.participants:
            raise PrivacyError(f"contributors must be in [1, {self.participants}], got {contributors}")
        sums = np.asarray(sums).astype(np.uint64)
        counts = (sums >> np.uint64(COUNT_SHIFT)).astype(np.int64)
        low = (sums & np.uint64((1 << COUNT_SHIFT) - 1)).astype(np.int64)
        bad = (counts > contributors) | (low > counts * self.values.max_input)
        if bad.any():
            raise PrivacyError(
                f"{int(bad.sum())} of {sums.size} coordinates are not a sum of {contributors} encoded "
                "vote-and-value inputs (a count above the contributors or a value part too large for its count)"
            )
        return DecodedVotesAndValues(
            counts=counts, value_sums=self.values.decode_sum(low, counts, bound=bound)
        )


STATISTIC_FRACTION_BITS = 20
"""Fractional bits of a :class:`StatisticCodec` value: each site's value is off by at most 2**-21."""
STATISTIC_LANE_BITS = 32


@dataclasses.dataclass(frozen=True)
class StatisticCodec:
    """Calibration statistics as 64-bit fixed point in two 32-bit lanes.

    A site sends q = round(v * 2**STATISTIC_FRACTION_BITS) for each value v, split into q >> 32 and
    q & (2**32 - 1), each within the wire's uint32 ``max_input`` (2**32 - 1); the secure sums of the two lanes
    give the sum of the q exactly (high * 2**32 + low), and so the sum of the values to within
    contributors * 2**-21. Unsigned (Wanda's and RIA's sums of x_j^2), the public range is [0, 2**44)
    (about 1.8e13, a sum of squares of 4.2e6 per token over 2**20 tokens) and a negative value (a DP
    statistic's noise) is sent as 0, post-processing of what the site releases anyway. Signed (the
    entries of SparseGPT's X^T X, whose off-diagonal entries may be negative), q is offset by 2**63 (the
    top bit flipped, as two's complement) and the range is [-2**43, 2**43); the decoder removes
    contributors * 2**63 exactly, in integers. A site whose statistic lies outside the range refuses to
    encode it (no silent clipping, which would make the sum differ from a pooled run's). The ring of n
    sites is ceil(log2(2 n (2**32 - 1) + 1)) bits (34 at n = 2, 38 at n = 32), within the 64-bit ring.
    """

    fraction_bits: int = STATISTIC_FRACTION_BITS
    signed: bool = False
    """True for statistics that may be negative (a Gram matrix's entries)."""

    max_input: int = dataclasses.field(default=(1 << STATISTIC_LANE_BITS) - 1, init=False)
    lanes: int = dataclasses.field(default=2, init=False)
    """Inputs a value is sent as (its high lane, then its low lane)."""

    @property
    def bound(self) -> float:
        """Return the first value above the public range (its negative is the lowest value when signed)."""
        return float(2 ** (2 * STATISTIC_LANE_BITS - self.fraction_bits - (1 if self.signed else 0)))

    def _range(self) -> str:
        return f"[{-self.bound if self.signed else 0:.4g}, {self.bound:.4g})"

    def encode(self, values: np.ndarray, *, name: str) -> np.ndarray:
        """Return the inputs (uint64, twice as many as ``values``: the high lanes, then the low lanes)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(values)):
            raise PrivacyError(f"{name}: a calibration statistic is not finite")
        if not self.signed:
            values = np.maximum(values, 0.0)
        if values.size and (
            float(values.max()) >= self.bound or (self.signed and float(values.min()) < -self.bound)
        ):
            worst = float(values[np.argmax(np.abs(values))])
            raise PrivacyError(
                f"{name}: a calibration statistic ({worst:.4g}) is outside the fixed-point range "
                f"{self._range()} of the statistics recipe"
            )
        scaled = np.rint(values * float(1 << self.fraction_bits))
        if self.signed:
            steps = scaled.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
        else:
            steps = scaled.astype(np.uint64)
        high = steps >> np.uint64(STATISTIC_LANE_BITS)
        low = steps & np.uint64(self.max_input)
        return np.concatenate([high, low])

    def decode(self, sums: np.ndarray, *, contributors: int, name: str) -> np.ndarray:
        """Return the summed values (float64) from the summed lanes of ``contributors`` sites."""
        sums = np.asarray(sums).astype(np.uint64).reshape(-1)
        if sums.size % 2:
            raise PrivacyError(f"{name}: {sums.size} summed lanes, not high and low lanes of each value")
        if contributors < 1 or (sums.size and int(sums.max()) > contributors * self.max_input):
            raise PrivacyError(f"{name}: a lane sum is not one that {contributors} encoded inputs make")
        half = sums.size // 2
        if self.signed:
            # Each input's offset 2**63 is 2**31 in its high lane: removed exactly, before any rounding.
            high = (sums[:half].astype(np.int64) - np.int64(contributors) * np.int64(1 << 31)).astype(
                np.float64
            )
        else:
            high = sums[:half].astype(np.float64)
        low = sums[half:].astype(np.float64)
        return high * float(2 ** (STATISTIC_LANE_BITS - self.fraction_bits)) + low / float(
            1 << self.fraction_bits
        )
