"""Test harness: ``fedprune participant`` that dies (SIGKILL) once its ShareKeys of one block is acknowledged.

Run as ``python -m tests.integration.crashing_participant --config FILE --kill-after-shares BLOCK``. The
fault lives in a test-only subclass of the client, so the product reads no test switch from anywhere; the
process dies as abruptly as a crashed host, at a point the test chooses, with no race against the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from participant.client import CoordinatorClient, RetryPolicy
from participant.config import load_config
from participant.run import ParticipantRun
from proto.fedprune.v1 import service_pb2 as pb

logger = logging.getLogger("tests.integration.crashing_participant")


class CrashingClient(CoordinatorClient):
    """A client whose process is killed right after block ``kill_block``'s shares were accepted."""

    def __init__(self, *args: Any, kill_block: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_block = kill_block

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        super().share_keys(request)
        if request.session.block == self.kill_block:
            logger.info("block %d: shares accepted; killing this participant now", self.kill_block)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--kill-after-shares", type=int, required=True, metavar="BLOCK")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = load_config(args.config)
    section = config.coordinator
    client = CrashingClient(
        section.address,
        config.tls,
        call_timeout_s=section.call_timeout_s,
        stream_timeout_s=section.stream_timeout_s,
        policy=RetryPolicy(max_backoff_s=section.max_backoff_s, max_retry_time_s=section.max_retry_time_s),
        kill_block=args.kill_after_shares,
    )
    ParticipantRun(config, client).run()
    return 0  # reached only if the kill block never came


if __name__ == "__main__":
    raise SystemExit(main())
