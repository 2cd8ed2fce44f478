"""``fedprune simulate`` and the networked service are one code path: same ledger structure, same masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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


def _masks(directory: Path) -> dict[str, torch.Tensor]:
    from pruning.adapters import iter_prunable, qualified_name
    from pruning.model_io import load_model

    model = load_model(directory)
    return {qualified_name(i, name): sub.weight() == 0 for i, name, sub in iter_prunable(model)}


def _serve(federation: Federation) -> dict[str, Any]:
    shutil.rmtree(federation.out, ignore_errors=True)
    shutil.rmtree(federation.root / "state", ignore_errors=True)
    federation.server.pop("address", None)
    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in NAMES]
    try:
        codes = [p.wait(timeout=90) for p in participants]
        assert codes == [0, 0, 0], "\n".join(p.output() for p in participants)
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
    finally:
        for process in (coordinator, *participants):
            process.stop()
    return json.loads((federation.out / "privacy_report.json").read_text(encoding="utf-8"))


def _simulate(federation: Federation, out: Path, *privacy: str) -> dict[str, Any]:
    args = ["simulate", "--model", str(federation.model), "--sparsity", "0.5", "--nsamples", str(NSAMPLES)]
    args += ["--seqlen", str(SEQLEN), "--out", str(out), "--no-progress", "--device", "cpu", *privacy]
    for name in NAMES:
        args += ["--participant-data", str(federation.data[name])]
    result = fedprune(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "privacy_report.json").read_text(encoding="utf-8"))


def _structure(report: dict[str, Any]) -> list[tuple[object, ...]]:
    """Return the ledger without its names and noisy values: who (by rank), what, where, how many, which keys."""
    names = sorted(s["participant"] for s in report["participant_statements"])
    rows = []
    for entry in report["ledger"]:
        event = entry["event"]
        who = "*" if event["participant"] == "*" else names.index(event["participant"])
        rows.append(
            (
                who,
                event["mechanism"],
                event["round"],
                event.get("block"),
                event["count"],
                sorted(event["parameters"]),
            )
        )
    return sorted(rows, key=repr)


def _statements(report: dict[str, Any]) -> list[int]:
    return [
        len(s["events"]) for s in sorted(report["participant_statements"], key=lambda s: s["participant"])
    ]


def test_simulate_and_the_service_give_the_same_ledger_structure_and_masks(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed")

    # Randomized response and DP statistics off: nothing random is left, so the masks must be equal.
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    service = _serve(federation)
    service_masks = _masks(federation.out)
    simulated = _simulate(federation, tmp_path / "exact", "--epsilon0", "inf", "--record-dp", "off")
    simulated_masks = _masks(tmp_path / "exact")
    assert service_masks.keys() == simulated_masks.keys()
    for name in service_masks:
        assert torch.equal(service_masks[name], simulated_masks[name]), name
    assert _structure(simulated) == _structure(service)
    assert service["threat_model"]["transport"].startswith("gRPC") and simulated["threat_model"][
        "transport"
    ].startswith("in-process")

    # The full privacy stack (the defaults of both): the same events, by the same parties, in the same places.
    federation.privacy = {}
    service = _serve(federation)
    simulated = _simulate(federation, tmp_path / "private")
    assert _structure(simulated) == _structure(service)
    assert _statements(simulated) == _statements(service) and all(_statements(service))
    mechanisms = {row[1] for row in _structure(service)}
    assert mechanisms == {"randomized_response", "gaussian", "secure_aggregation"}
