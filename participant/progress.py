"""The participant's progress bar: one step per block whose votes are in the block's sum (``BlockReleased``)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from participant.events import BlockReleased, ParticipantEvent


class BlockProgressBar:
    """An event sink that advances a bar over the run's blocks; ``close`` ends it (idempotent)."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None
        # A retried session releases a block again: the bar counts blocks, not releases.
        self.released: set[int] = set()

    def __call__(self, event: ParticipantEvent) -> None:
        if not isinstance(event, BlockReleased) or event.block in self.released:
            return
        if self._bar is None:
            self._bar = tqdm(total=event.blocks, desc="blocks", unit="block", disable=not self._enabled)
        self.released.add(event.block)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
