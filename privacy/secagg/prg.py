"""The mask PRG: seekable AES-128-CTR keystreams read directly as ring lanes.

A mask key k defines the lane sequence m_k[0], m_k[1], ...: lane j is the little-endian integer formed by
keystream bytes j*w .. j*w+w-1 (w = 1 for uint8 lanes, 2 for uint16), of AES-CTR under k with the
128-bit big-endian counter block starting at 0. Only the low b bits of a lane count (mod 2**b), and they
are uniform because every keystream bit is. Coordinate j's lane sits at counter block j*w // 16, so
a chunk that starts at coordinate c (c*w a multiple of 16) starts its keystream at counter block
c*w/16: it is generated without generating anything before it.

Every mask key is used for one mask of one session only (fresh keys per session), so counter blocks
never repeat under a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.errors import PrivacyError

AES_BLOCK_BYTES = 16
DEFAULT_BLOCK_BYTES = 1 << 17
"""Keystream bytes produced per call: 128 KiB keeps keystream, accumulator and zero input in L2."""


def _encryptor(key: bytes, first_block: int) -> Any:
    return Cipher(algorithms.AES(key), modes.CTR(first_block.to_bytes(AES_BLOCK_BYTES, "big"))).encryptor()


def _first_block(first_coordinate: int, lane_bytes: int) -> int:
    offset = first_coordinate * lane_bytes
    if first_coordinate < 0 or offset % AES_BLOCK_BYTES:
        raise PrivacyError(
            f"a mask segment must start at a multiple of {AES_BLOCK_BYTES // lane_bytes} "
            f"coordinates, got {first_coordinate}"
        )
    return offset // AES_BLOCK_BYTES


def mask_lanes(key: bytes, *, first_coordinate: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Return lanes m_k[first_coordinate : first_coordinate + count] of mask key `key` (reference path)."""
    dtype = np.dtype(dtype)
    block = _first_block(first_coordinate, dtype.itemsize)
    stream = _encryptor(key, block).update(bytes(count * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype).copy()


class MaskApplier:
    """Adds and subtracts many mask streams into a lane array, block by block, with reused buffers.

    The hot loop of both roles: a participant adds its self mask and +/- its pairwise masks to its
    votes; the server subtracts the masks it reconstructed. Work per coordinate is one keystream
    lane and one vector add per mask, nothing per coordinate in Python.
    """

    def __init__(self, dtype: np.dtype, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.dtype = np.dtype(dtype)
        if block_bytes % AES_BLOCK_BYTES:
            raise PrivacyError("block_bytes must be a multiple of 16")
        self._block_lanes = block_bytes // self.dtype.itemsize
        self._zeros = memoryview(bytes(block_bytes))
        self._keystream = bytearray(block_bytes + AES_BLOCK_BYTES - 1)  # update_into needs the slack
        self._keystream_lanes = np.frombuffer(self._keystream, dtype=np.uint8)[:block_bytes].view(self.dtype)

    def apply(
        self,
        lanes: np.ndarray,
        *,
        first_coordinate: int,
        add_keys: Sequence[bytes] = (),
        subtract_keys: Sequence[bytes] = (),
    ) -> np.ndarray:
        """Return `lanes` after adding the masks of `add_keys` and subtracting those of `subtract_keys`.

        `lanes` is modified in place and holds coordinates first_coordinate .. first_coordinate+len-1.
        """
        if lanes.dtype != self.dtype or not lanes.flags.c_contiguous:
            raise PrivacyError("lanes must be a contiguous array of the ring's lane type")
        block = _first_block(first_coordinate, self.dtype.itemsize)
        streams: list[tuple[Any, np.ufunc]] = [(_encryptor(key, block), np.add) for key in add_keys]
        streams += [(_encryptor(key, block), np.subtract) for key in subtract_keys]
        if not streams:
            return lanes
        total = lanes.size
        step = self._block_lanes
        for start in range(0, total, step):
            count = min(step, total - start)
            target = lanes[start : start + count]
            keystream = self._keystream_lanes[:count]
            zeros = self._zeros[: count * self.dtype.itemsize]
            for encryptor, operation in streams:
                encryptor.update_into(zeros, self._keystream)
                operation(target, keystream, out=target)
        return lanes
