"""The server's running sum of masked inputs, packed to b bits a coordinate, and per-upload spools.

The accumulator holds ceil(d/8)*b bytes (about d*b/8): in memory, or in a memory-mapped file when the
caller gives a work directory. Adding a chunk unpacks the accumulator's chunk and the payload into lanes,
adds, and packs back, so memory beyond the accumulator is O(chunk).

A stream that breaks off mid-way must not stay in the sum (its owner is a dropout, and its partial y
would leave its masks in). Every accepted chunk is therefore also appended to a spool for its sender; a
finished stream discards its spool, a broken one is subtracted back out of the accumulator from it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from privacy.secagg.packing import BitPacker
from privacy.secagg.parameters import SessionParameters

logger = logging.getLogger(__name__)


class PackedAccumulator:
    """Sum mod 2^b of every added chunk, stored packed (b bits per coordinate)."""

    def __init__(
        self, parameters: SessionParameters, *, workdir: str | os.PathLike[str] | None = None
    ) -> None:
        self.parameters = parameters
        size = parameters.packed_vector_bytes()
        self._path: Path | None = None
        if workdir is not None:
            handle, name = tempfile.mkstemp(prefix="secagg-accumulator-", suffix=".bin", dir=workdir)
            os.close(handle)
            self._path = Path(name)
            self.packed: np.ndarray = np.memmap(self._path, dtype=np.uint8, mode="w+", shape=(size,))
        else:
            self.packed = np.zeros(size, dtype=np.uint8)
        self._packer = BitPacker(parameters.bit_width, parameters.chunk_coordinates)
        self._lanes = np.empty(parameters.chunk_coordinates, dtype=parameters.lane_dtype)
        self._incoming = np.empty(parameters.chunk_coordinates, dtype=parameters.lane_dtype)

    @property
    def nbytes(self) -> int:
        """Return the accumulator's size in bytes."""
        return int(self.packed.size)

    def chunk_slice(self, chunk_index: int) -> slice:
        """Return the byte range of chunk `chunk_index` inside the packed accumulator."""
        params = self.parameters
        start = chunk_index * params.chunk_coordinates // 8 * params.bit_width
        return slice(start, start + params.packed_chunk_bytes(chunk_index))

    def add(self, chunk_index: int, payload: bytes, *, subtract: bool = False) -> None:
        """Return None after adding (or subtracting) a packed payload to chunk `chunk_index`."""
        region = self.packed[self.chunk_slice(chunk_index)]
        lanes_count = region.size // self.parameters.bit_width * 8
        lanes = self._packer.unpack(region, self._lanes[:lanes_count])
        incoming = self._packer.unpack(np.frombuffer(payload, dtype=np.uint8), self._incoming[:lanes_count])
        (np.subtract if subtract else np.add)(lanes, incoming, out=lanes)
        self._packer.pack(lanes, region)

    def unpacked_chunk(self, chunk_index: int) -> np.ndarray:
        """Return the lanes of chunk `chunk_index` (a reused buffer, padded to a multiple of 8)."""
        region = self.packed[self.chunk_slice(chunk_index)]
        return self._packer.unpack(region, self._lanes[: region.size // self.parameters.bit_width * 8])

    def close(self) -> None:
        """Return None after releasing the accumulator and deleting its file, if any."""
        if self._path is not None:
            del self.packed
            self._path.unlink(missing_ok=True)
            self._path = None
            self.packed = np.zeros(0, dtype=np.uint8)


class UploadSpool:
    """The chunks accepted so far from one in-flight stream, kept to roll the stream back if it breaks."""

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None) -> None:
        self._chunks: list[tuple[int, bytes]] = []
        self._file: IO[bytes] | None = None
        self._index: list[tuple[int, int, int]] = []  # (chunk_index, offset, length) in the file
        self._offset = 0
        if workdir is not None:
            # closed by close(); the spool outlives any single block
            self._file = tempfile.TemporaryFile(prefix="secagg-spool-", dir=workdir)  # noqa: SIM115

    def append(self, chunk_index: int, payload: bytes) -> None:
        """Return None after keeping a copy of an accepted chunk."""
        if self._file is None:
            self._chunks.append((chunk_index, payload))
            return
        self._file.write(payload)
        self._index.append((chunk_index, self._offset, len(payload)))
        self._offset += len(payload)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """Return an iterator over every spooled (chunk_index, payload), in arrival order, one at a time."""
        if self._file is None:
            yield from self._chunks
            return
        self._file.flush()
        for chunk_index, offset, length in self._index:
            self._file.seek(offset)
            yield chunk_index, self._file.read(length)

    def close(self) -> None:
        """Return None after discarding the spool."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None
