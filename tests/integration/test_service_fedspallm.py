"""FedSpaLLM over the real service: budgets declared at join, a coordinator restarted mid-run, averaged weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from privacy.secagg.fixed_point import VoteValueCodec
from pruning.updates import update_bound
from tests.integration.harness import (
    NAMES,
    NSAMPLES,
    SEQLEN,
    fedprune,
    make_federation,
    start_coordinator,
    start_participant,
)

pytestmark = pytest.mark.slow

BUDGETS = {"site-a": 2, "site-b": 4, "site-c": 4}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from pruning.adapters import iter_prunable, qualified_name
    from pruning.model_io import load_model

    model = load_model(directory)
    return {qualified_name(i, name): sub.weight().detach().clone() for i, name, sub in iter_prunable(model)}


def test_fedspallm_service_with_budgets_survives_a_coordinator_restart_and_equals_the_plain_average(
    tmp_path: Path,
) -> None:
    federation = make_federation(tmp_path / "fed", layers=4)
    federation.run = {"method": "sparsegpt", "recipe": "fedspallm", "threshold": 2}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    first, address = start_coordinator(federation, "coordinator-1")
    participants = [
        start_participant(federation, name, address, runtime={"max_blocks": BUDGETS[name]}) for name in NAMES
    ]
    second = None
    try:
        log = first.wait_for("block 1/4 complete", timeout=90)
        assert "block assignment: 4 blocks, 2/3 participants per block" in log
        first.kill()
        second, _ = start_coordinator(federation, "coordinator-2")
        assert second.wait(timeout=90) == 0, second.output()
        assert "resuming: blocks" in second.output()
        for process in participants:
            assert process.wait(timeout=30) == 0, process.output()
    finally:
        for process in (first, second, *participants):
            if process is not None:
                process.stop()

    reference = tmp_path / "plain"
    args = ["simulate", "--model", str(federation.model), "--recipe", "fedspallm", "--sparsity", "0.5"]
    args += [
        "--nsamples",
        str(NSAMPLES),
        "--seqlen",
        str(SEQLEN),
        "--privacy",
        "off",
        "--out",
        str(reference),
    ]
    args += ["--budgets", ",".join(str(BUDGETS[name]) for name in NAMES), "--threshold", "2"]
    args += ["--no-progress", "--device", "cpu"]
    for name in NAMES:
        args += ["--participant-data", str(federation.data[name])]
    result = fedprune(*args, timeout=120)
    assert result.returncode == 0, result.stderr

    base, plain, served = _weights(federation.model), _weights(reference), _weights(federation.out)
    codec = VoteValueCodec(participants=len(NAMES))
    for key in base:
        assert torch.equal(plain[key] == 0, served[key] == 0), key
        tolerance = codec.max_error(update_bound(base[key])) + 2 * torch.finfo(torch.float32).eps
        assert (plain[key] - served[key]).abs().max().item() <= tolerance, key
    report = (federation.out / "privacy_report.json").read_text(encoding="utf-8")
    assert '"fedspallm:' in report.replace("\\n", "")
