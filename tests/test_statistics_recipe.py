"""The statistics recipe: sites' calibration statistics summed under secure aggregation, block by block; the
coordinator prunes from the sums (Wanda and RIA from column statistics, SparseGPT from X^T X, whose
reconstructed weights the sites then take). Without privacy it is centralized pruning on the pooled data."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.simulate import SimulationSettings
from privacy.errors import PrivacyError
from privacy.secagg.fixed_point import StatisticCodec
from pruning.data import pooled
from pruning.errors import PruningInputError
from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe, check_recipe
from tests.roles import run_roles
from tests.test_cli_simulate import federation  # noqa: F401  (the fixture)
from tests.tiny import build_tiny_model, random_ids

CPU = torch.device("cpu")


def _sites(count: int) -> list[torch.Tensor]:
    # Non-IID: each site draws from a different slice of the vocabulary.
    return [(random_ids(3, 16, seed=60 + i) % 24) + 24 * (i % 4) for i in range(count)]


def _centralized_masks(base, samples, method: Method, pattern) -> dict[str, torch.Tensor]:
    masks: dict[str, torch.Tensor] = {}
    prune_model(
        copy.deepcopy(base),
        pooled(samples),
        method=method,
        pattern=pattern,
        device=CPU,
        progress=False,
        on_decision=lambda name, decision: masks.__setitem__(name, decision.pruned.clone()),
    )
    return masks


@pytest.mark.parametrize(
    "architecture,method,pattern,sparsity",
    [
        ("llama", Method.WANDA, "unstructured", 0.5),
        ("opt", Method.WANDA, "unstructured", 0.7),
        ("llama", Method.RIA, "unstructured", 0.6),
        ("qwen2", Method.WANDA, "2:4", None),
    ],
)
def test_without_privacy_the_mask_is_centralized_pruning_bit_for_bit(
    architecture: str, method: Method, pattern: str, sparsity: float | None, tmp_path: Path
) -> None:
    base = build_tiny_model(architecture, dtype=torch.float64, layers=3)
    samples = _sites(3)
    parsed = parse_pattern(pattern, sparsity)
    settings = SimulationSettings(
        method=method, pattern=parsed, mode=Mode.ITERATIVE, recipe=Recipe.STATISTICS
    )
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    expected = _centralized_masks(base, samples, method, parsed)
    assert expected.keys() == result.global_masks.keys()
    for name, mask in expected.items():
        assert torch.equal(result.global_masks[name], mask), (
            f"{name}: {(result.global_masks[name] != mask).sum()}"
        )
    # The global model is the base model under those masks (no weight is changed).
    centralized = copy.deepcopy(base)
    prune_model(centralized, pooled(samples), method=method, pattern=parsed, device=CPU, progress=False)
    for a, b in zip(result.model.state_dict().values(), centralized.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "architecture,pattern,sparsity",
    [("llama", "unstructured", 0.5), ("opt", "unstructured", 0.7), ("qwen2", "2:4", None)],
)
def test_with_sparsegpt_the_masks_and_reconstructed_weights_are_centralized_sparsegpt(
    architecture: str, pattern: str, sparsity: float | None, tmp_path: Path
) -> None:
    # SparseGPT adapts each block's mask to the weights it reconstructs, and each block's Hessian comes
    # from the blocks before it as reconstructed: equal masks in every block need the sites to compute on
    # the coordinator's weights. Weights agree to SparseGPT's own float32 arithmetic (the Hessian is summed
    # in a different order, and in fixed point).
    base = build_tiny_model(architecture, dtype=torch.float64, layers=3)
    samples = _sites(3)
    parsed = parse_pattern(pattern, sparsity)
    settings = SimulationSettings(
        method=Method.SPARSEGPT, pattern=parsed, mode=Mode.ITERATIVE, recipe=Recipe.STATISTICS
    )
    result = run_roles(base, samples, settings=settings, directory=tmp_path)
    expected = _centralized_masks(base, samples, Method.SPARSEGPT, parsed)
    assert expected.keys() == result.global_masks.keys()
    for name, mask in expected.items():
        assert torch.equal(result.global_masks[name], mask), (
            f"{name}: {(result.global_masks[name] != mask).sum()}"
        )
    centralized = copy.deepcopy(base)
    prune_model(
        centralized, pooled(samples), method=Method.SPARSEGPT, pattern=parsed, device=CPU, progress=False
    )
    moved = 0
    for (name, a), b in zip(
        result.model.state_dict().items(), centralized.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
        moved += int(((a != base.state_dict()[name]) & (a != 0)).sum())
    assert moved > 0  # kept weights were reconstructed, not only masked
    report = json.loads(result.report.read_text())
    sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
    assert {e["parameters"]["summed"] for e in sessions} == {"gram_statistics"}
    from pruning.layout import VoteLayout

    layout = VoteLayout.for_block(base, 0)
    triangle = sum(entry.shape[1] * (entry.shape[1] + 1) // 2 for entry in layout.entries)
    assert sessions[0]["count"] == 2 * triangle


def test_the_ledger_says_statistics_were_summed(tmp_path: Path) -> None:
    base = build_tiny_model("llama", layers=2)
    settings = SimulationSettings(
        pattern=parse_pattern("unstructured", 0.5), mode=Mode.ITERATIVE, recipe=Recipe.STATISTICS
    )
    result = run_roles(base, _sites(3), settings=settings, directory=tmp_path)
    report = json.loads(result.report.read_text())
    events = [entry["event"] for entry in report["ledger"]]
    sessions = [e for e in events if e["mechanism"] == "secure_aggregation"]
    assert len(sessions) == 2
    assert {e["parameters"]["summed"] for e in sessions} == {"column_statistics"}
    # Two lanes per input column of each matrix: far fewer coordinates than one per weight.
    from pruning.layout import VoteLayout

    layout = VoteLayout.for_block(base, 0)
    assert sessions[0]["count"] == 2 * sum(entry.shape[1] for entry in layout.entries) < layout.dimension


def test_the_recipe_needs_a_data_driven_method_iterative_and_no_scaling() -> None:
    pattern = parse_pattern("unstructured", 0.5)
    with pytest.raises(PruningInputError, match="method wanda, ria or sparsegpt"):
        check_recipe(Recipe.STATISTICS, method=Method.MAGNITUDE, mode=Mode.ITERATIVE, weight_scaling=False)
    for method in (Method.WANDA, Method.RIA, Method.SPARSEGPT):
        check_recipe(Recipe.STATISTICS, method=method, mode=Mode.ITERATIVE, weight_scaling=False)
    with pytest.raises(PruningInputError, match="mode iterative"):
        SimulationSettings(pattern=pattern, recipe=Recipe.STATISTICS)
    with pytest.raises(PruningInputError, match="no weight scaling"):
        check_recipe(Recipe.STATISTICS, method=Method.WANDA, mode=Mode.ITERATIVE, weight_scaling=True)


def test_codec_sums_exactly_and_refuses_out_of_range() -> None:
    codec = StatisticCodec()
    values = [np.array([0.0, 1.5, 3e9, 123.456789]), np.array([2.25, 0.0, 4e12, 1e-7])]
    lanes = sum(codec.encode(v, name="m").astype(np.uint64) for v in values)
    decoded = codec.decode(lanes, contributors=2, name="m")
    step = 2.0**-codec.fraction_bits
    assert np.all(np.abs(decoded - (values[0] + values[1])) <= step)
    assert codec.encode(np.array([-3.0]), name="m").tolist() == [0, 0]  # DP noise below 0 is sent as 0
    with pytest.raises(PrivacyError, match="outside the fixed-point range"):
        codec.encode(np.array([codec.bound]), name="m")
    with pytest.raises(PrivacyError, match="not finite"):
        codec.encode(np.array([np.nan]), name="m")
    with pytest.raises(PrivacyError, match="lane sum"):
        codec.decode(np.array([0, codec.max_input + 1]), contributors=1, name="m")


def test_the_signed_codec_sums_negative_values_exactly_and_refuses_out_of_range() -> None:
    codec = StatisticCodec(signed=True)
    bound = codec.bound
    assert bound == 2.0**43
    values = [
        np.array([-1.5, 2.0, -bound, 0.0, 1e-7, bound - 1]),
        np.array([0.25, -7.0, 0.0, -(2.0**-20), -1e-7, -(bound - 1)]),
        np.array([-0.125, 3e9, 0.0, 0.0, 0.0, 0.0]),
    ]
    lanes = sum(codec.encode(v, name="m").astype(np.uint64) for v in values)
    decoded = codec.decode(lanes, contributors=3, name="m")
    step = 2.0**-codec.fraction_bits
    assert np.all(np.abs(decoded - sum(values)) <= 1.5 * step)
    assert decoded[2] == -bound and decoded[5] == 0.0  # the offsets cancel exactly, in integers
    for outside in (bound, -bound - 1.0, -1e14):
        with pytest.raises(PrivacyError, match="outside the fixed-point range"):
            codec.encode(np.array([outside]), name="m")
    # The unsigned codec still sends DP noise below zero as zero; the signed one keeps the sign.
    assert codec.decode(codec.encode(np.array([-3.0]), name="m"), contributors=1, name="m").tolist() == [-3.0]


def test_a_gram_statistic_travels_as_its_upper_triangle() -> None:
    from pruning.statistics import StatisticKind, flatten_statistic, statistic_size, unflatten_statistic

    x = torch.randn(40, 6, dtype=torch.float64)
    gram = torch.triu(x.t() @ x) + torch.triu(x.t() @ x, 1).t()  # exactly symmetric
    flat = flatten_statistic(StatisticKind.GRAM, gram)
    assert flat.numel() == statistic_size(StatisticKind.GRAM, 6) == 21
    assert torch.equal(unflatten_statistic(StatisticKind.GRAM, flat, 6), gram)
    with pytest.raises(ValueError, match="expected 21"):
        unflatten_statistic(StatisticKind.GRAM, flat[:-1], 6)


def test_a_site_takes_the_recipe_only_as_announced_and_as_its_minimums_allow() -> None:
    from participant.admission import refusals
    from participant.config import PrivacyMinimums
    from participant.errors import RunRefusedError
    from participant.recipes import StatisticsIterative, plugin_for, recipe_max_input
    from tests.participant.test_recipes import RUN

    run = dataclasses.replace(RUN, recipe=Recipe.STATISTICS, mode=Mode.ITERATIVE)
    assert plugin_for(run) is StatisticsIterative
    assert recipe_max_input(run) == StatisticCodec().max_input == 2**32 - 1
    assert StatisticsIterative.admission_problems(run, max_blocks=3)  # it computes every block
    with pytest.raises(RunRefusedError, match="mode iterative"):
        plugin_for(dataclasses.replace(run, mode=Mode.ONE_SHOT))
    announced_rr = dataclasses.replace(run.privacy, randomized_response=True, epsilon0=2.0)
    with pytest.raises(RunRefusedError, match="no randomized response"):
        plugin_for(dataclasses.replace(run, privacy=announced_rr))

    class Config:  # refusals reads only config.privacy
        privacy = PrivacyMinimums.model_validate(
            {"allowed_recipes": ["fedprllm", "fedspallm"], "require_record_level_dp": False}
        )

    (problem,) = refusals(Config(), run, None)  # type: ignore[arg-type]
    assert 'allowed_recipes = ["fedprllm", "fedspallm"]' in problem and "'stats'" in problem
    assert refusals(Config(), RUN, None) == []  # type: ignore[arg-type]
    assert PrivacyMinimums().allowed_recipes == tuple(Recipe)  # default: every recipe
    with pytest.raises(ValueError, match="allowed_recipes"):
        PrivacyMinimums.model_validate({"allowed_recipes": []})
    with pytest.raises(ValueError, match="allowed_recipes"):
        PrivacyMinimums.model_validate({"allowed_recipes": ["statistics"]})


def test_the_coordinator_refuses_randomized_response_with_the_recipe(model_dir, tmp_path: Path) -> None:
    from coordinator.config import parse_config
    from proto.config_file import ConfigError

    def config(privacy: dict[str, object]) -> object:
        return parse_config(
            {
                "server": {"address": "127.0.0.1:0"},
                "tls": {"ca": "ca.pem", "certificate": "c.pem", "private_key": "c.key"},
                "run": {
                    "model": str(model_dir("llama")),
                    "participants": ["a", "b", "c"],
                    "sparsity": 0.5,
                    "recipe": "stats",
                    "mode": "iterative",
                },
                "privacy": privacy,
                "output": {
                    "directory": str(tmp_path / "o"),
                    "state": str(tmp_path / "s"),
                    "signing_key": "k",
                },
            }
        )

    with pytest.raises(ConfigError, match="randomized_response = false"):
        config({"randomized_response": True})
    assert config({"randomized_response": False}).run.recipe is Recipe.STATISTICS  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", [Method.WANDA, Method.SPARSEGPT])
def test_with_record_level_dp_the_sites_release_their_statistics_and_the_report_verifies(
    tmp_path: Path, method: Method
) -> None:
    from coordinator.config import PrivacySection
    from pruning.data import CalibrationSet

    base = build_tiny_model("llama", layers=2)
    sites = [
        CalibrationSet(
            windows=tuple(random_ids(12, 16, seed=90 + i)), record_of_window=tuple(range(12)), documents=12
        )
        for i in range(3)
    ]
    privacy = PrivacySection.model_validate(
        {"randomized_response": False, "record_level_dp": True, "noise_multiplier": 1.0, "sample_rate": 1.0}
    )
    settings = SimulationSettings(
        method=method,
        pattern=parse_pattern("unstructured", 0.5),
        mode=Mode.ITERATIVE,
        recipe=Recipe.STATISTICS,
    )
    result = run_roles(base, sites, settings=settings, directory=tmp_path, privacy=privacy)
    report = json.loads(result.report.read_text())
    statements = report["participant_statements"]
    assert len(statements) == 3
    for statement in statements:
        assert {e["mechanism"] for e in statement["events"]} == {"gaussian"}
    record_level = {
        g["participant"]: g["epsilon"] for g in report["guarantees"] if g["layer"] == "calibration_statistics"
    }
    assert sorted(record_level) == sorted(result.participants) and all(
        0 < e < 8 for e in record_level.values()
    )
    total = sum(int(m.sum()) for m in result.global_masks.values())
    assert total == sum(m.numel() // 2 for m in result.global_masks.values())


def test_simulate_runs_the_recipe_and_says_what_it_needs(federation, tmp_path: Path, capsys) -> None:  # noqa: F811
    from fedprune.cli import main
    from tests.test_cli_simulate import _args

    out = tmp_path / "stats"
    flags = ("--recipe", "stats", "--method", "ria", "--mode", "iterative")
    assert main(_args(federation, out, *flags, "--epsilon0", "inf")) == 0
    assert (out / "privacy_report.json").is_file()
    capsys.readouterr()
    assert main(_args(federation, tmp_path / "rr", *flags)) != 0  # randomized response on by default
    assert "randomized_response" in capsys.readouterr().err
    sparsegpt = tmp_path / "stats-sparsegpt"
    assert (
        main(
            _args(
                federation,
                sparsegpt,
                "--recipe",
                "stats",
                "--method",
                "sparsegpt",
                "--mode",
                "iterative",
                "--epsilon0",
                "inf",
            )
        )
        == 0
    )
    report = json.loads((sparsegpt / "privacy_report.json").read_text())
    summed = {
        e["event"]["parameters"].get("summed")
        for e in report["ledger"]
        if e["event"]["mechanism"] == "secure_aggregation"
    }
    assert summed == {"gram_statistics"}
