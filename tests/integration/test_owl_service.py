"""An OWL run over the service's own transport: gRPC and mutual TLS on loopback, real participants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pruning.owl import block_weight_counts
from tests.integration.live import live_coordinator, make_live_federation, run_participants


@pytest.mark.slow
def test_an_owl_run_allocates_over_grpc_and_every_site_checks_and_keeps_the_allocation(
    tmp_path: Path,
) -> None:
    federation = make_live_federation(tmp_path / "live", layers=3)
    owl = {"owl": True, "owl_lambda": 0.1, "owl_outlier_multiple": 3.0, "sparsity": 0.6}
    with live_coordinator(federation, "owl", owl) as coordinator:
        run_participants(coordinator)
        output = coordinator.run.config.output.directory
        allocation = json.loads((output / "sparsity.json").read_text(encoding="utf-8"))["allocation"]
        sparsities = [entry["sparsity"] for entry in allocation["blocks"]]
        counts = block_weight_counts(coordinator.run.model)
        assert len(sparsities) == 3
        assert sum(s * w for s, w in zip(sparsities, counts, strict=True)) == pytest.approx(
            0.6 * sum(counts), abs=1e-6
        )
        for name in federation.names:
            state = federation.root / coordinator.run.run_id / f"state-{name}"
            kept = json.loads((state / f"owl-allocation-{coordinator.run.run_id}.json").read_text())
            assert kept == sparsities
        report = json.loads((output / "privacy_report.json").read_text(encoding="utf-8"))
        sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
        assert [e["parameters"]["summed"] for e in sessions] == ["column_statistics"] * 3 + ["keep_votes"] * 3
