"""``fedprune simulate`` as an operator runs it: private by default, a loud research mode, a baseline table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedprune.cli import main
from pruning.model_io import load_model
from tests.tiny import random_text


@pytest.fixture
def federation(model_dir, tmp_path: Path) -> dict[str, Path | list[Path]]:
    files = []
    for i in range(3):
        path = tmp_path / f"site{i}.txt"
        path.write_text(random_text(1200, seed=20 + i), encoding="utf-8")
        files.append(path)
    held_out = tmp_path / "eval.txt"
    held_out.write_text(random_text(1500, seed=77), encoding="utf-8")
    return {"model": model_dir("llama"), "sites": files, "eval": held_out}


def _args(federation, out: Path, *extra: str) -> list[str]:
    args = [
        "simulate",
        "--model",
        str(federation["model"]),
        "--sparsity",
        "0.5",
        "--nsamples",
        "3",
        "--seqlen",
        "32",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    for site in federation["sites"]:
        args += ["--participant-data", str(site)]
    return args + list(extra)


def test_default_run_is_private_and_its_report_verifies(federation, tmp_path: Path, capsys) -> None:
    out = tmp_path / "global"
    assert main(_args(federation, out, "--sigma", "3.0")) == 0
    assert "WARNING" not in capsys.readouterr().err
    report = json.loads((out / "privacy_report.json").read_text())
    mechanisms = {entry["event"]["mechanism"] for entry in report["ledger"]}
    assert mechanisms == {"randomized_response", "secure_aggregation", "gaussian"}
    assert (
        main(
            [
                "audit",
                "verify",
                str(out / "privacy_report.json"),
                "--public-key",
                str(out / "privacy_report.pub"),
            ]
        )
        == 0
    )
    table = json.loads((out / "sparsity.json").read_text())
    assert table["total"]["sparsity"] == pytest.approx(0.5)
    loaded = load_model(out)
    assert loaded.config.model_type == "llama"


def test_privacy_off_says_so_loudly_and_writes_no_report(federation, tmp_path: Path, capsys) -> None:
    out = tmp_path / "research"
    assert main(_args(federation, out, "--privacy", "off")) == 0
    assert "research baseline" in capsys.readouterr().err
    assert not (out / "privacy_report.json").exists()


def test_privacy_off_matches_exact_secure_sum_without_randomization(federation, tmp_path: Path) -> None:
    """Secure aggregation changes nothing but who sees what: with eps0 = inf the model equals the plain run."""
    plain, secure = tmp_path / "plain", tmp_path / "secure"
    assert main(_args(federation, plain, "--privacy", "off")) == 0
    assert main(_args(federation, secure, "--epsilon0", "inf")) == 0
    a, b = load_model(plain).state_dict(), load_model(secure).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baselines_table(federation, tmp_path: Path, capsys) -> None:
    out = tmp_path / "table"
    assert (
        main(
            _args(federation, out, "--privacy", "off", "--baselines", "--eval-data", str(federation["eval"]))
        )
        == 0
    )
    printed = capsys.readouterr().out
    for row in (
        "dense",
        "magnitude",
        "centralized",
        "federated (layer, one-shot)",
        "local-only (mean)",
        "local-only (worst)",
    ):
        assert row in printed
    summary = json.loads((out / "simulation.json").read_text())
    assert len(summary["local_only"]) == 3
    assert summary["perplexity"]["local-only (worst)"] == pytest.approx(max(summary["local_only"]))


def test_bad_simulation_options(federation, tmp_path: Path, capsys) -> None:
    assert main(_args(federation, tmp_path / "a", "--baselines")) == 2
    assert "--eval-data" in capsys.readouterr().err
    assert main(_args(federation, tmp_path / "b", "--sigma", "1", "--target-epsilon", "3")) == 2
    assert "not both" in capsys.readouterr().err
    assert main(_args(federation, tmp_path / "c", "--privacy", "off", "--sigma", "1")) == 2
    assert main(_args(federation, tmp_path / "d", "--threshold", "5")) == 2
    assert "threshold" in capsys.readouterr().err
