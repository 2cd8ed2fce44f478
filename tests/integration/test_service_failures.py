"""The run survives a participant dying after it shared its keys, and a coordinator killed mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.harness import NAMES, make_federation, start_coordinator, start_participant
from tests.integration.test_service_run import _pruned_masks, _simulate_plain

pytestmark = pytest.mark.slow


def test_a_participant_killed_after_sharing_keys_does_not_stop_the_run_when_t_remain(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed")
    federation.run = {"threshold": 2}
    federation.server = {"round_timeout_s": 3.0}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    coordinator, address = start_coordinator(federation)
    kill = {"site-c": 0}
    participants = {
        name: start_participant(federation, name, address, kill_after_shares=kill.get(name)) for name in NAMES
    }
    try:
        assert participants["site-c"].wait(timeout=60) == -9
        assert "block 0: shares accepted; killing this participant now" in participants["site-c"].output()
        for name in ("site-a", "site-b"):
            assert participants[name].wait(timeout=60) == 0, participants[name].output()
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
        log = coordinator.output()
        assert "site-c dropped out" in log
        assert "block 2/2 complete: 2 contributors" in log
        assert (federation.out / "privacy_report.json").is_file()
    finally:
        for process in (coordinator, *participants.values()):
            process.stop()


def test_a_coordinator_killed_mid_run_and_restarted_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed", layers=4)
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    first, address = start_coordinator(federation, "coordinator-1")
    participants = [start_participant(federation, name, address) for name in NAMES]
    second = None
    try:
        first.wait_for("block 1/4 complete", timeout=60)
        first.kill()
        second, _ = start_coordinator(federation, "coordinator-2")
        assert second.wait(timeout=60) == 0, second.output()
        assert "resuming: blocks" in second.output()
        for process in participants:
            assert process.wait(timeout=30) == 0, process.output()
    finally:
        for process in (first, second, *participants):
            if process is not None:
                process.stop()
    service = _pruned_masks(federation.out)
    reference = _simulate_plain(federation, tmp_path / "simulated")
    for name in reference:
        assert torch.equal(service[name], reference[name]), name
