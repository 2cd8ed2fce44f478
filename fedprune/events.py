"""The roles' run events as JSON lines: what ``--events FILE`` writes and what a reader parses back.

One JSON object per line, written and flushed as the event happens::

    {"schema": 1, "time": "2026-01-02T03:04:05.678Z", "kind": "block_aggregated", "block": 0, ...}

``kind`` names the event, the other keys are its fields (docs/OPERATORS.md and docs/PARTICIPANTS.md list
them). This is the stable interface to a run's progress; log lines are for people and may change. No
tensor is ever written: a ``block_aggregated`` line carries the block and its contributors, not the summed
keep-votes or the mask, so a parsed ``BlockAggregated`` has empty ``keep_votes`` and ``global_masks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from coordinator.events import (
    AllocationSessionStarted,
    BlockAggregated,
    ParticipantsPresent,
    RunEvent,
    RunFinished,
    SessionStarted,
)
from participant.events import (
    BlockReleased,
    BlockScored,
    Joined,
    ParticipantEvent,
    RunEnded,
    StatementSubmitted,
)

SCHEMA = 1
"""Raised whenever a kind or a field changes meaning, is removed or is added."""

Event = RunEvent | ParticipantEvent

logger = logging.getLogger(__name__)


class Field(enum.Enum):
    """How one field travels in JSON."""

    INT = "integer"
    STR = "string"
    BOOL = "boolean"
    NAMES = "list of strings"
    PATH = "path string"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One event kind on the wire: its class and the fields it carries (in order)."""

    name: str
    event_type: type
    fields: tuple[tuple[str, Field], ...]
    in_memory_only: tuple[str, ...] = ()
    """Fields never written (tensors); parsed back as empty mappings."""


KINDS: tuple[Kind, ...] = (
    # The coordinator's events (coordinator/events.py).
    Kind("participants_present", ParticipantsPresent, (("names", Field.NAMES),)),
    Kind(
        "session_started",
        SessionStarted,
        (("block", Field.INT), ("blocks", Field.INT), ("members", Field.NAMES), ("attempt", Field.INT)),
    ),
    Kind(
        "allocation_session_started",
        AllocationSessionStarted,
        (("block", Field.INT), ("blocks", Field.INT), ("members", Field.NAMES), ("attempt", Field.INT)),
    ),
    Kind(
        "block_aggregated",
        BlockAggregated,
        (("block", Field.INT), ("blocks", Field.INT), ("contributors", Field.NAMES)),
        in_memory_only=("keep_votes", "global_masks"),
    ),
    Kind("run_finished", RunFinished, (("output", Field.PATH), ("report", Field.PATH))),
    # The participant's events (participant/events.py).
    Kind(
        "joined",
        Joined,
        (("run_id", Field.STR), ("name", Field.STR), ("participant_id", Field.INT), ("blocks", Field.INT)),
    ),
    Kind("block_scored", BlockScored, (("block", Field.INT), ("blocks", Field.INT))),
    Kind("block_released", BlockReleased, (("block", Field.INT), ("blocks", Field.INT))),
    Kind("statement_submitted", StatementSubmitted, (("events", Field.INT),)),
    Kind("run_ended", RunEnded, (("complete", Field.BOOL), ("reason", Field.STR))),
)
_BY_NAME = {kind.name: kind for kind in KINDS}
_BY_TYPE = {kind.event_type: kind for kind in KINDS}
_ENVELOPE = ("schema", "time", "kind")


class EventStreamError(ValueError):
    """A line that is not an event of this schema; the message names the line, the kind and the field."""


def to_record(event: Event, *, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Return ``event`` as the JSON object of its line (tensors left out)."""
    kind = _BY_TYPE.get(type(event))
    if kind is None:
        raise TypeError(f"not a run event: {type(event).__name__}")
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "time": moment.astimezone(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "kind": kind.name,
    }
    for name, field in kind.fields:
        value = getattr(event, name)
        if field is Field.NAMES:
            value = list(value)
        elif field is Field.PATH:
            value = str(value)
        record[name] = value
    return record


def to_line(event: Event, *, now: datetime.datetime | None = None) -> str:
    """Return ``event`` as one JSON line (with its newline)."""
    return json.dumps(to_record(event, now=now), ensure_ascii=False, separators=(",", ":")) + "\n"


def _field(kind: Kind, name: str, field: Field, value: object) -> object:
    where = f"{kind.name}.{name}"
    if field is Field.INT and type(value) is int:
        return value
    if field is Field.BOOL and type(value) is bool:
        return value
    if field in (Field.STR, Field.PATH) and type(value) is str:
        return Path(value) if field is Field.PATH else value
    if field is Field.NAMES and type(value) is list and all(type(v) is str for v in value):
        return tuple(value)
    raise EventStreamError(f"{where}: expected a {field.value}, got {value!r}")


def from_record(record: object) -> Event:
    """Return the event a parsed JSON object holds; raise EventStreamError naming what is wrong."""
    if not isinstance(record, dict):
        raise EventStreamError(f"expected a JSON object, got {type(record).__name__}")
    schema = record.get("schema")
    if type(schema) is not int or schema != SCHEMA:
        raise EventStreamError(f"schema: expected {SCHEMA}, got {schema!r}")
    if not isinstance(record.get("time"), str):
        raise EventStreamError(f"time: expected a string, got {record.get('time')!r}")
    kind_name = record.get("kind")
    kind = _BY_NAME.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise EventStreamError(f"kind: expected one of {', '.join(_BY_NAME)}, got {kind_name!r}")
    unknown = sorted(set(record) - {name for name, _ in kind.fields} - set(_ENVELOPE))
    if unknown:
        raise EventStreamError(f"{kind.name}: unknown field {unknown[0]!r}")
    values: dict[str, object] = {}
    for name, field in kind.fields:
        if name not in record:
            raise EventStreamError(f"{kind.name}.{name}: missing")
        values[name] = _field(kind, name, field, record[name])
    for name in kind.in_memory_only:
        values[name] = MappingProxyType({})
    event: Event = kind.event_type(**values)
    return event


class StampedEvent(NamedTuple):
    """An event with the ``time`` of its line (ISO 8601 in UTC: such strings sort as the moments do)."""

    time: str
    event: Event

    @property
    def seconds(self) -> float:
        """Return the time as seconds since the epoch."""
        return datetime.datetime.fromisoformat(self.time.replace("Z", "+00:00")).timestamp()


def from_stamped_line(line: str) -> StampedEvent:
    """Return the event of one JSON line with its time; raise EventStreamError naming what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise EventStreamError(f"not JSON: {error}") from None
    event = from_record(record)
    return StampedEvent(record["time"], event)


def from_line(line: str) -> Event:
    """Return the event of one JSON line; raise EventStreamError naming what is wrong."""
    return from_stamped_line(line).event


def read_events(path: Path) -> list[Event]:
    """Return every event in an events file; raise EventStreamError naming the file and line."""
    return [stamped.event for stamped in _parse_lines(path, path.read_text(encoding="utf-8").splitlines())]


def _parse_lines(path: Path, lines: list[str], first: int = 1) -> Iterator[StampedEvent]:
    for number, line in enumerate(lines, start=first):
        try:
            yield from_stamped_line(line)
        except EventStreamError as error:
            raise EventStreamError(f"{path} line {number}: {error}") from None


class EventLog:
    """An event sink that appends each event to ``path`` as one JSON line and flushes it at once.

    Opening raises OSError. A write that fails later (a full disk) is logged once and ends the file's
    events, not the run: what a run computes and sends matters more than its observers. Safe to call from
    several threads; ``close`` (or leaving its ``with`` block) closes the file.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self.failed: OSError | None = None

    def __call__(self, event: Event) -> None:
        line = to_line(event)
        with self._lock:
            if self.failed is not None:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as error:
                self.failed = error
                logger.error("events file %s: %s; no further events are written to it", self.path, error)

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # what could not be written was reported already
            self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventTail:
    """Reads the events appended to a file since the last ``read`` (a file still being written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._line = 0
        self._partial = b""

    def read(self) -> list[StampedEvent]:
        """Return the events of the lines completed since the last call (none while the file is absent)."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        # A line is parsed only once its newline is written: the writer may be half-way through it.
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = [line.decode("utf-8") for line in complete]
        events = list(_parse_lines(self.path, lines, first=self._line + 1))
        self._line += len(lines)
        return events


def fan_out(*sinks: Callable[[Any], None]) -> Callable[[Any], None]:
    """Return one sink that hands each event to every one of ``sinks`` in turn."""

    def sink(event: Any) -> None:
        for each in sinks:
            each(event)

    return sink


__all__ = [
    "KINDS",
    "SCHEMA",
    "Event",
    "EventLog",
    "EventStreamError",
    "EventTail",
    "StampedEvent",
    "Field",
    "Kind",
    "fan_out",
    "from_line",
    "from_stamped_line",
    "from_record",
    "read_events",
    "to_line",
    "to_record",
]
