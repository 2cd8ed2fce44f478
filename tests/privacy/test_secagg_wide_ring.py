"""Wide rings (up to 64 bits) and fixed-point sums: what FedSpaLLM's averaged weights need from secagg."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import PrivacyError
from privacy.secagg import SessionContext, SessionParameters, aggregate_in_process
from privacy.secagg.fixed_point import COUNT_SHIFT, FixedPointCodec, VoteValueCodec
from privacy.secagg.packing import BitPacker, lane_dtype, pack_reference, unpack_reference
from privacy.secagg.parameters import MAX_BIT_WIDTH, MAX_INPUT, WIDE_MAX_BIT_WIDTH, ring_bit_width


def _context() -> bytes:
    return SessionContext.fresh(run_id="wide", round=0, block=0).encode()


def test_lane_types_grow_with_the_ring() -> None:
    assert [lane_dtype(b).itemsize for b in (1, 8, 9, 16, 17, 32, 33, 64)] == [1, 1, 2, 2, 4, 4, 8, 8]
    with pytest.raises(PrivacyError, match="bit width"):
        lane_dtype(65)


@settings(max_examples=40, deadline=None)
@given(bit_width=st.integers(17, 64), groups=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_wide_packing_round_trips_and_matches_the_reference(bit_width: int, groups: int, seed: int) -> None:
    dtype = lane_dtype(bit_width)
    lanes = np.random.default_rng(seed).integers(
        0, np.iinfo(dtype).max, groups * 8, dtype=dtype, endpoint=True
    )
    packer = BitPacker(bit_width, groups * 8)
    packed = packer.pack(lanes)
    assert packed.size == groups * bit_width
    assert np.array_equal(packed, pack_reference(lanes, bit_width))
    low = lanes & dtype.type((1 << bit_width) - 1)
    assert np.array_equal(packer.unpack(packed), low)
    assert np.array_equal(unpack_reference(packed, bit_width, lanes.size), low)


def test_a_session_refuses_a_wide_ring_unless_it_asks_for_one() -> None:
    base = {"participant_ids": (1, 2, 3, 4), "threshold": 3, "dimension": 10, "context": _context()}
    with pytest.raises(PrivacyError, match="bit width 35 exceeds 16"):
        SessionParameters(**base, max_input=1 << 31)  # type: ignore[arg-type]
    wide = SessionParameters(**base, max_input=1 << 31, max_bit_width=WIDE_MAX_BIT_WIDTH)  # type: ignore[arg-type]
    assert wide.bit_width == 35 and wide.lane_dtype == np.dtype("<u8") and wide.sum_dtype == np.dtype("<u8")
    # the acceptance limit is local: the same session has the same digest whoever accepts it
    assert (
        wide.digest()
        == SessionParameters(
            **base,
            max_input=1 << 31,
            max_bit_width=40,  # type: ignore[arg-type]
        ).digest()
    )
    with pytest.raises(PrivacyError, match="max_input must be in"):
        SessionParameters(**base, max_input=1 << 32, max_bit_width=64)  # type: ignore[arg-type]
    assert MAX_BIT_WIDTH == 16  # keep-vote sessions keep their 16-bit limit


@pytest.mark.parametrize("max_input", [(1 << 20) - 1, (1 << 28), (1 << 32) - 1])
def test_wide_sums_are_exact_with_a_dropout(max_input: int) -> None:
    rng = np.random.default_rng(max_input)
    vectors = [rng.integers(0, max_input, 300, dtype=np.uint64, endpoint=True) for _ in range(5)]
    sums = aggregate_in_process(
        vectors,
        chunk_coordinates=128,
        max_input=max_input,
        max_bit_width=WIDE_MAX_BIT_WIDTH,
        drop_before_masked_input={2},
    )
    expected = sum(v.astype(object) for i, v in enumerate(vectors) if i != 2)
    assert [int(x) for x in sums] == [int(x) for x in expected]


def test_a_public_max_input_is_enforced() -> None:
    with pytest.raises(PrivacyError, match="exceeds max_input"):
        aggregate_in_process([np.array([3, 9], dtype=np.uint64)] * 3, max_input=8)


def test_fixed_point_codec_fits_the_ring_and_bounds_its_error() -> None:
    codec = FixedPointCodec.for_ring(participants=4, ring_bits=32)
    assert codec.ring_bits == 32 and codec.max_input % 2 == 0
    assert FixedPointCodec(participants=4, max_input=codec.max_input + 2).ring_bits == 33
    bound = 0.75
    assert codec.max_error(bound) == pytest.approx(bound / codec.max_input)
    assert codec.max_error(bound) < 3e-9


def test_fixed_point_secure_sum_equals_the_plain_sum_within_the_documented_error() -> None:
    rng = np.random.default_rng(7)
    n, size, bound = 4, 500, 0.5
    codec = FixedPointCodec.for_ring(participants=n)
    values = [rng.uniform(-bound, bound, size) for _ in range(n)]
    contributes = [rng.random(size) < 0.6 for _ in range(n)]
    encoded = [codec.encode(v, bound=bound, contributes=c) for v, c in zip(values, contributes, strict=True)]
    assert all(e.clipped == 0 for e in encoded)
    sums = aggregate_in_process(
        [e.inputs for e in encoded],
        chunk_coordinates=128,
        max_input=codec.max_input,
        max_bit_width=codec.ring_bits,
    )
    counts = np.sum(contributes, axis=0)
    decoded = codec.decode_sum(sums, counts, bound=bound)
    plain = np.sum([np.where(c, v, 0.0) for v, c in zip(values, contributes, strict=True)], axis=0)
    assert np.max(np.abs(decoded - plain)) <= counts.max() * codec.max_error(bound)
    mean_error = np.abs(decoded - plain)[counts > 0] / counts[counts > 0]
    assert mean_error.max() <= codec.max_error(bound)


def test_values_beyond_the_bound_are_clipped_and_counted() -> None:
    codec = FixedPointCodec.for_ring(participants=2)
    encoded = codec.encode(
        np.array([0.1, 3.0, -7.0, 5.0]), bound=1.0, contributes=np.array([1, 1, 1, 0], bool)
    )
    assert encoded.clipped == 2
    assert encoded.inputs.tolist() == [codec.offset + round(0.1 * codec.scale(1.0)), codec.max_input, 0, 0]
    with pytest.raises(PrivacyError, match="bound must be positive"):
        codec.scale(0.0)


# ------------------------------------------------------------------ votes and values in one session
@pytest.mark.parametrize("n", [1, 2, 4, 16, 64, 1000])
def test_a_vote_and_value_input_fits_the_wire_and_a_64_bit_ring(n: int) -> None:
    codec = VoteValueCodec(participants=n)
    assert codec.max_input <= MAX_INPUT  # travels as a uint32
    assert n * codec.values.max_input < 2**COUNT_SHIFT  # the value parts never carry into the count
    assert ring_bit_width(n, codec.max_input) <= WIDE_MAX_BIT_WIDTH
    # about as fine as a 32-bit value session of its own: bound / max_input, max_input ~ 2**31 / n
    assert codec.max_error(1.0) == pytest.approx(1.0 / codec.values.max_input)
    assert codec.max_error(1.0) <= 2.0 * n / 2**31


@pytest.mark.parametrize(("n", "survivors"), [(4, (1, 2, 3, 4)), (5, (1, 3, 4, 5)), (3, (1, 2))])
def test_votes_and_values_summed_in_one_session_decode_to_both_sums(
    n: int, survivors: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(n)
    size, bound = 700, 0.25
    codec = VoteValueCodec(participants=n)
    votes = [rng.random(size) < 0.55 for _ in range(n)]
    values = [rng.uniform(-bound, bound, size) for _ in range(n)]
    inputs = {i + 1: codec.encode(values[i], bound=bound, votes=votes[i]).inputs for i in range(n)}
    threshold = max(1, n // 2 + 1)
    sums = aggregate_in_process(
        [inputs[i] for i in range(1, n + 1)],
        threshold=min(threshold, len(survivors)),
        chunk_coordinates=128,
        max_input=codec.max_input,
        max_bit_width=WIDE_MAX_BIT_WIDTH,
        drop_before_masked_input=tuple(i - 1 for i in range(1, n + 1) if i not in survivors),
    )
    decoded = codec.decode(sums, bound=bound, contributors=len(survivors))
    alive = [i - 1 for i in survivors]
    counts = np.sum([votes[i] for i in alive], axis=0)
    plain = np.sum([np.where(votes[i], values[i], 0.0) for i in alive], axis=0)
    assert np.array_equal(decoded.counts, counts)
    assert np.max(np.abs(decoded.value_sums - plain)) <= counts.max() * codec.max_error(bound)


def test_vote_and_value_decoding_rejects_sums_no_honest_inputs_make() -> None:
    codec = VoteValueCodec(participants=4)
    honest = codec.encode(np.array([0.1, -0.2]), bound=1.0, votes=np.array([1, 0])).inputs
    assert honest[1] == 0  # a prune vote sends nothing, whatever its value
    three = np.uint64(3) << np.uint64(COUNT_SHIFT)
    with pytest.raises(PrivacyError, match="1 of 1 coordinates"):
        codec.decode(np.array([three]), bound=1.0, contributors=2)  # three votes from two contributors
    with pytest.raises(PrivacyError, match="value part too large"):
        codec.decode(np.array([np.uint64(codec.values.max_input + 1)]), bound=1.0, contributors=2)  # no vote
    with pytest.raises(PrivacyError, match="votes must be 0 or 1"):
        codec.encode(np.array([0.1]), bound=1.0, votes=np.array([2]))
    assert codec.decode(np.array([honest[0]]), bound=1.0, contributors=1).counts.tolist() == [1]


@pytest.mark.parametrize("bit_width", range(1, WIDE_MAX_BIT_WIDTH + 1))
def test_every_ring_width_packs_as_the_reference_does(bit_width: int) -> None:
    dtype = lane_dtype(bit_width)
    rng = np.random.default_rng(bit_width)
    packer = BitPacker(bit_width, 8 * 37)
    for groups in (1, 2, 7, 37):
        lanes = rng.integers(0, np.iinfo(dtype).max, groups * 8, dtype=dtype, endpoint=True)
        packed = packer.pack(lanes)
        assert np.array_equal(packed, pack_reference(lanes, bit_width)), groups
        low = lanes & dtype.type((1 << bit_width) - 1) if bit_width < 64 else lanes
        assert np.array_equal(packer.unpack(packed), low), groups
