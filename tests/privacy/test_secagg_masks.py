"""The mask PRG (seekable AES-128-CTR read as ring lanes) and b-bit packing: pinned vectors, seeking,
and the fast packing path agreeing with the reference one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import PrivacyError
from privacy.secagg.packing import BitPacker, lane_dtype, pack_reference, packed_size, unpack_reference
from privacy.secagg.prg import MaskApplier, mask_lanes

PINNED_KEY = bytes(range(16))


def test_pinned_mask_vectors_stay_stable_across_versions() -> None:
    # Lanes of the mask with key 00..0f: at coordinate 0, at coordinate 2**20 (a chunk boundary), and
    # the uint16 lanes used once b > 8. Changing any of these breaks interoperability of versions.
    assert mask_lanes(PINNED_KEY, first_coordinate=0, count=16, dtype=np.uint8).tobytes().hex() == (
        "c6a13b37878f5b826f4f8162a1c8d879"
    )
    assert mask_lanes(PINNED_KEY, first_coordinate=1 << 20, count=16, dtype=np.uint8).tobytes().hex() == (
        "5920ea9d81b874b81a7260643279c8ff"
    )
    assert mask_lanes(
        PINNED_KEY, first_coordinate=1 << 20, count=8, dtype=np.dtype("<u2")
    ).tobytes().hex() == ("4275f56714aef2db91da6e6682537140")


def test_mask_is_aes_of_the_coordinate_block_index() -> None:
    # The definition, checked against raw AES-ECB: lanes 16j..16j+15 (uint8) are AES_k(j as 128 bits).
    ecb = Cipher(algorithms.AES(PINNED_KEY), modes.ECB()).encryptor()
    expected = b"".join(ecb.update(j.to_bytes(16, "big")) for j in (0, 1, 65536))
    lanes = np.concatenate(
        [
            mask_lanes(PINNED_KEY, first_coordinate=0, count=32, dtype=np.uint8),
            mask_lanes(PINNED_KEY, first_coordinate=16 * 65536, count=16, dtype=np.uint8),
        ]
    )
    assert lanes.tobytes() == expected


def test_pinned_packing_vectors() -> None:
    lanes = (np.arange(16, dtype=np.uint8) * 7).astype(np.uint8)
    assert pack_reference(lanes, 5).tobytes().hex() == "e0b8ca878af89b46b748"
    assert pack_reference(lanes, 3).tobytes().hex() == "b8cb29b8cb29"
    assert BitPacker(5, 16).pack(lanes).tobytes().hex() == "e0b8ca878af89b46b748"


@settings(max_examples=30, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    wide=st.booleans(),
    start_block=st.integers(0, 2**20),
    count=st.integers(1, 3000),
    split=st.integers(0, 3000),
)
def test_a_segment_is_generated_without_its_prefix(
    key: bytes, wide: bool, start_block: int, count: int, split: int
) -> None:
    dtype = np.dtype("<u2") if wide else np.dtype(np.uint8)
    per_block = 16 // dtype.itemsize
    first = start_block * per_block
    whole = mask_lanes(key, first_coordinate=first, count=count, dtype=dtype)
    cut = min(split, count) // per_block * per_block
    tail = mask_lanes(key, first_coordinate=first + cut, count=count - cut, dtype=dtype)
    assert np.array_equal(whole[cut:], tail)


def test_mask_segments_must_start_on_a_block_boundary() -> None:
    with pytest.raises(PrivacyError, match="multiple of 16"):
        mask_lanes(PINNED_KEY, first_coordinate=8, count=8, dtype=np.uint8)


@settings(max_examples=20, deadline=None)
@given(
    count=st.integers(1, 5000),
    adds=st.integers(0, 3),
    subtracts=st.integers(0, 3),
    block_bytes=st.sampled_from([16, 64, 4096, 1 << 17]),
    wide=st.booleans(),
)
def test_applier_adds_and_subtracts_masks_blockwise(
    count: int, adds: int, subtracts: int, block_bytes: int, wide: bool
) -> None:
    dtype = np.dtype("<u2") if wide else np.dtype(np.uint8)
    add_keys = [os.urandom(16) for _ in range(adds)]
    sub_keys = [os.urandom(16) for _ in range(subtracts)]
    lanes = np.arange(count, dtype=dtype)
    expected = lanes.astype(np.int64)
    for key in add_keys:
        expected += mask_lanes(key, first_coordinate=64, count=count, dtype=dtype)
    for key in sub_keys:
        expected -= mask_lanes(key, first_coordinate=64, count=count, dtype=dtype)
    MaskApplier(dtype, block_bytes=block_bytes).apply(
        lanes, first_coordinate=64, add_keys=add_keys, subtract_keys=sub_keys
    )
    assert np.array_equal(lanes, (expected % (1 << (8 * dtype.itemsize))).astype(dtype))


@settings(max_examples=60, deadline=None)
@given(bit_width=st.integers(1, 16), groups=st.integers(1, 300), data=st.data())
def test_fast_packing_matches_the_reference_and_round_trips(
    bit_width: int, groups: int, data: st.DataObject
) -> None:
    dtype = lane_dtype(bit_width)
    raw = data.draw(st.binary(min_size=groups * 8 * dtype.itemsize, max_size=groups * 8 * dtype.itemsize))
    lanes = np.frombuffer(raw, dtype=dtype).copy()
    packer = BitPacker(bit_width, groups * 8 + data.draw(st.integers(0, 64)))
    packed = packer.pack(lanes)
    assert packed.size == packed_size(lanes.size, bit_width) == groups * bit_width
    assert np.array_equal(packed, pack_reference(lanes, bit_width))
    low = lanes & ((1 << bit_width) - 1)
    assert np.array_equal(packer.unpack(packed), low)
    assert np.array_equal(unpack_reference(packed, bit_width, lanes.size), low)


def test_packer_reuses_scratch_without_leaking_between_calls() -> None:
    packer = BitPacker(5, 1024)
    big = np.full(1024, 31, dtype=np.uint8)
    small = np.zeros(16, dtype=np.uint8)
    packer.pack(big)
    assert not packer.pack(small).any()
    assert not packer.unpack(packer.pack(small)).any()
