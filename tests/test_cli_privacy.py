"""``fedprune privacy`` and ``fedprune audit``: planning figures and report checks from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedprune.cli import main
from privacy.ledger import Mechanism, MechanismEvent, PrivacyLedger
from privacy.randomized_response import RandomizedResponse
from privacy.report import (
    PrivacyReport,
    ThreatModel,
    build_report,
    contributors_parameter,
    sign_report,
    write_signed_report,
)
from privacy.signing import grouped_fingerprint, key_fingerprint, load_or_create_signing_key, public_key_path


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
    assert figures["epsilon"] == figures["rdp"] == pytest.approx(41.6455, abs=5e-5)
    assert figures["prv"] == pytest.approx(39.39, abs=0.01)
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


SITE_KEY = Ed25519PrivateKey.generate()
OTHER_SITE_KEYS = (Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def signed_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return the report, signed with the coordinator's long-term key, and that key's file."""
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
    ledger.record(
        MechanismEvent(
            mechanism=Mechanism.SECURE_AGGREGATION,
            participant="coordinator",
            count=1000,
            parameters={
                "participants": 3,
                "threshold": 3,
                "survivors": 3,
                "colluders": 1,
                "contributors": contributors_parameter(["site-a", "site-b", "site-c"]),
                "summed": "keep_votes",
            },
        )
    )
    from privacy.signing import sign_participant_statement

    # Every site whose votes were summed signs its statement (site-b and site-c applied no mechanism).
    statement = sign_participant_statement(
        participant="site-a", run_id="cli-run", events=[ledger.entries[0].event], private_key=SITE_KEY
    )
    others = [
        sign_participant_statement(participant=name, run_id="cli-run", events=[], private_key=key)
        for name, key in (("site-b", OTHER_SITE_KEYS[0]), ("site-c", OTHER_SITE_KEYS[1]))
    ]
    report = build_report(
        ledger=ledger,
        threat_model=ThreatModel(
            participants=3, secure_aggregation_threshold=3, max_colluding_participants=1
        ),
        delta=1e-6,
        run_id="cli-run",
        participant_statements=[statement, *others],
    )
    key_path = directory / "keys" / "coordinator.key"
    path = write_signed_report(report, key_path, directory / "report.json")
    return path, key_path


def test_audit_verify_authenticates_only_against_a_pinned_key(
    signed_report: tuple[Path, Path], capsys
) -> None:
    path, key_path = signed_report
    # No pin: UNAUTHENTICATED first, exit 1, unless asked for the self-consistency checks alone.
    assert main(["audit", "verify", str(path)]) == 1
    assert capsys.readouterr().out.startswith("UNAUTHENTICATED")
    assert main(["audit", "verify", str(path), "--unauthenticated"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("UNAUTHENTICATED") and "self-consistent, unauthenticated" in out
    assert "signature valid" not in out and "trusted key" not in out
    assert ".pub" not in out  # never suggests a key shipped beside the report
    key = load_or_create_signing_key(key_path)
    for option, pin in (
        ("--trusted-key", grouped_fingerprint(key)),
        ("--trusted-key", key_fingerprint(key)),
        ("--trusted-key-file", str(public_key_path(key_path))),
    ):
        assert main(["audit", "verify", str(path), option, pin]) == 0
        assert "signature valid: authenticated" in capsys.readouterr().out
    other = key_fingerprint(Ed25519PrivateKey.generate())
    assert main(["audit", "verify", str(path), "--trusted-key", other, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["field"] == "signature.public_key"


def test_audit_verify_pins_participants_keys(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, key_path = signed_report
    trusted = ["--trusted-key", key_fingerprint(load_or_create_signing_key(key_path))]
    assert main(["audit", "verify", str(path), *trusted]) == 0
    assert "statement of site-a: 1 events" in capsys.readouterr().out
    pin = f"site-a={key_fingerprint(SITE_KEY)}"
    outcome = _json_out(capsys, ["audit", "verify", str(path), *trusted, "--participant-key", pin, "--json"])
    assert outcome["statements"][0]["authenticated"] is True
    wrong = f"site-a={key_fingerprint(Ed25519PrivateKey.generate())}"
    assert main(["audit", "verify", str(path), *trusted, "--participant-key", wrong, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["field"] == "participant_statements[0].public_key"
    # A site's key file goes under its own option; under --participant-key it is refused, never read.
    site_file = tmp_path / "site-a.pub"
    site_file.write_bytes(SITE_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    by_file = ["--participant-key-file", f"site-a={site_file}", "--json"]
    assert _json_out(capsys, ["audit", "verify", str(path), *trusted, *by_file])["statements"][0][
        "authenticated"
    ]
    assert main(["audit", "verify", str(path), *trusted, "--participant-key", f"site-a={site_file}"]) == 2
    assert "--participant-key-file" in capsys.readouterr().err


def test_audit_verify_refuses_a_threat_model_the_ledger_contradicts(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    # A forger edits the participants to 100,000 (so the aggregation bound would turn valid) and re-signs.
    path, _ = signed_report
    data = json.loads(path.read_text(encoding="utf-8"))
    data["threat_model"].update(
        participants=100_000, secure_aggregation_threshold=99_999, minimum_honest_survivors=99_998
    )
    data.pop("signature")
    forged = tmp_path / "forged.json"
    forged.write_text(sign_report(PrivacyReport.model_validate(data), Ed25519PrivateKey.generate()).to_json())
    assert main(["audit", "verify", str(forged), "--unauthenticated", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["field"] == "threat_model.participants"


def test_audit_verify_names_the_tampered_field(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, _ = signed_report
    data = json.loads(path.read_text(encoding="utf-8"))
    data["guarantees"][0]["epsilon"] = 1.0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data), encoding="utf-8")
    assert main(["audit", "verify", str(tampered), "--unauthenticated", "--json"]) == 1
    outcome = json.loads(capsys.readouterr().out)
    assert outcome == {"ok": False, "field": "guarantees[0].epsilon", "error": outcome["error"]}


def test_audit_show_renders_markdown_and_html(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, key_path = signed_report
    trusted = ["--trusted-key", key_fingerprint(load_or_create_signing_key(key_path))]
    assert main(["audit", "show", str(path), *trusted]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**verified: every figure recomputed, signature valid, authenticated")
    assert "# Privacy report `cli-run`" in out and "UNVERIFIED" not in out and "UNAUTHENTICATED" not in out
    assert "Participant statements" in out and "site-a (run); site-b (run); site-c (run)" in out
    page = tmp_path / "report.html"
    assert main(["audit", "show", str(path), *trusted, "--format", "html", "--output", str(page)]) == 0
    assert "<table>" in page.read_text(encoding="utf-8")


def test_audit_show_puts_unverified_first_for_a_tampered_report(
    signed_report: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    path, _ = signed_report
    data = json.loads(path.read_text(encoding="utf-8"))
    data["guarantees"][0]["epsilon"] = 1.0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data), encoding="utf-8")
    assert main(["audit", "show", str(tampered), "--unauthenticated"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("**UNVERIFIED") and "guarantees[0].epsilon" in captured.out.splitlines()[0]
    assert captured.err.startswith("UNVERIFIED")
    assert "signed: yes" not in captured.out and "verified: every figure" not in captured.out


def test_audit_verify_missing_file_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["audit", "verify", str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_audit_fingerprint_prints_what_the_operator_reads_aloud(
    signed_report: tuple[Path, Path], capsys
) -> None:
    _, key_path = signed_report
    expected = grouped_fingerprint(load_or_create_signing_key(key_path))
    for path in (key_path, public_key_path(key_path)):
        assert main(["audit", "fingerprint", str(path)]) == 0
        assert capsys.readouterr().out.startswith(expected)


# -- what an auditor verifies is what happened -------------------------------------------------------------


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Return the outcome of ``python -m fedprune.cli ARGS``, as an auditor's shell runs it."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(
        [sys.executable, "-m", "fedprune.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environment,
        check=False,
    )


REPOSITORY = Path(__file__).resolve().parent.parent


def _forged_bundle(signed: Path, directory: Path, operator_fingerprint: str) -> Path:
    """Return a forged report, re-signed with the forger's key, in a bundle that plants that key's file
    under the real operator's fingerprint (and its grouped spelling) beside it."""
    forger = Ed25519PrivateKey.generate()
    data = json.loads(signed.read_text(encoding="utf-8"))
    data.pop("signature")
    data["exclusions"] = ["nothing is excluded"]  # the lie the forger wants an auditor to read as vouched for
    forged = directory / "privacy_report.json"
    forged.write_text(sign_report(PrivacyReport.model_validate(data), forger).to_json(), encoding="utf-8")
    pem = forger.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (directory / operator_fingerprint).write_bytes(pem)
    return forged


def test_a_planted_key_file_named_after_the_operators_fingerprint_never_authenticates(
    signed_report: tuple[Path, Path], tmp_path: Path
) -> None:
    path, key_path = signed_report
    operator = key_fingerprint(load_or_create_signing_key(key_path))
    forged = _forged_bundle(path, tmp_path, operator)
    # The auditor pins the fingerprint the operator read out, working inside the forged bundle.
    for pin in (operator, grouped_fingerprint(load_or_create_signing_key(key_path))):
        verify = _cli("audit", "verify", forged.name, "--trusted-key", pin, "--json", cwd=tmp_path)
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert json.loads(verify.stdout)["field"] == "signature.public_key"
        show = _cli("audit", "show", forged.name, "--trusted-key", pin, cwd=tmp_path)
        assert show.returncode == 1
        assert show.stdout.startswith("**UNVERIFIED") and "signature valid" not in show.stdout
    # A file is read only when asked for by name, and then only under --trusted-key-file.
    planted = _cli("audit", "verify", forged.name, "--trusted-key-file", operator, cwd=tmp_path)
    assert planted.returncode == 0 and planted.stdout.startswith("OK")  # the auditor asked for that file
    wrong_option = _cli("audit", "verify", str(path), "--trusted-key", str(public_key_path(key_path)))
    assert wrong_option.returncode == 2 and "--trusted-key-file" in wrong_option.stderr
    assert "exactly 64 hex digits" in wrong_option.stderr
    real = _cli("audit", "verify", str(path), "--trusted-key", operator)
    assert real.returncode == 0 and "signature valid: authenticated" in real.stdout


def test_audit_show_without_a_pin_says_unauthenticated_first_and_fails(
    signed_report: tuple[Path, Path], tmp_path: Path
) -> None:
    path, key_path = signed_report
    forged = _forged_bundle(path, tmp_path, key_fingerprint(load_or_create_signing_key(key_path)))
    for report in (path, forged):
        shown = _cli("audit", "show", str(report))
        assert shown.returncode == 1
        assert shown.stdout.splitlines()[0].startswith("UNAUTHENTICATED")
        assert shown.stderr.startswith("UNAUTHENTICATED") and "# Privacy report" not in shown.stdout
        anyway = _cli("audit", "show", str(report), "--unauthenticated")
        assert anyway.returncode == 0, anyway.stderr
        first = anyway.stdout.splitlines()[0]
        assert first.startswith("**UNAUTHENTICATED") and "signature valid" not in anyway.stdout
        assert "verified" not in first
        verified = _cli("audit", "verify", str(report))
        assert verified.returncode == 1 and verified.stdout.startswith("UNAUTHENTICATED")


def test_a_site_whose_votes_were_summed_without_a_statement_is_listed_and_fails_verify(
    tmp_path: Path,
) -> None:
    from coordinator.report import build_run_report, secure_aggregation_event, write_run_report
    from privacy.signing import sign_participant_statement

    rr = RandomizedResponse(epsilon0=1.0)
    keys = {name: Ed25519PrivateKey.generate() for name in ("site-a", "site-b")}
    statements = [
        sign_participant_statement(
            participant=name,
            run_id="crash-run",
            events=[
                MechanismEvent(
                    mechanism=Mechanism.RANDOMIZED_RESPONSE,
                    participant=name,
                    round=block,
                    block=block,
                    count=64,
                    parameters={
                        "epsilon0": rr.epsilon0,
                        "requested_epsilon0": 1.0,
                        "threshold": rr.threshold,
                        "threshold_bits": 32,
                        "flip_probability": rr.flip_probability,
                    },
                )
                for block in range(2)
            ],
            private_key=key,
        )
        for name, key in keys.items()
    ]
    # site-c's votes were summed in both blocks; it crashed after the last session and sent no statement.
    events = [
        secure_aggregation_event(
            block=block,
            coordinates=64,
            participants=3,
            threshold=2,
            contributors=["site-a", "site-b", "site-c"],
            colluders=0,
        )
        for block in range(2)
    ]
    report = build_run_report(
        run_id="crash-run",
        participants=3,
        threshold=2,
        colluders=0,
        delta=1e-5,
        accountant_tolerance=0.15,
        record_level_dp=False,
        statements=statements,
        coordinator_events=events,
    )
    key_path = tmp_path / "coordinator.key"
    path = write_run_report(report, signing_key=key_path, directory=tmp_path / "out")
    pin = ["--trusted-key", key_fingerprint(load_or_create_signing_key(key_path))]
    refused = _cli("audit", "verify", str(path), *pin, "--json")
    assert refused.returncode == 1
    outcome = json.loads(refused.stdout)
    assert outcome["field"] == "participant_statements" and "'site-c'" in outcome["error"]
    assert "block(s) 0, 1" in outcome["error"] and "--allow-missing-statements" in outcome["error"]
    warned = _cli("audit", "verify", str(path), *pin, "--allow-missing-statements")
    assert warned.returncode == 0 and warned.stdout.startswith("OK")
    assert "WARNING site-c: NO SIGNED STATEMENT" in warned.stdout and "no guarantee for it" in warned.stdout
    shown = _cli("audit", "show", str(path), *pin, "--allow-missing-statements")
    assert shown.returncode == 0
    assert "WARNING: no signed statement by site-c" in shown.stdout.splitlines()[0]
    assert "| site-c | — | — | NO SIGNED STATEMENT" in shown.stdout
    assert "site-c (block 0, block 1)" in shown.stdout
    # The coordinator cannot drop site-c from the names and keep the count: the event must list every survivor.
    data = json.loads(path.read_text(encoding="utf-8"))
    data["ledger"][-1]["event"]["parameters"]["contributors"] = '["site-a","site-b"]'
    data.pop("signature")
    forged = tmp_path / "dropped.json"
    forged.write_text(json.dumps(data), encoding="utf-8")
    dropped = _cli("audit", "verify", str(forged), "--unauthenticated", "--json")
    assert dropped.returncode == 1 and json.loads(dropped.stdout)["field"].startswith("ledger[")
