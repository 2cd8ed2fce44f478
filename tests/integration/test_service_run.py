"""A real coordinator and three participant processes on loopback, over mutual TLS, block by block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.harness import (
    NAMES,
    NSAMPLES,
    SEQLEN,
    Federation,
    fedprune,
    make_federation,
    start_coordinator,
    start_participant,
)

pytestmark = pytest.mark.slow


def _pruned_masks(directory: Path) -> dict[str, torch.Tensor]:
    from pruning.adapters import iter_prunable, qualified_name
    from pruning.model_io import load_model

    model = load_model(directory)
    return {qualified_name(i, name): sub.weight() == 0 for i, name, sub in iter_prunable(model)}


def _simulate_plain(federation: Federation, out: Path) -> dict[str, torch.Tensor]:
    args = ["simulate", "--model", str(federation.model), "--sparsity", "0.5", "--nsamples", str(NSAMPLES)]
    args += [
        "--seqlen",
        str(SEQLEN),
        "--privacy",
        "off",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    for name in NAMES:
        args += ["--participant-data", str(federation.data[name])]
    result = fedprune(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    return _pruned_masks(out)


def _run(federation: Federation) -> tuple[str, list[str]]:
    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in NAMES]
    try:
        codes = [p.wait(timeout=90) for p in participants]
        assert codes == [0, 0, 0], "\n".join(p.output() for p in participants)
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
        return coordinator.output(), [p.output() for p in participants]
    finally:
        for process in (coordinator, *participants):
            process.stop()


def test_without_randomized_response_the_mask_equals_simulate_privacy_off(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed")
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    log, _ = _run(federation)
    assert "block 2/2 complete: 3 contributors" in log
    service = _pruned_masks(federation.out)
    reference = _simulate_plain(federation, tmp_path / "simulated")
    assert service.keys() == reference.keys()
    for name in service:
        assert torch.equal(service[name], reference[name]), name
    assert (federation.out / "sparsity.json").is_file()
