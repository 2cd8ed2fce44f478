"""``fedprune privacy`` and ``fedprune audit``: planning figures and report checks from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedprune.cli import main
from privacy.ledger import Mechanism, MechanismEvent, PrivacyLedger
from privacy.randomized_response import RandomizedResponse
from privacy.report import ThreatModel, build_report, sign_report


def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_privacy_rr_prints_the_exact_composition(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _json_out(
        capsys, ["privacy", "rr", "--epsilon0", "1", "--coordinates", "100", "--delta", "1e-5", "--json"]
    )
    assert figures["epsilon"] == pytest.approx(79.84, abs=0.05)
    assert figures["naive_epsilon"] == pytest.approx(100.0)
    assert figures["flip_probability"] == pytest.approx(0.2689414, abs=1e-6)
    assert main(["privacy", "rr", "--epsilon0", "1", "--coordinates", "100", "--delta", "1e-5"]) == 0
    assert "79.84" in capsys.readouterr().out


def test_privacy_rr_states_amplification_only_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["privacy", "rr", "--epsilon0", "1", "--coordinates", "10", "--delta", "1e-5", "--json"]
    assert _json_out(capsys, [*base, "--honest-voters", "5"])["amplification"]["valid"] is False
    large = _json_out(capsys, [*base, "--honest-voters", "100000"])["amplification"]
    assert large["valid"] is True and large["epsilon_per_coordinate"] < 1.0


def test_privacy_gaussian_golden_value_and_inverse(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _json_out(
        capsys, ["privacy", "gaussian", "--sigma", "1", "--releases", "32", "--delta", "1e-5", "--json"]
    )
    assert 39.3 <= figures["epsilon"] <= 41.7 and 39.3 <= figures["prv"] <= figures["rdp"] <= 41.7
    inverse = _json_out(
        capsys,
        ["privacy", "gaussian", "--target-epsilon", "8", "--releases", "12", "--delta", "1e-5", "--json"],
    )
    assert inverse["epsilon"] <= 8.0 and inverse["noise_multiplier"] > 1.0


def test_privacy_gaussian_accountant_disagreement_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "privacy",
        "gaussian",
        "--sigma",
        "1",
        "--releases",
        "12",
        "--delta",
        "1e-5",
        "--sample-rate",
        "0.1",
    ]
    assert main(argv) == 2
    assert "disagree" in capsys.readouterr().err
    assert main([*argv, "--accountant-tolerance", "0.3"]) == 0


@pytest.fixture(scope="module")
def signed_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("report")
    ledger = PrivacyLedger()
    rr = RandomizedResponse(epsilon0=2.0)
    ledger.record(
        MechanismEvent(
            mechanism=Mechanism.RANDOMIZED_RESPONSE,
            participant="site-a",
            count=1000,
            parameters={
                "epsilon0": rr.epsilon0,
                "requested_epsilon0": 2.0,
                "threshold": rr.threshold,
                "threshold_bits": 32,
                "flip_probability": rr.flip_probability,
            },
        )
    )
    report = build_report(
        ledger=ledger,
        threat_model=ThreatModel(participants=3, secure_aggregation_threshold=2, minimum_honest_survivors=2),
        delta=1e-6,
        run_id="cli-run",
    )
    key = Ed25519PrivateKey.generate()
    path = directory / "report.json"
    path.write_text(sign_report(report, key).to_json(), encoding="utf-8")
    public = directory / "signer.pub"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path, public


def test_audit_verify_accepts_a_good_report(signed_report: tuple[Path, Path], capsys) -> None:
    path, public = signed_report
    assert main(["audit", "verify", str(path), "--public-key", str(public)]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_audit_verify_names_the_tampered_field(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, _ = signed_report
    data = json.loads(path.read_text(encoding="utf-8"))
    data["guarantees"][0]["epsilon"] = 1.0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data), encoding="utf-8")
    assert main(["audit", "verify", str(tampered), "--json"]) == 1
    outcome = json.loads(capsys.readouterr().out)
    assert outcome == {"ok": False, "field": "guarantees[0].epsilon", "error": outcome["error"]}


def test_audit_show_renders_markdown_and_html(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, _ = signed_report
    assert main(["audit", "show", str(path)]) == 0
    assert "# Privacy report `cli-run`" in capsys.readouterr().out
    page = tmp_path / "report.html"
    assert main(["audit", "show", str(path), "--format", "html", "--output", str(page)]) == 0
    assert "<table>" in page.read_text(encoding="utf-8")


def test_audit_verify_missing_file_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["audit", "verify", str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
