"""``fedprune simulate`` as an operator runs it: record-level DP by default, loud weaker modes, a baseline table."""

from __future__ import annotations

import json
import math
import os
import time
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
        # One document per line: the unit of record-level privacy.
        path = tmp_path / f"site{i}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": random_text(40, seed=100 * i + d)}) + "\n" for d in range(30)),
            encoding="utf-8",
        )
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


def _verify(report: Path, capsys) -> str:
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    fingerprint = key_fingerprint(load_or_create_signing_key(os.environ["FEDPRUNE_SIGNING_KEY"]))
    capsys.readouterr()
    assert main(["audit", "verify", str(report), "--trusted-key", fingerprint]) == 0
    return capsys.readouterr().out


def test_default_run_has_record_level_dp_and_its_report_verifies(federation, tmp_path: Path, capsys) -> None:
    out = tmp_path / "global"
    assert main(_args(federation, out)) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err
    assert "one document is the unit; epsilon 8 at delta 1e-05" in captured.out
    assert "participant 2: 30 documents" in captured.out
    report = json.loads((out / "privacy_report.json").read_text())
    mechanisms = {entry["event"]["mechanism"] for entry in report["ledger"]}
    assert mechanisms == {"randomized_response", "secure_aggregation", "gaussian"}
    calibration = [g for g in report["guarantees"] if g["layer"] == "calibration_statistics"]
    assert len(calibration) == 3 and all(g["epsilon"] <= 8.0 for g in calibration)
    assert not (out / "privacy_report.pub").exists()  # the key's public half never ships with the report
    _verify(out / "privacy_report.json", capsys)
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["privacy"]["record_level_dp"]["target_epsilon"] == 8.0
    assert "one document" in summary["privacy"]["record_level_dp"]["unit"]
    assert "not a record-level guarantee" in summary["privacy"]["randomized_response"]["note"]
    table = json.loads((out / "sparsity.json").read_text())
    assert table["total"]["sparsity"] == pytest.approx(0.5)
    loaded = load_model(out)
    assert loaded.config.model_type == "llama"


def test_the_outlook_says_plainly_when_the_mask_will_be_close_to_magnitude(
    federation, tmp_path: Path, capsys
) -> None:
    assert main(_args(federation, tmp_path / "noisy", "--target-epsilon", "0.5")) == 0
    assert "the mask will be near magnitude pruning or worse" in capsys.readouterr().out


def test_without_record_dp_the_run_says_it_makes_no_record_level_claim(
    federation, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "exact"
    assert main(_args(federation, out, "--record-dp", "off")) == 0
    assert "no record-level privacy claim" in capsys.readouterr().err
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["privacy"]["record_level_dp"].startswith("off")
    report = json.loads((out / "privacy_report.json").read_text())
    assert not [g for g in report["guarantees"] if g["layer"] == "calibration_statistics"]
    assert any("no record-level guarantee" in line for line in report["exclusions"])


def test_no_model_is_written_when_the_report_does_not_check(federation, tmp_path: Path, capsys) -> None:
    """The report is built and checked first: a DP output never exists without its report."""
    out = tmp_path / "refused"
    code = main(
        _args(federation, out, "--sigma", "1.0", "--sample-rate", "0.05", "--accountant-tolerance", "0.001")
    )
    assert code != 0
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert not (out / "privacy_report.json").exists()


def test_privacy_off_says_so_loudly_and_its_signed_report_claims_no_dp(
    federation, tmp_path: Path, capsys
) -> None:
    """The research baseline runs the same roles: no randomized response, no DP statistics, still secure sums."""
    out = tmp_path / "research"
    assert main(_args(federation, out, "--privacy", "off")) == 0
    banner = capsys.readouterr().err
    assert "research baseline with NO differential-privacy guarantee" in banner
    assert "STILL ON: secure aggregation" in banner
    report = json.loads((out / "privacy_report.json").read_text())
    # Only the coordinator's secure-aggregation sessions: no randomized response, no Gaussian release.
    assert {entry["event"]["mechanism"] for entry in report["ledger"]} == {"secure_aggregation"}
    assert report["guarantees"] == []
    assert any("no record-level guarantee" in line for line in report["exclusions"])
    _verify(out / "privacy_report.json", capsys)
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["privacy"]["randomized_response"].startswith("off")
    assert summary["privacy"]["record_level_dp"].startswith("off")


def test_privacy_off_matches_exact_secure_sum_without_randomization(federation, tmp_path: Path) -> None:
    """Secure aggregation changes nothing but who sees what: with eps0 = inf the model equals the plain run."""
    plain, secure = tmp_path / "plain", tmp_path / "secure"
    assert main(_args(federation, plain, "--privacy", "off")) == 0
    assert main(_args(federation, secure, "--epsilon0", "inf", "--record-dp", "off")) == 0
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
        "federated, no privacy (layer, one-shot)",
        "local-only (mean)",
        "local-only (worst)",
    ):
        assert row in printed
    summary = json.loads((out / "simulation.json").read_text())
    assert len(summary["local_only"]) == 3
    assert summary["perplexity"]["local-only (worst)"] == pytest.approx(max(summary["local_only"]))
    # Without privacy the run itself is the no-privacy row: no private row is claimed.
    assert not any(name.startswith("private federated") for name in summary["perplexity"])


def test_private_baselines_table_puts_the_run_without_privacy_beside_the_private_one(
    federation, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "table"
    assert main(_args(federation, out, "--baselines", "--eval-data", str(federation["eval"]))) == 0
    printed = capsys.readouterr().out
    assert "private federated (layer, one-shot)" in printed
    assert "federated, no privacy (layer, one-shot)" in printed
    perplexity = json.loads((out / "simulation.json").read_text())["perplexity"]
    private = perplexity["private federated (layer, one-shot)"]
    plain = perplexity["federated, no privacy (layer, one-shot)"]
    assert math.isfinite(private) and math.isfinite(plain) and private > 1 and plain > 1
    # It writes nothing beside the private run's outputs.
    assert not any("no-privacy" in path.name for path in out.rglob("*"))


def test_bad_simulation_options(federation, tmp_path: Path, capsys) -> None:
    assert main(_args(federation, tmp_path / "a", "--baselines")) == 2
    assert "--eval-data" in capsys.readouterr().err
    assert main(_args(federation, tmp_path / "b", "--sigma", "1", "--target-epsilon", "3")) == 2
    assert "not both" in capsys.readouterr().err
    assert main(_args(federation, tmp_path / "c", "--privacy", "off", "--sigma", "1")) == 2
    assert main(_args(federation, tmp_path / "d", "--threshold", "5")) == 2
    assert "threshold" in capsys.readouterr().err
    # Without DP the votes are still summed by secure aggregation: its threshold rule holds (t > (n + c)/2).
    assert main(_args(federation, tmp_path / "e", "--privacy", "off", "--threshold", "1")) == 2
    assert "--threshold" in capsys.readouterr().err


def test_a_float16_checkpoint_runs_with_privacy_on(
    federation, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every site loads the model in its own thread: each must get the float16 weights the coordinator has."""
    from tests.tiny import build_tiny_model, build_word_tokenizer

    # transformers changes torch's process-wide default dtype while it builds a model; a short sleep in
    # every change makes the sites' concurrent loads interleave on every run instead of now and then.
    original = torch.set_default_dtype

    def slow_set_default_dtype(dtype: torch.dtype) -> None:
        original(dtype)
        time.sleep(0.005)

    monkeypatch.setattr(torch, "set_default_dtype", slow_set_default_dtype)
    model = tmp_path / "float16-model"
    build_tiny_model("llama", dtype=torch.float16).save_pretrained(model)
    build_word_tokenizer().save_pretrained(model)
    out = tmp_path / "global"
    assert main(_args({**federation, "model": model}, out, "--record-dp", "off")) == 0
    report = json.loads((out / "privacy_report.json").read_text())
    assert {entry["event"]["mechanism"] for entry in report["ledger"]} == {
        "randomized_response",
        "secure_aggregation",
    }
    pruned = load_model(out)
    assert {tensor.dtype for tensor in pruned.state_dict().values()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32
