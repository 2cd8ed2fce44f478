"""Test harness: ``fedprune coordinator`` that dies (SIGKILL) in the middle of one stage of one block.

Run as ``python -m tests.integration.crashing_coordinator --config FILE --kill-at STAGE:BLOCK``, STAGE one
of ``KILL_STAGES``. The coordinator dies right after it accepted the first participant's answer of that
stage (``mid-stream``: the first chunk of the first masked-input stream), before it replied: that answer is
in its memory only, the session is half done, and the participant sees its call fail. A test-only subclass
of ``CoordinatorRun`` replaces the real one for this process only; the command is the real
``fedprune coordinator``, so a test restarts it with the same config and watches it resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import coordinator.run
from fedprune.cli import main as fedprune_main

logger = logging.getLogger("tests.integration.crashing_coordinator")

KILL_STAGES = ("advertise", "share", "mid-stream", "sign", "unmask")


def crashing_run(stage: str, block: int) -> type[coordinator.run.CoordinatorRun]:
    """Return a ``CoordinatorRun`` that SIGKILLs its process at ``stage`` of ``block``."""

    class CrashingRun(coordinator.run.CoordinatorRun):
        def _strike(self, at: str, at_block: int) -> None:
            if (at, at_block) != (stage, block):
                return
            logger.info("block %d: first %s answer accepted; killing the coordinator now", block, stage)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        def advertise(self, name: str, block: int, advertisement: Any) -> None:
            super().advertise(name, block, advertisement)
            self._strike("advertise", block)

        def share_keys(self, name: str, block: int, message: Any) -> None:
            super().share_keys(name, block, message)
            self._strike("share", block)

        def masked_input(self, name: str, block: int, parts: Iterable[Any]) -> tuple[int, bytes]:
            def striking() -> Iterator[Any]:
                for index, part in enumerate(parts):
                    if index == 1:  # the first chunk is in the sum, the stream is open
                        self._strike("mid-stream", block)
                    yield part

            return super().masked_input(name, block, striking())

        def sign_survivors(self, name: str, block: int, signature: Any) -> None:
            super().sign_survivors(name, block, signature)
            self._strike("sign", block)

        def unmask(self, name: str, block: int, response: Any) -> None:
            super().unmask(name, block, response)
            self._strike("unmask", block)

    return CrashingRun


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--kill-at", required=True, metavar="STAGE:BLOCK")
    args = parser.parse_args(argv)
    stage, block = args.kill_at.split(":")
    if stage not in KILL_STAGES:
        parser.error(f"--kill-at: stage must be one of {KILL_STAGES}")
    # The command imports CoordinatorRun from its module when it runs: this process gets the crashing one.
    coordinator.run.CoordinatorRun = crashing_run(stage, int(block))  # type: ignore[misc]
    return fedprune_main(["coordinator", "--config", args.config])


if __name__ == "__main__":
    raise SystemExit(main())
