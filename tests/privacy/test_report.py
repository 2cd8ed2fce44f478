"""The signed privacy report: build, sign, verify, tamper detection naming the field, schema up to date."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.calibration_dp import DPStatisticAggregator
from privacy.ledger import GENESIS_HASH, ChainError, Mechanism, MechanismEvent, PrivacyLedger, verify_chain
from privacy.randomized_response import RandomizedResponse
from privacy.report import SCHEMA_PATH, ThreatModel, build_report, report_json_schema, sign_report
from privacy.report_verify import ReportVerificationError, render_html, render_markdown, verify_report
from pruning.statistics import StatisticKind

KEY = Ed25519PrivateKey.generate()


def _run_ledger() -> PrivacyLedger:
    ledger = PrivacyLedger()
    aggregator = DPStatisticAggregator(noise_multiplier=2.0, ledger=ledger, participant="site-a")
    for block in range(2):
        aggregator.begin_block(
            block_index=block,
            kind=StatisticKind.COLUMN_SQUARES,
            sublayers={"attn.c_attn": 8, "mlp.c_proj": 16},
        )
        for _ in range(4):
            aggregator.add("attn.c_attn", torch.rand(8))
            aggregator.add("mlp.c_proj", torch.rand(16))
        aggregator.result("attn.c_attn")
    rr = RandomizedResponse(epsilon0=1.0)
    rr.randomize(np.zeros(100, dtype=bool))
    ledger.record(
        MechanismEvent(
            mechanism=Mechanism.RANDOMIZED_RESPONSE,
            participant="site-a",
            count=rr.coordinates,
            parameters={
                "epsilon0": rr.epsilon0,
                "requested_epsilon0": 1.0,
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
            count=100,
            parameters={"participants": 4, "threshold": 3, "survivors": 4},
        )
    )
    return ledger


@pytest.fixture(scope="module")
def signed_json() -> str:
    report = build_report(
        ledger=_run_ledger(),
        threat_model=ThreatModel(participants=4, secure_aggregation_threshold=3, minimum_honest_survivors=2),
        delta=1e-5,
        run_id="test-run",
        exclusions=["embeddings and LM head are not pruned"],
    )
    return sign_report(report, KEY).to_json()


def _tampered(text: str, change) -> str:
    data = json.loads(text)
    change(data)
    return json.dumps(data)


def test_a_signed_report_verifies_and_recomputes_every_figure(signed_json: str) -> None:
    verified = verify_report(signed_json, trusted_public_key=KEY.public_key())
    assert verified.signer_trusted and verified.checked_figures >= 10
    layers = [g.layer for g in verified.report.guarantees]
    assert layers == ["calibration_statistics", "mask_bits", "aggregation"]
    mask = verified.report.guarantees[1]
    assert mask.epsilon == pytest.approx(79.84, abs=0.05)  # 100 coordinates at eps0 = 1: never "1-DP"
    assert mask.details["epsilon0_per_coordinate"] == pytest.approx(1.0)
    aggregation = verified.report.guarantees[2]
    assert aggregation.epsilon is None and aggregation.details["valid"] is False  # n = 2 is far too small
    assert verified.report.threat_model.max_colluding_participants == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda d: d["guarantees"][0].__setitem__("epsilon", d["guarantees"][0]["epsilon"] * 0.9),
            "guarantees[0].epsilon",
        ),
        (
            lambda d: d["guarantees"][1]["details"].__setitem__("coordinates", 10),
            "guarantees[1].details.coordinates",
        ),
        (
            lambda d: d["ledger"][1]["event"]["parameters"].__setitem__("noise_multiplier", 9.0),
            "ledger[1].event",
        ),
        (lambda d: d["ledger"].pop(0), "ledger[0].index"),
        (lambda d: d["signature"].__setitem__("value", "0" * 128), "signature.value"),
        (lambda d: d["inputs"].__setitem__("delta", 2e-5), "guarantees[0].delta"),
        (lambda d: d.__setitem__("run_id", "another-run"), "signature.value"),
        (lambda d: d["threat_model"].__setitem__("participants", "four"), "threat_model.participants"),
    ],
)
def test_tampering_fails_verification_naming_the_field(signed_json: str, change, field: str) -> None:
    with pytest.raises(ReportVerificationError) as error:
        verify_report(_tampered(signed_json, change))
    assert error.value.field == field


def test_a_consistent_forgery_needs_the_signing_key(signed_json: str) -> None:
    # Changing a figure and re-signing with another key passes only without a trusted key.
    from privacy.report import PrivacyReport

    forged = sign_report(PrivacyReport.from_json(signed_json), Ed25519PrivateKey.generate()).to_json()
    verify_report(forged)
    with pytest.raises(ReportVerificationError) as error:
        verify_report(forged, trusted_public_key=KEY.public_key())
    assert error.value.field == "signature.public_key"


def test_derived_ledger_parameters_are_checked(signed_json: str) -> None:
    from privacy.ledger import LedgerEntry, entry_hash
    from privacy.report import PrivacyReport

    report = PrivacyReport.from_json(signed_json)
    entries = list(report.ledger)
    rr_index = next(i for i, e in enumerate(entries) if e.event.mechanism is Mechanism.RANDOMIZED_RESPONSE)
    # Rebuild a consistent chain around a lie about eps0: the chain holds, the arithmetic does not.
    ledger = PrivacyLedger()
    for entry in entries:
        event = entry.event
        if entry.index == rr_index:
            event = event.model_copy(update={"parameters": {**event.parameters, "epsilon0": 0.5}})
        ledger.record(event)
    rebuilt = report.model_copy(update={"ledger": list(ledger.entries), "ledger_head": ledger.head})
    with pytest.raises(ReportVerificationError) as error:
        verify_report(sign_report(rebuilt, KEY).to_json())
    assert error.value.field == f"ledger[{rr_index}].parameters.epsilon0"
    assert (
        isinstance(entries[0], LedgerEntry)
        and entry_hash(0, GENESIS_HASH, entries[0].event) == entries[0].entry_hash
    )


def test_the_hash_chain_detects_reordering() -> None:
    ledger = _run_ledger()
    entries = list(ledger.entries)
    entries[0], entries[1] = entries[1], entries[0]
    with pytest.raises(ChainError):
        verify_chain(entries)


def test_rendering_shows_the_guarantees(signed_json: str) -> None:
    from privacy.report import PrivacyReport

    report = PrivacyReport.from_json(signed_json)
    markdown = render_markdown(report)
    assert "## Guarantees" in markdown and "calibration_statistics" in markdown and "79.84" in markdown
    assert render_html(report).startswith("<!doctype html>")


def test_exported_json_schema_is_up_to_date() -> None:
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == report_json_schema(), (
        "privacy/report_schema.json is stale: run python -m privacy.report"
    )
