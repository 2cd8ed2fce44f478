"""The FedSpaLLM recipe: l0-norm averaged SparseGPT weights, exact target sparsity, block assignment."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import ComparisonGroup, true_keepers_estimate
from coordinator.assignment import AssignmentError, assign_blocks, check_assignment
from coordinator.config import PrivacySection
from fedprune.cli import main
from fedprune.simulate import (
    ServiceSimulationResult,
    SimulationSettings,
    load_participant_samples,
    privacy_off,
    simulate_service,
)
from privacy.secagg.fixed_point import VoteValueCodec
from pruning.adapters import iter_prunable, qualified_name
from pruning.local import prune_model
from pruning.masks import parse_pattern, pruned_count
from pruning.methods import LocalDecision, Method
from pruning.model_io import load_model, load_tokenizer, vocabulary_size
from pruning.recipes import Mode, Recipe
from pruning.updates import update_bound
from tests.reference import plain_global_mask
from tests.roles import run_roles
from tests.tiny import build_tiny_model, random_ids, random_text

CPU = torch.device("cpu")


def _sites(count: int) -> list[torch.Tensor]:
    # Non-IID: each participant draws from its own slice of the vocabulary.
    return [(random_ids(8, 16, seed=10 + i) % 24) + 24 * (i % 4) for i in range(count)]


def _settings(sparsity: float = 0.5, **extra: object) -> SimulationSettings:
    return SimulationSettings(
        method=Method.SPARSEGPT,
        pattern=parse_pattern("unstructured", sparsity),
        recipe=Recipe.FEDSPALLM,
        nsamples=8,
        seqlen=16,
        **extra,  # type: ignore[arg-type]
    )


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {qualified_name(b, n): s.weight().detach().clone() for b, n, s in iter_prunable(model)}


def _local_decisions(base: torch.nn.Module, samples: torch.Tensor) -> dict[str, LocalDecision]:
    decisions: dict[str, LocalDecision] = {}
    prune_model(
        copy.deepcopy(base),
        samples,
        method=Method.SPARSEGPT,
        pattern=parse_pattern("unstructured", 0.5),
        device=CPU,
        progress=False,
        on_decision=decisions.__setitem__,
    )
    return decisions


def _sessions(result: ServiceSimulationResult) -> list[dict]:
    """Return the secure-aggregation events of the run's signed report."""
    report = json.loads(result.report.read_text(encoding="utf-8"))
    return [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]


def _assert_l0_norm_average(
    base: torch.nn.Module, sites: list[torch.Tensor], result: ServiceSimulationResult
) -> None:
    """Check the global model against a plain reference: each site's own SparseGPT run, then sum(m_i w_i) /
    sum(m_i) on the voted top (1 - s); the averaged weights within the fixed-point codec's documented error."""
    local = [_local_decisions(base, samples) for samples in sites]
    base_weights = _weights(base)
    codec = VoteValueCodec(participants=len(sites))
    for key, weight in _weights(result.model).items():
        keep = torch.stack([(~d[key].pruned).to(torch.float64) for d in local])
        kept_weights = torch.stack([d[key].weight.to(torch.float64) for d in local])  # type: ignore[union-attr]
        votes = keep.sum(0)
        mask = plain_global_mask(votes.long(), base_weights[key], 0.5, "layer")
        assert torch.equal(result.global_masks[key], mask), key
        average = (keep * kept_weights).sum(0) / votes.clamp(min=1)
        expected = torch.where(
            mask, 0.0, torch.where(votes > 0, average, base_weights[key].to(torch.float64))
        )
        # documented bound: bound / max_input per averaged weight, plus float32 rounding of the result
        tolerance = codec.max_error(update_bound(base_weights[key])) + 2 * torch.finfo(torch.float32).eps
        torch.testing.assert_close(weight.to(torch.float64), expected, rtol=0, atol=tolerance)


def test_plain_global_weights_are_the_l0_norm_average_of_the_kept_weights(tmp_path: Path) -> None:
    base = build_tiny_model("llama", layers=2)
    sites = _sites(3)
    result = run_roles(base, sites, settings=_settings(), directory=tmp_path)
    _assert_l0_norm_average(base, sites, result)


def test_securely_aggregated_average_equals_the_plain_one_within_the_fixed_point_error(
    tmp_path: Path,
) -> None:
    base = build_tiny_model("llama", layers=2)
    sites = _sites(4)
    result = run_roles(base, sites, settings=_settings(), directory=tmp_path)
    assert result.clipped_updates == 0
    _assert_l0_norm_average(base, sites, result)
    # one session per block, over every site
    assert [(e["block"], e["parameters"]["participants"]) for e in _sessions(result)] == [(0, 4), (1, 4)]


@pytest.mark.parametrize("group", ["layer", "row", "column"])
def test_the_global_model_meets_the_target_sparsity_exactly(group: str, tmp_path: Path) -> None:
    base = build_tiny_model("llama", layers=2)
    sparsity = 0.7
    privacy = PrivacySection.model_validate({"epsilon0": 1.0, "record_level_dp": False})
    result = run_roles(
        base,
        _sites(4),
        settings=_settings(sparsity, group=ComparisonGroup(group)),
        directory=tmp_path,
        privacy=privacy,
    )
    for key, weight in _weights(result.model).items():
        rows, columns = weight.shape
        per_group = {"layer": (rows * columns, 1), "row": (columns, rows), "column": (rows, columns)}[group]
        assert int(result.global_masks[key].sum()) == pruned_count(per_group[0], sparsity) * per_group[1], key
        assert torch.all(weight[result.global_masks[key]] == 0)
        assert int((weight == 0).sum()) == int(result.global_masks[key].sum()), key  # kept weights survive


def test_a_participants_local_result_is_what_fedprune_prune_sparsegpt_gives(
    model_dir, tmp_path: Path
) -> None:
    model = model_dir("llama")
    sites = []
    for i in range(2):
        path = tmp_path / f"site{i}.txt"
        path.write_text(random_text(600, seed=5 + i), encoding="utf-8")
        sites.append(path)
    pruned = tmp_path / "pruned"
    command = ["prune", "--model", str(model), "--data", str(sites[0]), "--method", "sparsegpt"]
    command += ["--sparsity", "0.5", "--nsamples", "4", "--seqlen", "32", "--seed", "3", "--out", str(pruned)]
    assert main([*command, "--device", "cpu", "--no-progress"]) == 0

    base, tokenizer = load_model(model), load_tokenizer(model)
    settings = SimulationSettings(
        method=Method.SPARSEGPT,
        pattern=parse_pattern("unstructured", 0.5),
        recipe=Recipe.FEDSPALLM,
        nsamples=4,
        seqlen=32,
        seed=3,
    )
    samples = load_participant_samples(sites, tokenizer, settings=settings, vocab_size=vocabulary_size(base))
    result = simulate_service(
        model,
        sites,
        settings=settings,
        privacy=privacy_off(),
        out=tmp_path / "global",
        signing_key=tmp_path / "report.key",
        device="cpu",
        participant_samples=samples,
        progress=False,
        keep_local_models=True,
    )
    assert result.local_models is not None
    local, reference = _weights(result.local_models[0]), _weights(load_model(pruned))
    assert local.keys() == reference.keys()
    for key in local:
        assert torch.equal(local[key], reference[key]), key


def test_budgets_assign_each_block_to_a_subset_and_the_report_counts_contributors(tmp_path: Path) -> None:
    base = build_tiny_model("llama", layers=3)
    budgets = (3, 2, 2, 2)  # 9 block-prunings = 3 blocks x t = 3
    result = run_roles(
        base,
        _sites(4),
        settings=_settings(budgets=budgets),
        directory=tmp_path,
        privacy=PrivacySection.model_validate({"record_level_dp": False}),
    )
    assert result.assignment is not None and result.threshold == 3
    check_assignment(result.assignment, budgets, threshold=result.threshold)
    assert [len(m) for m in result.assignment.blocks] == [3, 3, 3]
    sessions = _sessions(result)
    assert sorted({(e["block"], e["parameters"]["participants"]) for e in sessions}) == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    report = json.loads(result.report.read_text(encoding="utf-8"))
    randomized = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "randomized_response"]
    for participant in range(4):
        # a participant randomizes (and releases) only the blocks it was given
        assert (
            len([e for e in randomized if e["participant"] == f"participant-{participant:03d}"])
            == budgets[participant]
        )


def test_the_private_run_report_verifies_and_shows_contributors_per_block(
    model_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_dir("llama")
    command = ["simulate", "--model", str(model), "--recipe", "fedspallm", "--budgets", "2,2,1,1"]
    command += ["--sparsity", "0.5", "--seqlen", "32", "--device", "cpu", "--no-progress"]
    for i in range(4):
        path = tmp_path / f"site{i}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": random_text(40, seed=100 * i + d)}) + "\n" for d in range(20)),
            encoding="utf-8",
        )
        command += ["--participant-data", str(path)]
    out = tmp_path / "global"
    assert main([*command, "--out", str(out)]) == 0
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["recipe"] == "fedspallm" and summary["participants_per_block"] == [3, 3]
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    fingerprint = key_fingerprint(load_or_create_signing_key(os.environ["FEDPRUNE_SIGNING_KEY"]))
    capsys.readouterr()
    report = out / "privacy_report.json"
    assert main(["audit", "verify", str(report), "--trusted-key", fingerprint]) == 0
    capsys.readouterr()
    assert main(["audit", "show", str(report), "--trusted-key", fingerprint]) == 0
    assert "block 0: 3, block 1: 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*command[:6], "--budgets", "1,1,1,1", *command[8:], "--out", str(tmp_path / "x")])


def test_budgets_that_cannot_cover_every_block_fail_clearly() -> None:
    with pytest.raises(AssignmentError, match="2 more are missing"):
        assign_blocks([1, 1, 1, 1], blocks=2, threshold=3)
    with pytest.raises(AssignmentError, match=r"budgets\[1\]"):
        assign_blocks([2, -1], blocks=2, threshold=1)


@settings(max_examples=200, deadline=None)
@given(
    budgets=st.lists(st.integers(0, 8), min_size=1, max_size=9),
    blocks=st.integers(1, 7),
    data=st.data(),
)
def test_assignment_covers_every_block_by_t_within_budgets_whenever_possible(
    budgets: list[int], blocks: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(1, len(budgets)))
    possible = sum(min(b, blocks) for b in budgets) >= threshold * blocks
    if not possible:
        with pytest.raises(AssignmentError):
            assign_blocks(budgets, blocks=blocks, threshold=threshold)
        return
    assignment = assign_blocks(budgets, blocks=blocks, threshold=threshold)
    check_assignment(assignment, budgets, threshold=threshold)
    coverages = [len(m) for m in assignment.blocks]
    assert max(coverages) - min(coverages) <= 1  # spare capacity spread evenly


@pytest.mark.parametrize(("n", "k", "p"), [(4, 2, 0.269), (4, 3, 0.018), (8, 4, 0.269), (8, 1, 0.269)])
def test_the_randomized_response_correction_reduces_the_shrinkage_toward_the_base_weight(
    n: int, k: int, p: float
) -> None:
    # k of n truly keep a weight with update 1; flipped keep votes carry update 0. Dividing the update sum
    # by the vote count S shrinks the average toward W0; dividing by the estimated true keeps shrinks it less
    # (the estimate is unbiased for the true keeps, the ratio is not: see docs/PRIVACY.md).
    rng = np.random.default_rng(0)
    trials = 100_000
    kept = rng.binomial(k, 1 - p, trials)  # true keeps that stayed keeps: they carry the update
    flipped = rng.binomial(n - k, p, trials)  # prunes flipped to keep: zero update
    votes = torch.from_numpy(kept + flipped)
    seen = votes > 0
    naive = (torch.from_numpy(kept)[seen] / votes[seen]).mean().item()
    estimate = true_keepers_estimate(votes, participants=n, flip_probability=p)
    corrected = (torch.from_numpy(kept)[seen] / estimate[seen]).mean().item()
    assert abs(corrected - 1) < abs(naive - 1)
    assert torch.all(estimate[seen] <= votes[seen]) and torch.all(estimate[seen] >= 1)
    assert torch.equal(true_keepers_estimate(votes, participants=n), votes.to(torch.float64))


def test_the_recipe_needs_sparsegpt_and_one_shot() -> None:
    with pytest.raises(ValueError, match="needs method sparsegpt"):
        SimulationSettings(method=Method.WANDA, recipe=Recipe.FEDSPALLM, nsamples=8, seqlen=16)
    with pytest.raises(ValueError, match="needs mode one-shot"):
        SimulationSettings(method=Method.SPARSEGPT, recipe=Recipe.FEDSPALLM, mode=Mode.ITERATIVE)
