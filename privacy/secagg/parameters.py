"""Public parameters of one secure-aggregation session and their canonical digest."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

from privacy.errors import PrivacyError

PROTOCOL_VERSION = 1
"""Bound into every key derivation, signature and digest; bump on any wire or derivation change."""

DEFAULT_CHUNK_COORDINATES = 1 << 20
"""One MaskedInput chunk: 1 Mi coordinates, i.e. b/8 MiB on the wire (640 KiB at n = 16)."""

MAX_PARTICIPANT_ID = (1 << 32) - 1
MAX_BIT_WIDTH = 16


def default_threshold(participants: int) -> int:
    """Return the default Shamir threshold floor(2n/3) + 1 (1 for a lone participant).

    Two thirds plus one keeps a majority of honest survivors able to unmask while tolerating up to
    about a third of dropouts, and is the usual choice for Bonawitz et al.'s protocol.
    """
    if participants < 1:
        raise PrivacyError(f"participants must be >= 1, got {participants}")
    return (2 * participants) // 3 + 1 if participants > 1 else 1


def ring_bit_width(participants: int, max_input: int = 1) -> int:
    """Return b = ceil(log2(n * max_input + 1)), the bits that hold any sum of n inputs in [0, max_input]."""
    return (participants * max_input).bit_length()


@dataclass(frozen=True)
class SessionParameters:
    """Everything public that both sides must agree on before keys are advertised.

    `participant_ids` are the Shamir evaluation points, so they are distinct integers in
    [1, 2**32 - 1]; the in-process driver uses 1..n. `max_input` bounds one participant's value per
    coordinate (1 for keep-votes). `context` is an opaque label from the caller (run id, layer) that is
    bound into the session id so that two sessions with the same keys could never be confused.
    """

    participant_ids: tuple[int, ...]
    threshold: int
    dimension: int
    chunk_coordinates: int = DEFAULT_CHUNK_COORDINATES
    max_input: int = 1
    context: bytes = b""
    protocol_version: int = field(default=PROTOCOL_VERSION)

    def __post_init__(self) -> None:
        ids = self.participant_ids
        if not ids:
            raise PrivacyError("participant_ids must not be empty")
        if tuple(sorted(set(ids))) != tuple(ids):
            raise PrivacyError("participant_ids must be strictly increasing (sorted, no duplicates)")
        if ids[0] < 1 or ids[-1] > MAX_PARTICIPANT_ID:
            raise PrivacyError(f"participant_ids must lie in [1, {MAX_PARTICIPANT_ID}]")
        n = len(ids)
        if not 1 <= self.threshold <= n:
            raise PrivacyError(f"threshold must be in [1, {n}], got {self.threshold}")
        if n >= 2 and self.threshold < 2:
            raise PrivacyError("threshold must be >= 2 with two or more participants (t = 1 hands every "
                               "peer each participant's secrets)")
        if self.dimension < 1:
            raise PrivacyError(f"dimension must be >= 1, got {self.dimension}")
        if self.chunk_coordinates < 64 or self.chunk_coordinates % 64:
            raise PrivacyError(f"chunk_coordinates must be a positive multiple of 64, got {self.chunk_coordinates}")
        if self.max_input < 1:
            raise PrivacyError(f"max_input must be >= 1, got {self.max_input}")
        if self.bit_width > MAX_BIT_WIDTH:
            raise PrivacyError(f"ring bit width {self.bit_width} exceeds {MAX_BIT_WIDTH}: too many "
                               "participants or too large max_input")
        if self.protocol_version != PROTOCOL_VERSION:
            raise PrivacyError(f"unsupported protocol_version {self.protocol_version}")

    @property
    def participants(self) -> int:
        """Return n, the number of invited participants."""
        return len(self.participant_ids)

    @property
    def bit_width(self) -> int:
        """Return b, the ring Z_(2^b) bit width."""
        return ring_bit_width(self.participants, self.max_input)

    @property
    def lane_dtype(self) -> np.dtype:
        """Return the numpy lane type used for ring arithmetic (uint8 for b <= 8, else uint16)."""
        return np.dtype(np.uint8) if self.bit_width <= 8 else np.dtype("<u2")

    @property
    def chunk_count(self) -> int:
        """Return the number of MaskedInput chunks a full vector takes."""
        return -(-self.dimension // self.chunk_coordinates)

    def chunk_length(self, chunk_index: int) -> int:
        """Return the number of coordinates in chunk `chunk_index` (the last one may be short)."""
        if not 0 <= chunk_index < self.chunk_count:
            raise PrivacyError(f"chunk_index {chunk_index} out of range [0, {self.chunk_count})")
        start = chunk_index * self.chunk_coordinates
        return min(self.chunk_coordinates, self.dimension - start)

    def packed_chunk_bytes(self, chunk_index: int) -> int:
        """Return the payload size of chunk `chunk_index`: b bytes per started group of 8 coordinates."""
        return -(-self.chunk_length(chunk_index) // 8) * self.bit_width

    def packed_vector_bytes(self) -> int:
        """Return the packed size of a whole vector, ceil(d/8)*b bytes (about d*b/8)."""
        return -(-self.dimension // 8) * self.bit_width

    def digest(self) -> bytes:
        """Return SHA-256 over a canonical, unambiguous encoding of the parameters (computed once)."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = self._compute_digest()
            object.__setattr__(self, "_digest", cached)
        return cached

    def _compute_digest(self) -> bytes:
        h = hashlib.sha256(b"fedprune/secagg/parameters")
        h.update(struct.pack(">HI", self.protocol_version, len(self.participant_ids)))
        h.update(b"".join(struct.pack(">I", pid) for pid in self.participant_ids))
        h.update(struct.pack(">IQIIQ", self.threshold, self.dimension, self.chunk_coordinates,
                             self.max_input, len(self.context)))
        h.update(self.context)
        return h.digest()
