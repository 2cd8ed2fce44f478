"""Packing ring elements to exactly b bits per coordinate, and back.

Wire format of a chunk: coordinate i's value v_i (0 <= v_i < 2**b) occupies bits i*b .. i*b+b-1 of the
payload, least significant bit first, bit k of the stream being bit k%8 of byte k//8. A chunk of c
coordinates is padded with zero values to a multiple of 8 coordinates, so every group of 8 coordinates
is exactly b bytes and a payload has ceil(c/8)*b bytes.

Ring arithmetic happens in "lanes": one uint8 per coordinate for b <= 8, one little-endian uint16 for
b <= 16, uint32 for b <= 32 and uint64 for b <= 64 (wide rings for fixed-point sums), where natural
wrap-around is compatible with reduction mod 2**b. Only the low b bits of a lane are meaningful; packing
drops the rest.

For b <= 7 packing is a SWAR compaction on uint64 words (8 lanes per word, three halving stages of
shift/and/or), about 13 vector passes per chunk; b = 8, 16, 32 and 64 (a whole lane) are a copy of the
little-endian lane bytes; any other b from 9 to 57 is written lane position by lane position: lane j of
every group, shifted by (j b) mod 8, is OR-ed as one little-endian 8-byte word into its group's record at
byte (j b) div 8 (eight vector passes, each over words at stride b >= 9 bytes, so a pass never overlaps
itself, and the zero bits above a lane leave its neighbours intact). b = 58 to 63, where a shifted lane
can need 9 bytes, uses numpy's bit (un)packing, which is also the reference implementation the tests
compare the fast paths against.
"""

from __future__ import annotations

import numpy as np

from privacy.errors import PrivacyError
from privacy.secagg.parameters import ring_lane_dtype

_U64 = np.dtype("<u8")
_STRIDED_MAX_BITS = 57
"""Widest b whose lanes, shifted by up to 7 bits, still fit one 8-byte word."""


def lane_dtype(bit_width: int) -> np.dtype:
    """Return the lane type for ring Z_(2^b): uint8 up to b = 8, then little-endian uint16, uint32, uint64."""
    return ring_lane_dtype(bit_width)


def packed_size(coordinates: int, bit_width: int) -> int:
    """Return the payload bytes for `coordinates` values: b bytes per started group of 8."""
    return -(-coordinates // 8) * bit_width


def pack_reference(lanes: np.ndarray, bit_width: int) -> np.ndarray:
    """Return the packed bytes of `lanes` (length a multiple of 8) via numpy.packbits."""
    if lanes.size % 8:
        raise PrivacyError("lane count must be a multiple of 8")
    lane_bytes = lanes.dtype.itemsize
    bits = np.unpackbits(
        np.ascontiguousarray(lanes).view(np.uint8).reshape(-1, lane_bytes), axis=1, bitorder="little"
    )
    return np.packbits(bits[:, :bit_width].reshape(-1), bitorder="little")


def unpack_reference(
    packed: np.ndarray, bit_width: int, coordinates: int, dtype: np.dtype | None = None
) -> np.ndarray:
    """Return `coordinates` lanes (multiple of 8) unpacked from `packed` via numpy.unpackbits."""
    dtype = np.dtype(dtype) if dtype is not None else lane_dtype(bit_width)
    if coordinates % 8 or packed.size != coordinates * bit_width // 8:
        raise PrivacyError("packed size does not match the coordinate count")
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little").reshape(
        coordinates, bit_width
    )
    full = np.zeros((coordinates, 8 * dtype.itemsize), dtype=np.uint8)
    full[:, :bit_width] = bits
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view(dtype)


def _replicated(pattern: int, unit_bits: int) -> np.uint64:
    return np.uint64(sum(pattern << (unit_bits * k) for k in range(64 // unit_bits)))


class BitPacker:
    """Packs and unpacks chunks of up to `max_coordinates` lanes with preallocated scratch space.

    Not thread-safe: one packer per thread. Inputs and outputs are numpy arrays; nothing is logged.
    """

    def __init__(self, bit_width: int, max_coordinates: int) -> None:
        self.bit_width = bit_width
        self.dtype = lane_dtype(bit_width)
        groups = -(-max_coordinates // 8)
        self._capacity_groups = groups
        self._whole_lanes = bit_width == 8 * self.dtype.itemsize
        self._swar = bit_width <= 7
        self._strided = not self._whole_lanes and 8 < bit_width <= _STRIDED_MAX_BITS
        if self._strided:
            self._lanes64 = np.empty(groups * 8, dtype=_U64)
            self._word = np.empty(groups, dtype=_U64)
            self._strided_scratch = np.zeros(groups * bit_width + 8, dtype=np.uint8)
        if self._swar:
            b = bit_width
            self._low_bits = _replicated((1 << b) - 1, 8)
            # per halving stage: (shift, mask kept in place, upper field after pack, after unpack)
            self._stages = []
            for unit, width in ((16, b), (32, 2 * b), (64, 4 * b)):
                half = unit // 2
                self._stages.append(
                    (
                        np.uint64(half - width),
                        _replicated((1 << width) - 1, unit),
                        _replicated(((1 << width) - 1) << width, unit),
                        _replicated(((1 << width) - 1) << half, unit),
                    )
                )
            self._work = np.zeros(groups, dtype=_U64)
            self._tmp = np.empty(groups, dtype=_U64)
            # byte buffers with 8 bytes of slack so that 8-byte words can be stored/loaded at stride b
            self._packed_scratch = np.zeros(groups * b + 8, dtype=np.uint8)
            self._interleave = -(-8 // b)  # passes whose 8-byte stores at stride k*b never overlap

    def _check_capacity(self, groups: int) -> None:
        if groups > self._capacity_groups:
            raise PrivacyError(f"{groups * 8} coordinates exceed this packer's {self._capacity_groups * 8}")

    def pack(self, lanes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return the b-bit packed payload of `lanes` (lane dtype, length a multiple of 8)."""
        count = lanes.size
        if count % 8 or lanes.dtype != self.dtype:
            raise PrivacyError("pack needs lanes of the ring's lane type, a multiple of 8 long")
        groups = count // 8
        b = self.bit_width
        self._check_capacity(groups)
        if out is None:
            out = np.empty(groups * b, dtype=np.uint8)
        if self._whole_lanes:
            np.copyto(out, np.ascontiguousarray(lanes).view(np.uint8))
            return out
        if self._strided:
            return self._pack_strided(lanes, groups, out)
        if not self._swar:
            np.copyto(out, pack_reference(lanes, b))
            return out
        work, tmp = self._work[:groups], self._tmp[:groups]
        np.bitwise_and(lanes.view(_U64), self._low_bits, out=work)
        for shift, keep, upper, _ in self._stages:
            np.right_shift(work, shift, out=tmp)
            np.bitwise_and(tmp, upper, out=tmp)
            np.bitwise_and(work, keep, out=work)
            np.bitwise_or(work, tmp, out=work)
        # Word g's low b bytes go to bytes g*b .. g*b+b-1. OR-ing whole words into a zeroed buffer in
        # k interleaved passes keeps every pass free of overlapping stores (k*b >= 8), and the zero
        # high bytes of a word leave its neighbours intact whatever the order.
        scratch = self._packed_scratch
        scratch[: groups * b + 8] = 0
        k = self._interleave
        for phase in range(min(k, groups)):
            count = len(range(phase, groups, k))
            words = np.ndarray(shape=(count,), dtype=_U64, buffer=scratch, offset=phase * b, strides=(k * b,))
            np.bitwise_or(words, work[phase::k], out=words)
        np.copyto(out, scratch[: groups * b])
        return out

    def unpack(self, packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return the lanes encoded by `packed` (b bytes per group of 8 coordinates)."""
        b = self.bit_width
        if packed.size % b:
            raise PrivacyError("packed payload is not a whole number of 8-coordinate groups")
        groups = packed.size // b
        self._check_capacity(groups)
        if out is None:
            out = np.empty(groups * 8, dtype=self.dtype)
        if self._whole_lanes:
            np.copyto(out, np.asarray(packed, dtype=np.uint8).view(self.dtype))
            return out
        if self._strided:
            return self._unpack_strided(packed, groups, out)
        if not self._swar:
            np.copyto(out, unpack_reference(packed, b, groups * 8, self.dtype))
            return out
        tmp, staging = self._tmp[:groups], self._work[:groups]
        scratch = self._packed_scratch
        scratch[: groups * b] = packed
        words = np.ndarray(shape=(groups,), dtype=_U64, buffer=scratch, offset=0, strides=(b,))
        np.bitwise_and(words, np.uint64((1 << (8 * b)) - 1), out=staging)
        work = out.view(_U64)
        source = staging
        for shift, keep, _, upper in reversed(self._stages):
            np.left_shift(source, shift, out=tmp)
            np.bitwise_and(tmp, upper, out=tmp)
            np.bitwise_and(source, keep, out=work)
            np.bitwise_or(work, tmp, out=work)
            source = work
        return out

    def _words(self, groups: int, position: int) -> tuple[np.ndarray, np.uint64]:
        """Return the 8-byte words (one per group) holding lane ``position``, and the lane's bit shift."""
        b = self.bit_width
        start, shift = divmod(position * b, 8)
        words = np.ndarray(
            shape=(groups,), dtype=_U64, buffer=self._strided_scratch, offset=start, strides=(b,)
        )
        return words, np.uint64(shift)

    def _pack_strided(self, lanes: np.ndarray, groups: int, out: np.ndarray) -> np.ndarray:
        b = self.bit_width
        lanes64 = self._lanes64[: groups * 8]
        np.copyto(lanes64, lanes, casting="safe")
        np.bitwise_and(lanes64, np.uint64((1 << b) - 1), out=lanes64)
        by_position = lanes64.reshape(groups, 8)
        scratch = self._strided_scratch
        scratch[: groups * b + 8] = 0
        word = self._word[:groups]
        for position in range(8):
            words, shift = self._words(groups, position)
            np.left_shift(by_position[:, position], shift, out=word)
            np.bitwise_or(words, word, out=words)
        np.copyto(out, scratch[: groups * b])
        return out

    def _unpack_strided(self, packed: np.ndarray, groups: int, out: np.ndarray) -> np.ndarray:
        b = self.bit_width
        self._strided_scratch[: groups * b] = packed
        self._strided_scratch[groups * b : groups * b + 8] = 0
        by_position = out.reshape(groups, 8)
        word = self._word[:groups]
        low = np.uint64((1 << b) - 1)
        for position in range(8):
            words, shift = self._words(groups, position)
            np.right_shift(words, shift, out=word)
            np.bitwise_and(word, low, out=word)
            np.copyto(by_position[:, position], word, casting="unsafe")
        return out
