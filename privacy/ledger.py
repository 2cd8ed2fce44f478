"""The privacy ledger: every mechanism event of a run, in a SHA-256 hash chain.

Public API::

    ledger = PrivacyLedger()
    ledger.record(MechanismEvent(mechanism=Mechanism.GAUSSIAN, participant="site-a", block=3,
                                 statistic="column_squares:mlp.down_proj", count=1,
                                 parameters={"noise_multiplier": 2.1, ...}))
    ledger.entries            # tuple[LedgerEntry, ...]
    ledger.head               # entry_hash of the last entry (GENESIS_HASH when empty)
    verify_chain(entries)     # raises ChainError naming the first broken field

Each :class:`LedgerEntry` holds its index, the ``prev_hash`` of the entry before it (``GENESIS_HASH`` for
the first), the event, and ``entry_hash`` = SHA-256 of the canonical JSON (sorted keys, no whitespace) of
the entry without ``entry_hash``. Changing, removing, inserting or reordering entries breaks the chain.
The ledger never holds data, keys or masks: only mechanism parameters and counts.

Parameters each mechanism writes (the report's recomputation reads exactly these):

* ``gaussian`` (calibration statistics, one event per (block, statistic)): ``noise_multiplier`` (std of
  the noise over this statistic's per-record clip norm), ``block_noise_multiplier`` (the joint release's),
  ``clip_share`` (this statistic's share of the record's unit norm), ``clip_norm``, ``sample_rate``,
  ``dimension``, ``release`` (events with the same release id were one joint Gaussian release on one
  Poisson sample), ``sublayers``, ``shrinkage``.
* ``randomized_response``: ``epsilon0`` (effective), ``requested_epsilon0``, ``threshold``,
  ``threshold_bits``, ``flip_probability``; ``count`` = coordinates randomized.
* ``secure_aggregation`` (one event per session): exactly ``participants`` (n), ``threshold`` (t),
  ``survivors`` (participants whose inputs were summed) and ``colluders`` (c, assumed), all integers with
  0 <= c < t <= survivors <= n; ``count`` = coordinates summed. The report derives the minimum honest
  survivors from them (smallest survivors - c) and checks its threat model against them.

``check_event_parameters`` holds an event to exactly that list: every parameter present, of its type, in
its range, and no other (a party that signs an event cannot make the report's recomputation fail or hang).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from privacy.errors import PrivacyError

logger = logging.getLogger(__name__)

GENESIS_HASH = hashlib.sha256(b"fedprune privacy ledger v1").hexdigest()

ParameterValue = bool | int | float | str


class Mechanism(str, enum.Enum):
    """A privacy mechanism whose uses the ledger records."""

    GAUSSIAN = "gaussian"
    RANDOMIZED_RESPONSE = "randomized_response"
    SECURE_AGGREGATION = "secure_aggregation"


class MechanismEvent(BaseModel):
    """One use of a mechanism: what, by whom, where in the run, with which parameters, how many times."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mechanism: Mechanism
    participant: str = Field(min_length=1)
    round: int = Field(default=0, ge=0)
    block: int | None = Field(default=None, ge=0)
    statistic: str | None = None
    count: int = Field(ge=1, description="releases (gaussian) or coordinates (randomized response, sums)")
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)


class LedgerEntry(BaseModel):
    """A ledger event in the hash chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    event: MechanismEvent
    entry_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class EventParameterError(PrivacyError):
    """An event's parameters are not those its mechanism writes; ``field`` names the first that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


MAX_EPSILON0 = math.log((1 << 32) - 1)
"""The largest eps0 randomized response with a 32-bit threshold realises (``privacy.randomized_response``)."""
MAX_NOISE_MULTIPLIER = 1e6
"""Far beyond any useful noise; bounded so that the accountants always work with finite numbers."""
MIN_NOISE_MULTIPLIER = 0.3
"""Below it a joint release means epsilon in the hundreds per block, and the accountants take minutes."""
_RELATIVE = 1e-12


class _Parameters:
    """Typed, bounded reads of one event's parameters, each error naming ``<where>.parameters.<key>``."""

    def __init__(self, event: MechanismEvent, where: str) -> None:
        self.values = event.parameters
        self.where = f"{where}.parameters"
        self.read: set[str] = set()

    def _get(self, key: str) -> ParameterValue:
        self.read.add(key)
        if key not in self.values:
            raise EventParameterError(f"{self.where}.{key}", "is missing")
        return self.values[key]

    def number(self, key: str, *, low: float, high: float, low_open: bool = True) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventParameterError(f"{self.where}.{key}", f"must be a number, got {value!r}")
        number = float(value)
        above_low = number > low if low_open else number >= low
        if not (math.isfinite(number) and above_low and number <= high):
            bracket = "(" if low_open else "["
            raise EventParameterError(
                f"{self.where}.{key}", f"must be in {bracket}{low}, {high}], got {value!r}"
            )
        return number

    def integer(self, key: str, *, low: int, high: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise EventParameterError(
                f"{self.where}.{key}", f"must be an integer in [{low}, {high}], got {value!r}"
            )
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise EventParameterError(f"{self.where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def no_others(self) -> None:
        extra = sorted(set(self.values) - self.read)
        if extra:
            raise EventParameterError(f"{self.where}.{extra[0]}", "is not a parameter of this mechanism")


def check_event_parameters(event: MechanismEvent, *, where: str = "event") -> None:
    """Return None when ``event`` carries exactly its mechanism's parameters, each typed and in range.

    Raises EventParameterError naming the first wrong field (``<where>.parameters.<key>``).
    """
    parameters = _Parameters(event, where)
    if event.mechanism is Mechanism.GAUSSIAN:
        sigma = parameters.number(
            "noise_multiplier", low=MIN_NOISE_MULTIPLIER, high=MAX_NOISE_MULTIPLIER, low_open=False
        )
        block_sigma = parameters.number(
            "block_noise_multiplier", low=MIN_NOISE_MULTIPLIER, high=MAX_NOISE_MULTIPLIER, low_open=False
        )
        share = parameters.number("clip_share", low=0.0, high=1.0)
        if not math.isclose(sigma, block_sigma / share, rel_tol=_RELATIVE):
            raise EventParameterError(
                f"{where}.parameters.noise_multiplier", "is not block_noise_multiplier / clip_share"
            )
        parameters.number("clip_norm", low=1.0, high=1.0, low_open=False)  # unit-norm records
        parameters.number("sample_rate", low=0.0, high=1.0)
        parameters.integer("dimension", low=1, high=1 << 40)
        for key in ("release", "sublayers", "shrinkage"):
            parameters.text(key)
    elif event.mechanism is Mechanism.RANDOMIZED_RESPONSE:
        epsilon0 = parameters.number("epsilon0", low=0.0, high=MAX_EPSILON0)
        parameters.number("requested_epsilon0", low=0.0, high=MAX_NOISE_MULTIPLIER)
        threshold = parameters.integer("threshold", low=1, high=1 << 31)
        parameters.integer("threshold_bits", low=32, high=32)
        flip = parameters.number("flip_probability", low=0.0, high=0.5)
        # What privacy.randomized_response realises with a 32-bit threshold T (and the report checks).
        if not math.isclose(
            epsilon0, math.log((1 << 32) - threshold) - math.log(threshold), rel_tol=_RELATIVE
        ):
            raise EventParameterError(f"{where}.parameters.epsilon0", "does not follow from the threshold")
        if not math.isclose(flip, threshold / (1 << 32), rel_tol=_RELATIVE):
            raise EventParameterError(
                f"{where}.parameters.flip_probability", "does not follow from the threshold"
            )
    else:
        participants = parameters.integer("participants", low=1, high=1 << 20)
        threshold = parameters.integer("threshold", low=1, high=participants)
        parameters.integer("survivors", low=threshold, high=participants)
        parameters.integer("colluders", low=0, high=threshold - 1)
        # The names behind the survivors and what the session summed; privacy.report parses both (a JSON
        # list of as many names as survivors; privacy.report.SummedInputs).
        parameters.text("contributors")
        parameters.text("summed")
    parameters.no_others()


class ChainError(PrivacyError):
    """The hash chain is broken; ``field`` names the first field that does not match."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def canonical_json(value: Any) -> bytes:
    """Return the canonical encoding: JSON with sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_hash(index: int, prev_hash: str, event: MechanismEvent) -> str:
    """Return the SHA-256 (hex) of the canonical encoding of an entry without its own hash."""
    body = {"index": index, "prev_hash": prev_hash, "event": event.model_dump(mode="json")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def verify_chain(entries: Iterable[LedgerEntry], *, prefix: str = "ledger") -> str:
    """Return the head hash after checking indices and hashes; raise ChainError naming the first bad field."""
    previous = GENESIS_HASH
    for position, entry in enumerate(entries):
        where = f"{prefix}[{position}]"
        if entry.index != position:
            raise ChainError(f"{where}.index", f"expected {position}, found {entry.index}")
        if entry.prev_hash != previous:
            raise ChainError(f"{where}.prev_hash", "does not match the previous entry's hash")
        if entry_hash(entry.index, entry.prev_hash, entry.event) != entry.entry_hash:
            raise ChainError(f"{where}.event", "the entry's contents do not match its entry_hash")
        previous = entry.entry_hash
    return previous


class PrivacyLedger:
    """An append-only, hash-chained list of mechanism events."""

    def __init__(self, entries: Iterable[LedgerEntry] = ()) -> None:
        self._entries: list[LedgerEntry] = list(entries)
        verify_chain(self._entries)

    def record(self, event: MechanismEvent) -> LedgerEntry:
        """Return the new entry after appending ``event`` to the chain."""
        index = len(self._entries)
        previous = self.head
        entry = LedgerEntry(
            index=index, prev_hash=previous, event=event, entry_hash=entry_hash(index, previous, event)
        )
        self._entries.append(entry)
        logger.debug(
            "ledger[%d]: %s %s block=%s", index, event.mechanism.value, event.participant, event.block
        )
        return entry

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Return the entries in order."""
        return tuple(self._entries)

    @property
    def head(self) -> str:
        """Return the hash of the last entry (the genesis hash when empty)."""
        return self._entries[-1].entry_hash if self._entries else GENESIS_HASH

    def events(self, mechanism: Mechanism | None = None) -> list[MechanismEvent]:
        """Return the recorded events, optionally only those of one mechanism."""
        return [e.event for e in self._entries if mechanism is None or e.event.mechanism is mechanism]

    def __len__(self) -> int:
        return len(self._entries)
