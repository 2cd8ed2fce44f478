"""``fedprune.events``: the roles' run events as JSON lines, the stable interface of a run's progress.

Every kind of either role survives the trip to a line and back; no tensor is ever written; a line that
is not an event of this schema is refused naming what is wrong; a file being written is followed line by
line, never half a line.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest
import torch

from coordinator.events import (
    AllocationSessionStarted,
    BlockAggregated,
    ParticipantsPresent,
    RunFinished,
    SessionStarted,
)
from fedprune.events import (
    KINDS,
    SCHEMA,
    EventLog,
    EventStreamError,
    EventTail,
    fan_out,
    from_line,
    read_events,
    to_line,
    to_record,
)
from participant.events import BlockReleased, BlockScored, Joined, RunEnded, StatementSubmitted

EVERY_KIND = (
    ParticipantsPresent(names=("site-a", "site-b", "site-ç")),
    SessionStarted(block=3, blocks=16, members=("site-a", "site-b"), attempt=2),
    AllocationSessionStarted(block=1, blocks=16, members=("site-a", "site-b"), attempt=1),
    BlockAggregated(block=3, blocks=16, contributors=("site-a",), keep_votes={}, global_masks={}),
    RunFinished(output=Path("/srv/out"), report=Path("/srv/out/privacy_report.json")),
    Joined(run_id="ab" * 16, name="site-a", participant_id=1, blocks=16),
    BlockScored(block=0, blocks=16),
    BlockReleased(block=15, blocks=16),
    StatementSubmitted(events=33),
    RunEnded(
        complete=False, reason='the run is weaker than this participant\'s [privacy] settings: "x"\nnext'
    ),
    RunEnded(complete=True, reason="run complete"),
)


def test_every_kind_of_either_role_survives_a_line_and_back() -> None:
    assert {type(event) for event in EVERY_KIND} == {kind.event_type for kind in KINDS}
    for event in EVERY_KIND:
        line = to_line(event)
        assert line.endswith("\n") and line.count("\n") == 1, "one event, one line"
        assert from_line(line) == event


def test_the_wire_schema_names_every_field_of_every_event_class() -> None:
    """A field added to an event class without its place on the wire fails here, not in a reader."""
    for kind in KINDS:
        declared = {field.name for field in dataclasses.fields(kind.event_type)}
        assert declared == {name for name, _ in kind.fields} | set(kind.in_memory_only), kind.name


def test_a_block_aggregated_line_carries_no_tensor() -> None:
    votes = {"model.layers.0.mlp.up_proj": torch.arange(6, dtype=torch.int64).reshape(2, 3) + 1234567}
    masks = {"model.layers.0.mlp.up_proj": torch.ones(2, 3, dtype=torch.bool)}
    event = BlockAggregated(block=0, blocks=2, contributors=("a", "b"), keep_votes=votes, global_masks=masks)
    record = json.loads(to_line(event))
    assert set(record) == {"schema", "time", "kind", "block", "blocks", "contributors"}
    assert "1234567" not in to_line(event) and "up_proj" not in to_line(event)
    parsed = from_line(to_line(event))
    assert isinstance(parsed, BlockAggregated)
    assert (parsed.block, parsed.blocks, parsed.contributors) == (0, 2, ("a", "b"))
    assert dict(parsed.keep_votes) == {} and dict(parsed.global_masks) == {}


def test_the_envelope_is_schema_time_and_kind() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
    record = to_record(BlockScored(block=1, blocks=2), now=moment)
    assert record == {
        "schema": SCHEMA,
        "time": "2026-01-02T03:04:05.678Z",
        "kind": "block_scored",
        "block": 1,
        "blocks": 2,
    }


_DROP = object()


def _line(**changes: object) -> str:
    record = to_record(SessionStarted(block=1, blocks=4, members=("a", "b"), attempt=1))
    record.update(changes)
    return json.dumps({key: value for key, value in record.items() if value is not _DROP})


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (_line(schema=2), "schema"),
        (_line(schema=True), "schema"),  # True == 1 in Python: not a schema number
        (_line(schema=_DROP), "schema"),
        (_line(time=_DROP), "time"),
        (_line(kind="block_pruned"), "kind"),
        (_line(kind=None), "kind"),
        (_line(block=True), "session_started.block"),  # a bool is not a block index
        (_line(block=1.0), "session_started.block"),
        (_line(block="1"), "session_started.block"),
        (_line(members="a,b"), "session_started.members"),
        (_line(members=["a", 2]), "session_started.members"),
        (_line(attempt=_DROP), "session_started.attempt"),
        (_line(keep_votes=[[1, 2]]), "keep_votes"),
        ("[1, 2]", "JSON object"),
        ('{"schema": 1, "kind": "joined"', "not JSON"),
    ],
)
def test_a_line_that_is_not_an_event_of_this_schema_is_refused_naming_what(line: str, named: str) -> None:
    with pytest.raises(EventStreamError, match=named):
        from_line(line)


def test_a_block_aggregated_line_that_carries_votes_is_refused() -> None:
    record = to_record(
        BlockAggregated(block=0, blocks=1, contributors=("a",), keep_votes={}, global_masks={})
    )
    record["keep_votes"] = {"w": [1, 2]}
    with pytest.raises(EventStreamError, match="block_aggregated: unknown field 'keep_votes'"):
        from_line(json.dumps(record))


def test_a_bool_field_takes_only_true_or_false() -> None:
    record = to_record(RunEnded(complete=True, reason="run complete"))
    record["complete"] = 1
    with pytest.raises(EventStreamError, match="run_ended.complete"):
        from_line(json.dumps(record))


def test_the_log_appends_and_flushes_each_line_as_it_happens(tmp_path: Path) -> None:
    path = tmp_path / "events" / "site.jsonl"
    path.parent.mkdir()
    path.write_text(to_line(BlockScored(block=0, blocks=1)), encoding="utf-8")  # an earlier run's line
    with EventLog(path) as log:
        log(Joined(run_id="00", name="a", participant_id=0, blocks=1))
        # Readable before the log is closed: a follower sees each event as it happens.
        assert read_events(path)[-1] == Joined(run_id="00", name="a", participant_id=0, blocks=1)
        log(RunEnded(complete=True, reason="run complete"))
    assert read_events(path) == [
        BlockScored(block=0, blocks=1),
        Joined(run_id="00", name="a", participant_id=0, blocks=1),
        RunEnded(complete=True, reason="run complete"),
    ]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device whose writes fail)")
def test_a_write_that_fails_is_reported_once_and_does_not_stop_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = EventLog(Path("/dev/full"))  # every write: no space left on device
    log(BlockScored(block=0, blocks=2))
    log(BlockScored(block=1, blocks=2))
    log.close()
    assert isinstance(log.failed, OSError)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "/dev/full" in errors[0].getMessage()


def test_read_events_names_the_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(to_line(BlockScored(block=0, blocks=1)) + '{"schema": 1}\n', encoding="utf-8")
    with pytest.raises(EventStreamError, match=r"run\.jsonl line 2: time"):
        read_events(path)


def test_a_tail_returns_complete_lines_only_and_each_once(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    tail = EventTail(path)
    assert tail.read() == [], "no file yet: nothing, no error"
    first, second = (to_line(BlockScored(block=b, blocks=2)).encode() for b in (0, 1))
    with open(path, "wb") as file:
        file.write(first + second[:7])  # the writer is half-way through the second line
        file.flush()
        assert [stamped.event for stamped in tail.read()] == [BlockScored(block=0, blocks=2)]
        assert tail.read() == []
        file.write(second[7:])
        file.flush()
        assert [stamped.event for stamped in tail.read()] == [BlockScored(block=1, blocks=2)]
        file.write(b'{"schema": 1}\n')
        file.flush()
    with pytest.raises(EventStreamError, match=r"run\.jsonl line 3"):
        tail.read()


def test_a_tail_gives_each_event_with_the_time_of_its_line(tmp_path: Path) -> None:
    """Lines of several files merge in the order they happened: by their time, which sorts as text."""
    path = tmp_path / "run.jsonl"
    moments = [
        datetime.datetime(2026, 1, 2, 3, 4, 5, ms * 1000, tzinfo=datetime.timezone.utc) for ms in (9, 10)
    ]
    events = [BlockScored(block=0, blocks=1), RunEnded(complete=True, reason="run complete")]
    path.write_text(
        "".join(to_line(e, now=m) for e, m in zip(events, moments, strict=True)), encoding="utf-8"
    )
    stamped = EventTail(path).read()
    assert [s.event for s in stamped] == events
    assert [s.time for s in stamped] == ["2026-01-02T03:04:05.009Z", "2026-01-02T03:04:05.010Z"]
    assert sorted(s.time for s in stamped) == [s.time for s in stamped]


def test_fan_out_hands_each_event_to_every_sink_in_order() -> None:
    seen: list[tuple[str, object]] = []
    sink = fan_out(lambda e: seen.append(("bar", e)), lambda e: seen.append(("file", e)))
    event = BlockReleased(block=0, blocks=1)
    sink(event)
    assert seen == [("bar", event), ("file", event)]
