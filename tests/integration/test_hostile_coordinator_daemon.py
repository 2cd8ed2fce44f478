"""A ``fedprune participant`` process against a hostile coordinator over mutual TLS: it stops, exit 1.

The coordinator is the scripted one of ``tests.participant.hostile`` behind a real gRPC server with the
run's certificates; the participant is the daemon as an operator runs it. The coordinator lists one
colluding site under several ids, or binds in a session another view of what it published than it served
the daemon; the daemon must refuse before any of its keys leave for that session, say which check the
coordinator failed, and exit 1.
"""

from __future__ import annotations

import dataclasses
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from privacy.secagg import published_view
from proto.fedprune.v1 import service_pb2_grpc
from proto.tls import add_secure_port, server_options
from pruning.model_io import load_model
from tests.integration.harness import Process, free_address, make_federation
from tests.participant.hostile import HostileCoordinator, HostileServicer, Session, members

pytestmark = pytest.mark.slow

NAMES = ("site-a", "site-b", "site-c")


@dataclasses.dataclass(frozen=True)
class _Tls:
    ca: Path
    certificate: Path
    private_key: Path


def _run_daemon(tmp_path: Path, coordinator_for: Any) -> tuple[int, str, HostileCoordinator]:
    """Return (exit code, output, coordinator) of site-a's daemon against ``coordinator_for(model)``."""
    federation = make_federation(tmp_path)
    coordinator = coordinator_for(load_model(federation.model))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=server_options())
    service_pb2_grpc.add_CoordinatorServicer_to_server(HostileServicer(coordinator), server)
    address = free_address()
    pki = federation.pki
    add_secure_port(server, address, _Tls(pki / "ca.pem", pki / "coordinator.pem", pki / "coordinator.key"))
    server.start()
    try:
        config = federation.participant_config("site-a", address)
        process = Process(tmp_path / "site-a.log", "participant", "--config", str(config))
        try:
            code = process.wait(timeout=120)
        finally:
            process.stop()
    finally:
        server.stop(grace=None)
    return code, process.output(), coordinator


def test_the_daemon_exits_1_naming_the_check_when_one_site_appears_under_several_ids(tmp_path: Path) -> None:
    roster = (("site-a", 1, "site-a"), ("site-b", 2, "site-b"), ("site-b", 3, "site-b"))
    code, output, coordinator = _run_daemon(
        tmp_path,
        lambda model: HostileCoordinator(
            model, names=NAMES, threshold=3, sessions=[Session(block=0, members=roster)]
        ),
    )
    assert code == 1, output
    assert "check roster-repeats-identity" in output and "leaves the run" in output
    assert coordinator.sent("Join") and coordinator.sent("AdvertiseKeys") == []


def test_the_daemon_exits_1_when_a_session_binds_another_mask_than_it_was_served(tmp_path: Path) -> None:
    # Block 0 is summed honestly; block 1's session binds the view of a mask of block 0 other than the
    # one this daemon fetched over gRPC (the one the other sites would have been shown).
    honest = Session(block=0, members=members(*NAMES))
    lie = dataclasses.replace(honest, block=1, published=published_view(blocks=[(bytes(32), None)]))
    code, output, coordinator = _run_daemon(
        tmp_path, lambda model: HostileCoordinator(model, names=NAMES, threshold=3, sessions=[honest, lie])
    )
    assert code == 1, output
    assert "check published-view" in output and "leaves the run" in output
    assert coordinator.sent("Unmask") == [0] and coordinator.sent("AdvertiseKeys") == [0]
    assert coordinator.sent("BlockMask") == [1]
