"""What a coordinator's run tells its host as it goes: typed events, not log lines.

``CoordinatorRun(config, on_event=...)`` calls ``on_event`` with each event, from the thread that drives the
run, after the fact it reports is durable. A host (the CLI's progress, the demo's board, a benchmark that
records the sums) consumes them; log wording is not an interface. An observer must not block for long and
must not raise: an exception from it stops the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class ParticipantsPresent:
    """Enough participants joined; blocks start."""

    names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SessionStarted:
    """A block's aggregation session started with these members."""

    block: int
    blocks: int
    members: tuple[str, ...]
    attempt: int


@dataclasses.dataclass(frozen=True)
class AllocationSessionStarted:
    """An OWL allocation session (the dense column statistics of ``block``) started with these members."""

    block: int
    blocks: int
    members: tuple[str, ...]
    attempt: int


@dataclasses.dataclass(frozen=True)
class BlockAggregated:
    """A block's sums are known and its global mask is durable.

    ``keep_votes`` are the summed keep-votes per matrix (qualified name), what the coordinator learned: a
    study may re-select from them (another comparison group, weight scaling) without re-running the sites.
    """

    block: int
    blocks: int
    contributors: tuple[str, ...]
    keep_votes: Mapping[str, torch.Tensor]
    global_masks: Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class RunFinished:
    """The report, the checkpoint and ``sparsity.json`` are written."""

    output: Path
    report: Path


RunEvent = ParticipantsPresent | AllocationSessionStarted | SessionStarted | BlockAggregated | RunFinished
EventSink = Callable[[RunEvent], None]


def ignore(event: RunEvent) -> None:
    """The default sink: a run nobody observes."""


__all__ = [
    "AllocationSessionStarted",
    "BlockAggregated",
    "EventSink",
    "ParticipantsPresent",
    "RunEvent",
    "RunFinished",
    "SessionStarted",
    "ignore",
]
