"""Federated OWL: per-block sparsities allocated from the sites' dense column statistics, summed under secure
aggregation in an allocation phase before block 0, then each block pruned at its own sparsity."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from coordinator.config import PrivacySection
from fedprune.baselines import centralized_model
from fedprune.simulate import SimulationSettings
from privacy.report import verify_report
from pruning.adapters import iter_prunable, qualified_name
from pruning.data import pooled
from pruning.masks import parse_pattern
from pruning.methods import Method
from pruning.owl import OwlSettings, block_weight_counts, owl_allocation
from pruning.recipes import Mode, Recipe
from tests.roles import run_roles
from tests.test_cli_simulate import federation  # noqa: F401  (the fixture)
from tests.tiny import build_tiny_model, random_ids

CPU = torch.device("cpu")
# A lambda large enough that the tiny models' blocks get visibly different sparsities.
OWL = OwlSettings(multiple=3.0, lam=0.1)


def _sites(count: int) -> list[torch.Tensor]:
    # Non-IID: each site draws from a different slice of the vocabulary.
    return [(random_ids(3, 16, seed=70 + i) % 24) + 24 * (i % 4) for i in range(count)]


def _allocation(output: Path) -> dict:
    return json.loads((output / "sparsity.json").read_text())["allocation"]


@pytest.mark.parametrize(
    "architecture,method,sparsity", [("llama", Method.WANDA, 0.5), ("opt", Method.RIA, 0.6)]
)
def test_without_privacy_the_statistics_recipe_with_owl_is_centralized_owl_bit_for_bit(
    architecture: str, method: Method, sparsity: float, tmp_path: Path
) -> None:
    base = build_tiny_model(architecture, dtype=torch.float64, layers=3)
    samples = _sites(3)
    pattern = parse_pattern("unstructured", sparsity)
    settings = SimulationSettings(
        method=method, pattern=pattern, mode=Mode.ITERATIVE, recipe=Recipe.STATISTICS, owl=OWL
    )
    result = run_roles(base, samples, settings=settings, directory=tmp_path)

    pooled_allocation = owl_allocation(
        copy.deepcopy(base), pooled(samples), target=sparsity, device=CPU, settings=OWL
    )
    federated = _allocation(result.output)
    assert federated["method"] == "owl" and federated["lambda"] == OWL.lam
    assert len(federated["blocks"]) == 3
    for entry, ratio, expected in zip(
        federated["blocks"], pooled_allocation.outlier_ratios, pooled_allocation.sparsities, strict=True
    ):
        assert entry["outlier_ratio"] == pytest.approx(ratio, abs=1e-12)
        assert entry["sparsity"] == pytest.approx(expected, abs=1e-12)
    assert len({round(entry["sparsity"], 9) for entry in federated["blocks"]}) > 1, "OWL moved nothing"

    centralized = centralized_model(base, samples, method=method, pattern=pattern, device=CPU, owl=OWL)
    for (index, name, sub), (_, _, expected_sub) in zip(
        iter_prunable(result.model), iter_prunable(centralized), strict=True
    ):
        key = qualified_name(index, name)
        assert torch.equal(sub.weight() == 0, expected_sub.weight() == 0), key
        assert torch.equal(result.global_masks[key], expected_sub.weight() == 0), key


@pytest.mark.parametrize("mode", [Mode.ONE_SHOT, Mode.ITERATIVE])
def test_without_privacy_fedprllm_allocates_as_a_centralized_run_and_prunes_each_block_at_it(
    mode: Mode, tmp_path: Path
) -> None:
    base = build_tiny_model("llama", dtype=torch.float64, layers=3)
    samples = _sites(3)
    settings = SimulationSettings(pattern=parse_pattern("unstructured", 0.6), mode=mode, owl=OWL)
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    expected = owl_allocation(copy.deepcopy(base), pooled(samples), target=0.6, device=CPU, settings=OWL)
    sparsities = [entry["sparsity"] for entry in _allocation(result.output)["blocks"]]
    assert sparsities == pytest.approx(list(expected.sparsities), abs=1e-12)
    # The coordinator's selection (per matrix, layer group) prunes each block at its own sparsity.
    for index, name, sub in iter_prunable(result.model):
        pruned = int((sub.weight() == 0).sum())
        assert pruned == int(sub.weight().numel() * sparsities[index]), (index, name)


def test_fedprllm_votes_with_owl_under_default_privacy_count_two_releases_per_block(
    tmp_path: Path,
) -> None:
    from pruning.data import CalibrationSet

    base = build_tiny_model("llama", layers=2)
    records = [
        CalibrationSet(
            windows=tuple(random_ids(12, 16, seed=90 + i)), record_of_window=tuple(range(12)), documents=12
        )
        for i in range(3)
    ]
    privacy = PrivacySection.model_validate({"target_epsilon": 8.0, "epsilon0": 2.0})
    pattern = parse_pattern("unstructured", 0.5)
    reports = {}
    for owl in (None, OWL):
        settings = SimulationSettings(pattern=pattern, owl=owl, nsamples=6)
        result = run_roles(
            base, records, settings=settings, directory=tmp_path / str(owl is not None), privacy=privacy
        )
        reports[owl is not None] = json.loads(result.report.read_text())
        if owl is None:
            continue
        allocation = _allocation(result.output)
        sparsities = [entry["sparsity"] for entry in allocation["blocks"]]
        counts = block_weight_counts(base)
        assert sum(s * w for s, w in zip(sparsities, counts, strict=True)) == pytest.approx(
            0.5 * sum(counts), abs=1e-6
        )
        # Realized: S within one weight per output row of every matrix.
        zeros = sum(int((sub.weight() == 0).sum()) for _, _, sub in iter_prunable(result.model))
        rows = sum(sub.out_features for _, _, sub in iter_prunable(result.model))
        assert abs(zeros - 0.5 * sum(counts)) <= rows
        table = json.loads((result.output / "sparsity.json").read_text())
        for block, expected in zip(table["blocks"], sparsities, strict=True):
            assert block["sparsity"] == pytest.approx(expected, abs=0.02)
    for with_owl, report in reports.items():
        verified = verify_report(json.dumps(report))
        assert verified.checked_figures > 0 and not verified.missing_statements
        releases = {
            g["participant"]: g["details"]["releases"]
            for g in report["guarantees"]
            if g["layer"] == "calibration_statistics"
        }
        assert set(releases.values()) == {2 * 2 if with_owl else 2}, releases
        compositions = {
            g["composition"] for g in report["guarantees"] if g["layer"] == "calibration_statistics"
        }
        per_block = (
            "2 Poisson-subsampled Gaussian releases per block" if with_owl else "one Poisson-subsampled"
        )
        assert all(per_block in c for c in compositions), compositions
        sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
        assert len(sessions) == (4 if with_owl else 2)
    # Both runs reach the target epsilon: OWL's extra releases are paid with more noise, not more epsilon.
    for report in reports.values():
        epsilons = [g["epsilon"] for g in report["guarantees"] if g["layer"] == "calibration_statistics"]
        assert all(e <= 8.0 + 1e-6 for e in epsilons)


def test_simulate_owl_runs_through_the_roles_and_refuses_what_privacy_could_not_cover(
    federation,  # noqa: F811
    tmp_path: Path,
    capsys,
) -> None:
    from fedprune.cli import main
    from tests.test_cli_simulate import _args

    out = tmp_path / "owl"
    assert main(_args(federation, out, "--owl", "--owl-lambda", "0.05", "--owl-m", "4")) == 0
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["owl"]["lambda"] == 0.05 and len(summary["owl"]["sparsities"]) == 2
    assert _allocation(out)["outlier_multiple"] == 4.0
    capsys.readouterr()
    # Randomized response on (the default) with exact statistics: the allocation would release them.
    assert main(_args(federation, tmp_path / "rr", "--owl", "--record-dp", "off")) != 0
    assert "randomized response does not cover" in capsys.readouterr().err
    assert main(_args(federation, tmp_path / "n-m", "--owl", "--pattern", "2:4")) != 0
    assert "unstructured" in capsys.readouterr().err
