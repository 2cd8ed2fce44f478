"""What a participant's run tells its host as it goes: typed events, not log lines.

``ParticipantRun(config, client, on_event=...)`` calls ``on_event`` with each event, from the thread that
runs it, after the fact it reports has happened. A host (the CLI's progress bar, the demo's board, an
``--events`` file) consumes them; log wording is not an interface. An observer must not block for long and
must not raise: an exception from it stops the run. ``block`` is the decoder block's index, counted from 0,
of ``blocks`` in the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Joined:
    """The coordinator admitted this site and the site accepted the run (model, layout, privacy, budget)."""

    run_id: str
    name: str
    """The name the coordinator knows this site by (its certificate's common name)."""
    participant_id: int
    blocks: int


@dataclasses.dataclass(frozen=True)
class BlockScored:
    """This site's keep-votes of a block are computed from its data and randomized, ready to mask.

    One-shot runs score each block (in order) when the first session that needs it starts, and any left
    before the statement; iterative runs each block when it is due; FedSpaLLM runs each block assigned to
    this site when its session starts.
    """

    block: int
    blocks: int


@dataclasses.dataclass(frozen=True)
class BlockReleased:
    """This site's masked input of a block is in the block's sum: its unmask answer was accepted.

    May come again for a block whose session the coordinator ran again (the same input, never new noise).
    """

    block: int
    blocks: int


@dataclasses.dataclass(frozen=True)
class StatementSubmitted:
    """The coordinator accepted this site's signed privacy statement."""

    events: int
    """How many ledger events (mechanism releases) the statement lists."""


@dataclasses.dataclass(frozen=True)
class RunEnded:
    """This site's part in the run is over: the run is complete, or the site refused or left it."""

    complete: bool
    reason: str
    """``run complete``, or why the site stopped (the error it exits with)."""


ParticipantEvent = Joined | BlockScored | BlockReleased | StatementSubmitted | RunEnded
ParticipantEventSink = Callable[[ParticipantEvent], None]


def ignore(event: ParticipantEvent) -> None:
    """The default sink: a run nobody observes."""


__all__ = [
    "BlockReleased",
    "BlockScored",
    "Joined",
    "ParticipantEvent",
    "ParticipantEventSink",
    "RunEnded",
    "StatementSubmitted",
    "ignore",
]
