"""Who the service refuses, and how each refusal reads to the operator of the refused side."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.harness import (
    make_federation,
    make_model,
    make_pki,
    start_coordinator,
    start_participant,
)

pytestmark = pytest.mark.slow


def test_foreign_certificates_unknown_names_other_models_and_weaker_runs_are_refused(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed")
    # A certificate for a listed name, but from another CA; the participant trusts the real CA.
    foreign = make_pki(tmp_path / "foreign-ca", "site-b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(federation.pki / "ca.pem", mixed / "ca.pem")
    for suffix in ("pem", "key"):
        shutil.copy(foreign / f"site-b.{suffix}", mixed / f"site-b.{suffix}")
    other_model = make_model(tmp_path / "other-model", seed=7)

    coordinator, address = start_coordinator(federation)
    refused = {
        "foreign CA": start_participant(federation, "site-b", address, pki=mixed, max_retry_time_s=20.0),
        "unknown name": start_participant(federation, "outsider", address),
        "other model": start_participant(federation, "site-c", address, model=other_model),
        "weaker run": start_participant(federation, "site-a", address, minimums={"max_epsilon0": 1.0}),
    }
    try:
        outputs = {}
        for why, process in refused.items():
            assert process.wait(timeout=60) != 0, f"{why}:\n{process.output()}"
            outputs[why] = process.output()
        assert "TLS handshake" in outputs["foreign CA"], outputs["foreign CA"]
        assert "PERMISSION_DENIED" in outputs["unknown name"] and "outsider" in outputs["unknown name"]
        assert "configuration error" in outputs["unknown name"]
        assert refused["weaker run"].popen.returncode == 1
        assert "epsilon0 4 exceeds max_epsilon0 1" in outputs["weaker run"]
        log = coordinator.output()
        assert "FAILED_PRECONDITION" in log or "FAILED_PRECONDITION" in outputs["other model"]
        from pruning.layout import base_model_fingerprint
        from pruning.model_io import load_model

        for model in (federation.model, other_model):
            assert base_model_fingerprint(load_model(model)).hex() in outputs["other model"]
        assert coordinator.popen.poll() is None, "a refused participant must not stop the coordinator"
    finally:
        coordinator.stop()
        for process in refused.values():
            process.stop()
