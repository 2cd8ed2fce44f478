"""A ``fedprune participant`` process against a hostile coordinator over mutual TLS: it stops, exit 1.

The coordinator is the scripted one of ``tests.participant.hostile`` behind a real gRPC server with the
run's certificates; the participant is the daemon as an operator runs it. The coordinator lists one
colluding site under several ids; the daemon must refuse before any of its keys leave, say which check
the coordinator failed, and exit 1.
"""

from __future__ import annotations

import dataclasses
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from proto.fedprune.v1 import service_pb2_grpc
from proto.tls import add_secure_port, server_options
from pruning.model_io import load_model
from tests.integration.harness import Process, free_address, make_federation
from tests.participant.hostile import HostileCoordinator, HostileServicer, Session

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class _Tls:
    ca: Path
    certificate: Path
    private_key: Path


def test_the_daemon_exits_1_naming_the_check_when_one_site_appears_under_several_ids(tmp_path: Path) -> None:
    federation = make_federation(tmp_path)
    roster = (("site-a", 1, "site-a"), ("site-b", 2, "site-b"), ("site-b", 3, "site-b"))
    coordinator = HostileCoordinator(
        load_model(federation.model),
        names=("site-a", "site-b", "site-c"),
        threshold=3,
        sessions=[Session(block=0, members=roster)],
    )
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
    output = process.output()
    assert code == 1, output
    assert "check roster-repeats-identity" in output and "leaves the run" in output
    assert coordinator.sent("Join") and coordinator.sent("AdvertiseKeys") == []
