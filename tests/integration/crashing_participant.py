"""Test harness: ``fedprune participant`` that dies (SIGKILL) or hangs (SIGSTOP) at one stage of one block.

Run as ``python -m tests.integration.crashing_participant --config FILE --fault STAGE:BLOCK[:SIGNAL]``,
where STAGE is one of ``FAULT_STAGES`` and SIGNAL is KILL (default) or STOP. Every stage but
``after-share`` strikes right before the participant's answer of that stage leaves; ``mid-stream`` strikes
once the first masked-input chunk has been handed to gRPC, with the stream open. The fault lives in a
test-only subclass of the client, so the product reads no test switch from anywhere; the process dies (or
freezes) as abruptly as a crashed (or hung) host, at a point the test chooses, with no race against the run.
``--kill-after-shares BLOCK`` is ``--fault after-share:BLOCK``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from participant.client import GrpcWire, RetryPolicy, WireClient
from participant.config import load_config
from participant.run import ParticipantRun
from proto.fedprune.v1 import service_pb2 as pb

logger = logging.getLogger("tests.integration.crashing_participant")

FAULT_STAGES = ("advertise", "share", "after-share", "masked-input", "mid-stream", "sign", "unmask")
_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}


@dataclasses.dataclass(frozen=True)
class Fault:
    """Where the participant fails: the stage, the block, and the signal it sends itself."""

    stage: str
    block: int
    signal: str = "KILL"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Return the fault of ``STAGE:BLOCK[:SIGNAL]``."""
        stage, block, *rest = text.split(":")
        fault = cls(stage, int(block), *rest)
        if fault.stage not in FAULT_STAGES or fault.signal not in _SIGNALS:
            raise ValueError(f"--fault {text}: stage in {FAULT_STAGES}, signal in {tuple(_SIGNALS)}")
        return fault


class CrashingClient(GrpcWire):
    """A gRPC wire whose process is killed (or stopped) at ``fault``'s stage of ``fault``'s block."""

    def __init__(self, *args: Any, fault: Fault, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault = fault

    def _strike(self, stage: str, block: int, what: str) -> None:
        if (stage, block) != (self.fault.stage, self.fault.block):
            return
        verb = "killing" if self.fault.signal == "KILL" else "stopping"
        logger.info("block %d: %s; %s this participant now", block, what, verb)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), _SIGNALS[self.fault.signal])

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        self._strike("advertise", request.session.block, "keys not advertised")
        super().advertise_keys(request)

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        self._strike("share", request.session.block, "shares not sent")
        super().share_keys(request)
        self._strike("after-share", request.session.block, "shares accepted")

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        def striking() -> Iterator[pb.MaskedInputPart]:
            for index, part in enumerate(parts()):
                if index == 0:
                    self._strike("masked-input", part.session.block, "masked input not sent")
                elif index == 1:
                    time.sleep(0.2)  # let gRPC put the first chunk on the wire
                    self._strike("mid-stream", part.session.block, "first masked chunk sent, stream open")
                yield part

        return super().masked_input(striking)

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None:
        self._strike("sign", request.session.block, "survivor set not signed")
        super().sign_survivors(request)

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        self._strike("unmask", request.session.block, "unmask shares not sent")
        super().unmask(request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    faults = parser.add_mutually_exclusive_group(required=True)
    faults.add_argument("--fault", type=Fault.parse, metavar="STAGE:BLOCK[:SIGNAL]")
    faults.add_argument("--kill-after-shares", type=int, metavar="BLOCK")
    args = parser.parse_args(argv)
    fault = args.fault or Fault("after-share", args.kill_after_shares)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    config = load_config(args.config)
    section = config.coordinator
    client = CrashingClient(
        section.address,
        config.tls,
        call_timeout_s=section.call_timeout_s,
        stream_timeout_s=section.stream_timeout_s,
        policy=RetryPolicy(max_backoff_s=section.max_backoff_s, max_retry_time_s=section.max_retry_time_s),
        fault=fault,
    )
    ParticipantRun(config, WireClient(client)).run()
    return 0  # reached only if the fault's block never came


if __name__ == "__main__":
    raise SystemExit(main())
