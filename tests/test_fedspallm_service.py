"""The FedSpaLLM recipe in the service's own roles (in one process): sums, assignment, report, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from coordinator.config import ConfigError, parse_config
from fedprune.cli import main
from privacy.secagg.fixed_point import VoteValueCodec
from pruning.adapters import iter_prunable, qualified_name
from pruning.model_io import load_model
from pruning.recipes import Recipe
from pruning.updates import update_bound
from tests.tiny import random_text


def _files(tmp_path: Path, count: int) -> list[Path]:
    files = []
    for i in range(count):
        path = tmp_path / f"site{i}.jsonl"
        # Non-IID: each site writes from its own seed range.
        path.write_text(
            "".join(json.dumps({"text": random_text(40, seed=70 * i + d)}) + "\n" for d in range(10)),
            encoding="utf-8",
        )
        files.append(path)
    return files


def _simulate(model: Path, files: list[Path], out: Path, *extra: str) -> dict:
    args = ["simulate", "--model", str(model), "--recipe", "fedspallm", "--sparsity", "0.6"]
    args += ["--nsamples", "4", "--seqlen", "16", "--out", str(out), "--no-progress", "--device", "cpu"]
    for path in files:
        args += ["--participant-data", str(path)]
    assert main([*args, *extra]) == 0
    return json.loads((out / "simulation.json").read_text(encoding="utf-8"))


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    model = load_model(directory)
    return {qualified_name(b, n): s.weight().detach().clone() for b, n, s in iter_prunable(model)}


def _assert_equal_within_fixed_point_error(model: Path, plain: Path, served: Path, participants: int) -> None:
    base, a, b = _weights(model), _weights(plain), _weights(served)
    codec = VoteValueCodec(participants=participants)
    for key in base:
        assert torch.equal(a[key] == 0, b[key] == 0), f"{key}: the global masks differ"
        tolerance = codec.max_error(update_bound(base[key])) + 2 * torch.finfo(torch.float32).eps
        assert (a[key] - b[key]).abs().max().item() <= tolerance, key
        assert (b[key] == 0).sum().item() == int(b[key].numel() * 0.6), f"{key}: not exactly 60% sparse"


def test_service_fedspallm_equals_the_plain_l0_norm_average_within_the_fixed_point_error(
    tmp_path: Path, model_dir
) -> None:
    model = model_dir("llama", layers=2)
    files = _files(tmp_path, 3)
    _simulate(model, files, tmp_path / "plain", "--privacy", "off")
    summary = _simulate(model, files, tmp_path / "served", "--epsilon0", "inf", "--record-dp", "off")
    assert summary["transport"].startswith("in process")
    assert summary["participants_per_block"] == [3, 3]
    _assert_equal_within_fixed_point_error(model, tmp_path / "plain", tmp_path / "served", 3)
    report = json.loads((tmp_path / "served" / "privacy_report.json").read_text(encoding="utf-8"))
    assert any(text.startswith("fedspallm:") for text in report["exclusions"])
    sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
    assert [(e["block"], e["parameters"]["participants"]) for e in sessions] == [(0, 3), (1, 3)]


def test_service_assigns_blocks_within_budgets_and_every_block_has_t(tmp_path: Path, model_dir) -> None:
    model = model_dir("llama", layers=3)
    files = _files(tmp_path, 4)
    # n = 4, t = 3: 3 blocks x 3 = 9 block-prunings from budgets 1 + 2 + 3 + 3.
    budgets = "1,2,3,3"
    _simulate(model, files, tmp_path / "plain", "--privacy", "off", "--budgets", budgets)
    summary = _simulate(
        model, files, tmp_path / "served", "--epsilon0", "inf", "--record-dp", "off", "--budgets", budgets
    )
    assert summary["participants_per_block"] == [3, 3, 3]
    _assert_equal_within_fixed_point_error(model, tmp_path / "plain", tmp_path / "served", 4)
    report = json.loads((tmp_path / "served" / "privacy_report.json").read_text(encoding="utf-8"))
    sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
    assert [e["parameters"]["participants"] for e in sessions] == [3, 3, 3]
    assert all(e["parameters"]["threshold"] == 3 for e in sessions)


def test_private_fedspallm_service_run_reports_each_sites_own_blocks(tmp_path: Path, model_dir) -> None:
    model = model_dir("llama", layers=3)
    files = _files(tmp_path, 4)
    summary = _simulate(model, files, tmp_path / "private", "--budgets", "1,2,3,3", "--target-epsilon", "8")
    assert summary["sparsity"] == pytest.approx(0.6, abs=1e-3)
    report = json.loads((tmp_path / "private" / "privacy_report.json").read_text(encoding="utf-8"))
    randomized = {}
    for entry in report["ledger"]:
        event = entry["event"]
        if event["mechanism"] == "randomized_response":
            randomized.setdefault(event["participant"], []).append(event["block"])
    # Each site randomizes (and so releases) only the blocks it was assigned, within its budget.
    loads = sorted(len(blocks) for blocks in randomized.values())
    assert loads == [1, 2, 3, 3]
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    pin = key_fingerprint(load_or_create_signing_key(os.environ["FEDPRUNE_SIGNING_KEY"]))
    report_path = tmp_path / "private" / "privacy_report.json"
    assert main(["audit", "verify", str(report_path), "--trusted-key", pin]) == 0


def test_a_budget_too_small_for_t_is_refused_before_any_work(tmp_path: Path, model_dir, capsys) -> None:
    model = model_dir("llama", layers=3)
    files = _files(tmp_path, 4)
    args = [
        "simulate",
        "--model",
        str(model),
        "--recipe",
        "fedspallm",
        "--budgets",
        "1,1,1,1",
        "--sparsity",
        "0.5",
    ]
    args += ["--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu", "--seqlen", "16"]
    for path in files:
        args += ["--participant-data", str(path)]
    assert main(args) != 0
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "privacy_report.json").exists()


def _coordinator(tmp_path: Path, **run: object) -> dict:
    return {
        "server": {"address": "127.0.0.1:50051"},
        "tls": {"ca": "ca.pem", "certificate": "c.pem", "private_key": "k.pem"},
        "run": {"model": "m", "participants": ["a", "b", "c"], **run},
        "output": {"directory": str(tmp_path / "o"), "state": str(tmp_path / "s"), "signing_key": "r.key"},
    }


@pytest.mark.parametrize(
    ("run", "named"),
    [
        ({"method": "wanda"}, "method"),
        ({"method": "sparsegpt", "mode": "iterative"}, "mode"),
        ({"method": "sparsegpt", "weight_scaling": True}, "weight_scaling"),
    ],
)
def test_coordinator_config_refuses_a_fedspallm_run_it_cannot_do(
    tmp_path: Path, run: dict, named: str
) -> None:
    with pytest.raises(ConfigError, match=f"fedspallm.*{named}"):
        parse_config(_coordinator(tmp_path, recipe="fedspallm", **run))
    config = parse_config(_coordinator(tmp_path, recipe="fedspallm", method="sparsegpt"))
    assert config.run.recipe is Recipe.FEDSPALLM
