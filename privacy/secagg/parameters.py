"""Public parameters of one secure-aggregation session, the session context and the threshold rule."""

from __future__ import annotations

import hashlib
import logging
import secrets
import struct
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field

import numpy as np

from privacy.errors import PrivacyError

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 3
"""Bound into every key derivation, signature and digest; bump on any wire or derivation change.

2: mandatory session context, colluders and ring headroom in the parameter digest, self-seed and share
commitments at ShareKeys, the consistency round (signed survivor set) before unmasking.
3: the session context binds the participants' view of what the coordinator published before the session
(:func:`published_view`).
"""

DEFAULT_CHUNK_COORDINATES = 1 << 20
"""One MaskedInput chunk: 1 Mi coordinates, i.e. b/8 MiB on the wire (768 KiB at n = 16)."""

MAX_PARTICIPANT_ID = (1 << 32) - 1
MAX_BIT_WIDTH = 16
"""The widest ring a session accepts unless it asks for more (`SessionParameters.max_bit_width`): keep-vote
counts of up to 2**15 - 1 participants with headroom, in uint16 lanes."""
WIDE_MAX_BIT_WIDTH = 64
"""The widest ring the library implements (uint64 lanes): fixed-point sums, e.g. averaged weights."""
MAX_INPUT = (1 << 32) - 1
"""The largest `max_input`: it travels as a uint32 (wire and parameter digest)."""
NONCE_BYTES = 32
MAX_RUN_ID_BYTES = 256
_CONTEXT_LABEL = b"fedprune/secagg/context"
_VIEW_LABEL = b"fedprune/secagg/published-view"
VIEW_BYTES = 32


def minimum_threshold(participants: int, *, colluders: int = 0) -> int:
    """Return the smallest safe t: floor((n + c) / 2) + 1, i.e. t > (n + c) / 2 (1 for a lone participant).

    Against a coordinator that lies about who survived, an honest participant reveals one kind of share
    per peer; the coordinator needs t shares of each kind for one target, the c colluders give both, so
    it needs 2t - 2c <= n - c honest answers. t > (n + c)/2 makes that impossible (and lets two signed
    survivor sets share no honest signer, see the consistency round).
    """
    if participants < 1:
        raise PrivacyError(f"participants must be >= 1, got {participants}")
    if colluders < 0:
        raise PrivacyError(f"colluders must be >= 0, got {colluders}")
    if participants == 1:
        return 1
    return max(2, (participants + colluders) // 2 + 1)


def default_threshold(participants: int, *, colluders: int = 0) -> int:
    """Return the default Shamir threshold: max(floor(2n/3) + 1, the safe minimum for `colluders`).

    Two thirds plus one tolerates about a third of dropouts and, with no more than n/3 colluders, meets
    t > (n + c)/2 (Bonawitz et al.'s choice for the actively secure variant). A lone participant gets 1.
    """
    if participants < 1:
        raise PrivacyError(f"participants must be >= 1, got {participants}")
    if participants == 1:
        return 1
    return max((2 * participants) // 3 + 1, minimum_threshold(participants, colluders=colluders))


def tolerated_colluders(participants: int, threshold: int) -> int:
    """Return the most colluders c that threshold t tolerates among n: c < t and t > (n + c) / 2."""
    return max(0, min(threshold - 1, 2 * threshold - participants - 1))


def check_threshold(
    threshold: int, *, participants: int, colluders: int = 0, allow_unsafe_threshold: bool = False
) -> int:
    """Return `threshold` if it is an int in [minimum_threshold, n]; raises PrivacyError naming it otherwise.

    Callers that build settings (pydantic validators) call this so a bad threshold fails before anything
    runs. `allow_unsafe_threshold` (tests and attack demonstrations only) lowers the floor to 2.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise PrivacyError(f"threshold must be an integer, got {threshold!r}")
    if participants < 1:
        raise PrivacyError(f"participants must be >= 1, got {participants}")
    if colluders < 0 or (participants > 1 and colluders >= participants):
        raise PrivacyError(f"colluders must be in [0, {max(participants - 1, 0)}], got {colluders}")
    if not 1 <= threshold <= participants:
        raise PrivacyError(f"threshold must be in [1, {participants}], got {threshold}")
    if participants >= 2 and threshold < 2:
        raise PrivacyError(
            "threshold must be >= 2 with two or more participants (t = 1 hands every "
            "peer each participant's secrets)"
        )
    floor = minimum_threshold(participants, colluders=colluders)
    if threshold < floor and not allow_unsafe_threshold:
        raise PrivacyError(
            f"threshold must be > (participants + colluders) / 2, i.e. >= {floor} for {participants} "
            f"participants and {colluders} colluders, got {threshold}: a coordinator that lies about who "
            "survived could unmask a participant"
        )
    return threshold


def resolve_threshold(threshold: int | None, *, participants: int, colluders: int = 0) -> int:
    """Return `threshold` checked by `check_threshold`, or the default when it is None (never when 0)."""
    if threshold is None:
        return default_threshold(participants, colluders=colluders)
    return check_threshold(threshold, participants=participants, colluders=colluders)


def ring_bit_width(participants: int, max_input: int = 1, *, headroom: bool = True) -> int:
    """Return b, the ring Z_(2^b) bit width for sums of n inputs in [0, max_input].

    Without headroom b = ceil(log2(n * max_input + 1)), just enough for every honest sum. With headroom
    (the default) b = ceil(log2(2 * n * max_input + 1)), one bit more, so that 2^b > 2 * n * max_input:
    a participant that subtracts more than the honest contributors put into a coordinate wraps around
    to a value above n * max_input, where the server's range check sees it (docs/SECURE_AGGREGATION.md,
    "What one cheating participant can do to a count").
    """
    top = participants * max_input
    return (2 * top if headroom else top).bit_length()


def ring_lane_dtype(bit_width: int) -> np.dtype:
    """Return the lane type of ring Z_(2^b): little-endian uint8, uint16, uint32 or uint64, the narrowest that fits.

    Natural wrap-around of the lane type is compatible with reduction mod 2**b because b <= lane bits.
    """
    if not 1 <= bit_width <= WIDE_MAX_BIT_WIDTH:
        raise PrivacyError(f"bit width must be in [1, {WIDE_MAX_BIT_WIDTH}], got {bit_width}")
    for bits, name in ((8, "u1"), (16, "<u2"), (32, "<u4")):
        if bit_width <= bits:
            return np.dtype(name)
    return np.dtype("<u8")


def published_view(
    *, allocation: Sequence[float] | None = None, blocks: Sequence[tuple[bytes, bytes | None]] = ()
) -> bytes:
    """Return the digest of what the coordinator published before a session, as a session context binds it.

    ``allocation``: an OWL run's per-block sparsities (None without OWL); ``blocks``: for each block before
    the session's, in order, the SHA-256 of its global mask (bit-packed, as served) and of its published
    weights (None where the run publishes none). The coordinator puts its own view in each session's
    context; every participant computes its view from what it fetched and checked, and refuses a context
    with another one. Participants that were shown different masks, weights or allocations therefore hold
    different session parameters, whose digests their key advertisements sign and whose session ids key
    their share envelopes: no session can sum their inputs together.
    """
    digest = hashlib.sha256(_VIEW_LABEL)
    if allocation is None:
        digest.update(b"\x00")
    else:
        values = [float(v) for v in allocation]
        digest.update(b"\x01" + struct.pack(f">I{len(values)}d", len(values), *values))
    digest.update(struct.pack(">I", len(blocks)))
    for index, (mask, weights) in enumerate(blocks):
        if len(mask) != VIEW_BYTES or (weights is not None and len(weights) != VIEW_BYTES):
            raise PrivacyError(f"block {index}'s digests must be {VIEW_BYTES} bytes each")
        digest.update(mask + (b"\x00" if weights is None else b"\x01" + weights))
    return digest.digest()


NOTHING_PUBLISHED = published_view()
"""The view of a session before which nothing was published (the first block, an OWL allocation session)."""


@dataclass(frozen=True)
class SessionContext:
    """What makes one session unique: run id, round, block and a fresh random nonce from the coordinator,
    and the view (:func:`published_view`) of what the coordinator published before it.

    Bound into the parameter digest, hence into every advertisement's signature and the session id, so
    a key advertisement signed for one session is useless in any other, even of the same run and block.
    """

    run_id: str
    round: int
    block: int
    nonce: bytes
    published: bytes = NOTHING_PUBLISHED

    def __post_init__(self) -> None:
        encoded = self.run_id.encode("utf-8")
        if not encoded or len(encoded) > MAX_RUN_ID_BYTES:
            raise PrivacyError(f"run_id must be 1 to {MAX_RUN_ID_BYTES} UTF-8 bytes")
        if not 0 <= self.round < 1 << 32:
            raise PrivacyError(f"round must be in [0, 2**32), got {self.round}")
        if not 0 <= self.block < 1 << 32:
            raise PrivacyError(f"block must be in [0, 2**32), got {self.block}")
        if len(self.nonce) != NONCE_BYTES:
            raise PrivacyError(f"nonce must be {NONCE_BYTES} bytes, got {len(self.nonce)}")
        if len(self.published) != VIEW_BYTES:
            raise PrivacyError(f"published view must be {VIEW_BYTES} bytes, got {len(self.published)}")

    @classmethod
    def fresh(
        cls, *, run_id: str, round: int, block: int, published: bytes = NOTHING_PUBLISHED
    ) -> SessionContext:
        """Return a context with a new 256-bit nonce from the OS CSPRNG (what a coordinator calls)."""
        return cls(
            run_id=run_id,
            round=round,
            block=block,
            nonce=secrets.token_bytes(NONCE_BYTES),
            published=published,
        )

    def encode(self) -> bytes:
        """Return the canonical bytes of the context (what travels in `SessionParameters.context`)."""
        run_id = self.run_id.encode("utf-8")
        return (
            _CONTEXT_LABEL
            + struct.pack(">H", len(run_id))
            + run_id
            + struct.pack(">II", self.round, self.block)
            + self.nonce
            + self.published
        )

    @classmethod
    def decode(cls, data: bytes) -> SessionContext:
        """Return the context encoded in `data`; raises PrivacyError unless it is exactly one encoding."""
        label = len(_CONTEXT_LABEL)
        if len(data) < label + 2 or not data.startswith(_CONTEXT_LABEL):
            raise PrivacyError(
                "context is not an encoded SessionContext (use SessionContext.fresh().encode())"
            )
        (length,) = struct.unpack(">H", data[label : label + 2])
        start = label + 2
        if len(data) != start + length + 8 + NONCE_BYTES + VIEW_BYTES:
            raise PrivacyError("context has the wrong length for an encoded SessionContext")
        try:
            run_id = data[start : start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PrivacyError("context's run_id is not UTF-8") from exc
        round_index, block = struct.unpack(">II", data[start + length : start + length + 8])
        nonce_at = start + length + 8
        return cls(
            run_id=run_id,
            round=round_index,
            block=block,
            nonce=data[nonce_at : nonce_at + NONCE_BYTES],
            published=data[nonce_at + NONCE_BYTES :],
        )


@dataclass(frozen=True, kw_only=True)
class SessionParameters:
    """Everything public that both sides must agree on before keys are advertised.

    `participant_ids` are the Shamir evaluation points, so they are distinct integers in
    [1, 2**32 - 1]; the in-process driver uses 1..n. `max_input` bounds one participant's value per
    coordinate (1 for keep-votes). `context` is mandatory: the encoding of a `SessionContext` (run, round,
    block, fresh coordinator nonce), bound into the session id so that no two sessions share a parameter
    digest. `colluders` is the number c of participants assumed to collude with the coordinator; the
    threshold must satisfy t > (n + c)/2 unless `allow_unsafe_threshold` (tests only) is set.
    `ring_headroom` adds the bit that makes every underflow visible to the range check.
    `max_bit_width` (an init-only value, not a field) is this party's acceptance limit, not a protocol
    parameter, so it is neither on the wire nor in the digest: b itself follows from
    the digested n, `max_input` and `ring_headroom`, so two parties that accept a session agree on b.
    It defaults to `MAX_BIT_WIDTH` (16, keep-vote counts); a session that sums wider values (fixed-point
    weights) raises it, up to `WIDE_MAX_BIT_WIDTH`, on both sides.
    """

    participant_ids: tuple[int, ...]
    threshold: int
    dimension: int
    context: bytes
    chunk_coordinates: int = DEFAULT_CHUNK_COORDINATES
    max_input: int = 1
    colluders: int = 0
    ring_headroom: bool = True
    allow_unsafe_threshold: bool = False
    protocol_version: int = field(default=PROTOCOL_VERSION)
    max_bit_width: InitVar[int] = MAX_BIT_WIDTH

    def __post_init__(self, max_bit_width: int) -> None:
        ids = self.participant_ids
        if not ids:
            raise PrivacyError("participant_ids must not be empty")
        if tuple(sorted(set(ids))) != tuple(ids):
            raise PrivacyError("participant_ids must be strictly increasing (sorted, no duplicates)")
        if ids[0] < 1 or ids[-1] > MAX_PARTICIPANT_ID:
            raise PrivacyError(f"participant_ids must lie in [1, {MAX_PARTICIPANT_ID}]")
        check_threshold(
            self.threshold,
            participants=len(ids),
            colluders=self.colluders,
            allow_unsafe_threshold=self.allow_unsafe_threshold,
        )
        if self.allow_unsafe_threshold and self.threshold < minimum_threshold(
            len(ids), colluders=self.colluders
        ):
            logger.warning(
                "UNSAFE secure-aggregation threshold %d of %d: a lying coordinator can unmask "
                "participants; tests and attack demonstrations only",
                self.threshold,
                len(ids),
            )
        if not isinstance(self.context, bytes):
            raise PrivacyError("context must be bytes: SessionContext.fresh(...).encode()")
        SessionContext.decode(self.context)
        if self.dimension < 1:
            raise PrivacyError(f"dimension must be >= 1, got {self.dimension}")
        if self.chunk_coordinates < 64 or self.chunk_coordinates % 64:
            raise PrivacyError(
                f"chunk_coordinates must be a positive multiple of 64, got {self.chunk_coordinates}"
            )
        if not 1 <= self.max_input <= MAX_INPUT:
            raise PrivacyError(f"max_input must be in [1, {MAX_INPUT}], got {self.max_input}")
        if not 1 <= max_bit_width <= WIDE_MAX_BIT_WIDTH:
            raise PrivacyError(f"max_bit_width must be in [1, {WIDE_MAX_BIT_WIDTH}], got {max_bit_width}")
        if self.bit_width > max_bit_width:
            raise PrivacyError(
                f"ring bit width {self.bit_width} exceeds {max_bit_width}: too many "
                "participants or too large max_input (raise max_bit_width, at most "
                f"{WIDE_MAX_BIT_WIDTH}, for a wide ring)"
            )
        if self.protocol_version != PROTOCOL_VERSION:
            raise PrivacyError(f"unsupported protocol_version {self.protocol_version}")

    @property
    def participants(self) -> int:
        """Return n, the number of invited participants."""
        return len(self.participant_ids)

    @property
    def session_context(self) -> SessionContext:
        """Return the decoded session context."""
        return SessionContext.decode(self.context)

    @property
    def bit_width(self) -> int:
        """Return b, the ring Z_(2^b) bit width."""
        return ring_bit_width(self.participants, self.max_input, headroom=self.ring_headroom)

    @property
    def lane_dtype(self) -> np.dtype:
        """Return the numpy lane type used for ring arithmetic: the narrowest of uint8/16/32/64 that holds b bits."""
        return ring_lane_dtype(self.bit_width)

    @property
    def sum_dtype(self) -> np.dtype:
        """Return the dtype of the unmasked sums: uint16 up to b = 16 (keep-vote counts), else the lane type."""
        return np.dtype(np.uint16) if self.bit_width <= 16 else self.lane_dtype

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
        h.update(
            struct.pack(
                ">IQIIIBB",
                self.threshold,
                self.dimension,
                self.chunk_coordinates,
                self.max_input,
                self.colluders,
                self.ring_headroom,
                self.allow_unsafe_threshold,
            )
        )
        h.update(struct.pack(">Q", len(self.context)))
        h.update(self.context)
        return h.digest()
