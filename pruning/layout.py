"""The vote vector's explicit layout, and the fingerprint of a model's base weights.

Secure aggregation sums flat vectors, so both roles must put every weight's vote at the same coordinate.
``VoteLayout`` makes that order explicit instead of leaving it to dict order: an ordered list of
(qualified matrix name, ``[out, in]`` shape), blocks ascending, sublayers sorted by name within a block.
Both roles compute its SHA-256 fingerprint and compare it, so two layouts that differ in any name, shape
or position are detected before a single vote is sent.

``base_model_fingerprint`` is what a participant's Join carries: SHA-256 over every tensor of the state
dict (sorted names, dtype, shape, raw bytes), so a participant with other weights (another checkpoint,
another dtype) is refused instead of voting on a different model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from pruning.adapters import decoder_blocks, linear_sublayers, qualified_name
from pruning.errors import PruningInputError

LAYOUT_VERSION = 1
"""Bound into the fingerprint; bump when the canonical encoding or the order rule changes."""
_LAYOUT_LABEL = b"fedprune/vote-layout/v%d" % LAYOUT_VERSION
_WEIGHTS_LABEL = b"fedprune/base-weights/v1"
_HASH_SLICE_BYTES = 64 << 20  # hash big tensors in slices: no full copy of a multi-GB matrix


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One matrix of the layout: its qualified name, ``[out, in]`` shape and first coordinate."""

    name: str
    shape: tuple[int, int]
    offset: int

    @property
    def size(self) -> int:
        """Return the number of coordinates the matrix takes."""
        return self.shape[0] * self.shape[1]

    @property
    def coordinates(self) -> slice:
        """Return the matrix's slice of the flat vector."""
        return slice(self.offset, self.offset + self.size)


class VoteLayout:
    """An ordered list of (name, ``[out, in]`` shape); flattens per-matrix tensors to one vector and back."""

    def __init__(self, matrices: tuple[tuple[str, tuple[int, int]], ...]) -> None:
        if not matrices:
            raise PruningInputError("a vote layout needs at least one matrix")
        entries: list[LayoutEntry] = []
        offset = 0
        seen: set[str] = set()
        for name, shape in matrices:
            if name in seen:
                raise PruningInputError(f"vote layout lists {name} twice")
            if len(shape) != 2 or min(shape) < 1:
                raise PruningInputError(
                    f"{name}: shape must be [out, in] with positive sizes, got {list(shape)}"
                )
            seen.add(name)
            entries.append(LayoutEntry(name=name, shape=(int(shape[0]), int(shape[1])), offset=offset))
            offset += entries[-1].size
        self.entries: tuple[LayoutEntry, ...] = tuple(entries)
        self.dimension = offset
        self._by_name = {entry.name: entry for entry in entries}

    # ------------------------------------------------------------ construction
    @classmethod
    def for_block(cls, model: nn.Module, block_index: int) -> VoteLayout:
        """Return the layout of one decoder block's prunable matrices (names qualified by the block)."""
        blocks = decoder_blocks(model)
        if not 0 <= block_index < len(blocks):
            raise PruningInputError(f"block_index {block_index} out of range [0, {len(blocks)})")
        return cls(tuple(_block_matrices(block_index, blocks[block_index])))

    @classmethod
    def for_model(cls, model: nn.Module) -> VoteLayout:
        """Return the layout of every prunable matrix of the model, block after block."""
        return cls(
            tuple(
                matrix
                for index, block in enumerate(decoder_blocks(model))
                for matrix in _block_matrices(index, block)
            )
        )

    # ------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        """Return the matrix names in layout order."""
        return tuple(entry.name for entry in self.entries)

    def __getitem__(self, name: str) -> LayoutEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{name} is not in the vote layout") from None

    def __iter__(self) -> Iterator[LayoutEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VoteLayout) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"VoteLayout({len(self.entries)} matrices, {self.dimension} coordinates, {self.fingerprint().hex()[:16]})"

    def fingerprint(self) -> bytes:
        """Return SHA-256 over the canonical encoding: version, count, then each name and shape in order."""
        digest = hashlib.sha256(_LAYOUT_LABEL)
        digest.update(struct.pack(">I", len(self.entries)))
        for entry in self.entries:
            encoded = entry.name.encode("utf-8")
            # Length-prefixed names: no two different lists of names encode to the same bytes.
            digest.update(struct.pack(">I", len(encoded)) + encoded + struct.pack(">QQ", *entry.shape))
        return digest.digest()

    def check_fingerprint(self, expected: bytes, *, what: str = "vote layout") -> None:
        """Return None if ``expected`` is this layout's fingerprint; raise naming both otherwise."""
        actual = self.fingerprint()
        if actual != expected:
            raise PruningInputError(
                f"{what} fingerprint {actual.hex()} differs from the expected {expected.hex()}: "
                "the two sides do not prune the same matrices in the same order"
            )

    # ------------------------------------------------------------ flat vectors
    def flatten(
        self, tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Return one 1-D CPU tensor holding every matrix's values in layout order.

        ``tensors`` must hold exactly the layout's names with exactly its shapes; anything else raises,
        so a vote can never land on another weight's coordinate.
        """
        missing = [name for name in self.names if name not in tensors]
        extra = sorted(set(tensors) - set(self._by_name))
        if missing or extra:
            raise PruningInputError(
                f"tensors do not match the vote layout: missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        first = tensors[self.entries[0].name]
        out = torch.empty(self.dimension, dtype=dtype or first.dtype)
        for entry in self.entries:
            tensor = tensors[entry.name]
            if tuple(tensor.shape) != entry.shape:
                raise PruningInputError(
                    f"{entry.name}: shape {list(tensor.shape)} does not match the layout's {list(entry.shape)}"
                )
            out[entry.coordinates] = tensor.detach().reshape(-1).to(device="cpu", dtype=out.dtype)
        return out

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return each matrix as an ``[out, in]`` view of ``vector`` (no copy), in layout order."""
        if vector.ndim != 1 or vector.numel() != self.dimension:
            raise PruningInputError(
                f"vector of shape {list(vector.shape)} does not fit the layout's {self.dimension} coordinates"
            )
        return {entry.name: vector[entry.coordinates].view(entry.shape) for entry in self.entries}


def _block_matrices(block_index: int, block: nn.Module) -> Iterator[tuple[str, tuple[int, int]]]:
    # Sorted by name, not module order: the order then depends only on names and shapes, which the
    # fingerprint covers, never on how a transformers version happens to register submodules.
    sublayers = linear_sublayers(block)
    for name in sorted(sublayers):
        sublayer = sublayers[name]
        yield qualified_name(block_index, name), (sublayer.out_features, sublayer.in_features)


def base_model_fingerprint(model: nn.Module) -> bytes:
    """Return SHA-256 over every state-dict tensor: sorted names, then each one's dtype, shape and bytes.

    Raw bytes are the in-memory (little-endian) representation, so the same weights in another dtype
    give another fingerprint: the participant must prune exactly the coordinator's model.
    """
    digest = hashlib.sha256(_WEIGHTS_LABEL)
    state = model.state_dict()
    digest.update(struct.pack(">I", len(state)))
    for name in sorted(state):
        tensor = state[name].detach()
        encoded_name = name.encode("utf-8")
        dtype = str(tensor.dtype).encode("ascii")
        digest.update(struct.pack(">I", len(encoded_name)) + encoded_name)
        digest.update(struct.pack(">I", len(dtype)) + dtype)
        digest.update(
            struct.pack(">I", tensor.ndim) + b"".join(struct.pack(">Q", size) for size in tensor.shape)
        )
        flat = tensor.to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        digest.update(struct.pack(">Q", raw.numel()))
        for start in range(0, raw.numel(), _HASH_SLICE_BYTES):
            digest.update(raw[start : start + _HASH_SLICE_BYTES].numpy().data)
    return digest.digest()
