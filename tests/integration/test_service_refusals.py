"""Who the service refuses, how each refusal reads to the refused side, and that none disturbs the run.

One federation: the three sites of the run take part with privacy on (the default) while four others are
refused beside them (a certificate from another CA, a name not in the run, another base model, a site
whose minimums the run does not meet); the run completes and its signed report verifies with every
participant's signature.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.harness import (
    NAMES,
    fedprune,
    free_address,
    make_federation,
    make_model,
    make_pki,
    start_coordinator,
    start_participant,
)

pytestmark = pytest.mark.slow


def test_refusals_beside_a_private_run_whose_signed_report_verifies_with_every_signature(
    tmp_path: Path,
) -> None:
    from privacy.signing import key_fingerprint, load_or_create_signing_key
    from pruning.layout import base_model_fingerprint
    from pruning.model_io import load_model

    federation = make_federation(tmp_path / "fed")
    # A certificate for a listed name, but from another CA; the participant trusts the real CA.
    foreign = make_pki(tmp_path / "foreign-ca", "site-b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(federation.pki / "ca.pem", mixed / "ca.pem")
    for suffix in ("pem", "key"):
        shutil.copy(foreign / f"site-b.{suffix}", mixed / f"site-b.{suffix}")
    other_model = make_model(tmp_path / "other-model", seed=7)
    # A refused process holds its site's one identity key, in a state directory of its own (one daemon
    # per state directory: a second one on the site's directory is refused for that, tested below).
    for name in NAMES:
        load_or_create_signing_key(federation.root / f"state-{name}" / "identity_key.pem")

    def beside(name: str, label: str) -> dict[str, object]:
        return {
            "state": tmp_path / f"state-{label}",
            "identity_key": federation.root / f"state-{name}" / "identity_key.pem",
        }

    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in NAMES]
    refused = {
        "foreign CA": start_participant(
            federation,
            "site-b",
            address,
            pki=mixed,
            max_retry_time_s=20.0,
            label="foreign-ca",
            runtime=beside("site-b", "foreign-ca"),
        ),
        "unknown name": start_participant(federation, "outsider", address),
        "other model": start_participant(
            federation,
            "site-c",
            address,
            model=other_model,
            label="other-model",
            runtime=beside("site-c", "other-model"),
        ),
        "weaker run": start_participant(
            federation,
            "site-a",
            address,
            minimums={"max_epsilon0": 1.0},
            label="weaker-run",
            runtime=beside("site-a", "weaker-run"),
        ),
    }
    try:
        outputs = {}
        for why, process in refused.items():
            assert process.wait(timeout=90) != 0, f"{why}:\n{process.output()}"
            outputs[why] = process.output()
        # The exit status is in the message: a signal (negative) would point at a crash, not at the check.
        foreign_status = refused["foreign CA"].popen.returncode
        assert "TLS handshake" in outputs["foreign CA"], f"exit {foreign_status}:\n{outputs['foreign CA']}"
        assert "PERMISSION_DENIED" in outputs["unknown name"] and "outsider" in outputs["unknown name"]
        assert "configuration error" in outputs["unknown name"]
        assert refused["weaker run"].popen.returncode == 1
        assert "[privacy] max_epsilon0 = 1: the run's epsilon0 4 is larger" in outputs["weaker run"]
        for model in (federation.model, other_model):
            assert base_model_fingerprint(load_model(model)).hex() in outputs["other model"]

        # None of them stopped the coordinator or the sites of the run.
        for process in participants:
            assert process.wait(timeout=120) == 0, process.output()
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
        assert (
            "FAILED_PRECONDITION" in coordinator.output() or "FAILED_PRECONDITION" in outputs["other model"]
        )
    finally:
        for process in (coordinator, *refused.values(), *participants):
            process.stop()

    report = federation.out / "privacy_report.json"
    assert report.is_file() and (federation.out / "config.json").is_file()
    args = [
        "audit",
        "verify",
        str(report),
        "--trusted-key",
        key_fingerprint(load_or_create_signing_key(federation.signing_key)),
    ]
    for name in NAMES:
        key = load_or_create_signing_key(federation.root / f"state-{name}" / "identity_key.pem")
        args += ["--participant-key", f"{name}={key_fingerprint(key)}"]
    result = fedprune(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in NAMES:
        assert f"statement of {name}" in result.stdout


def test_a_second_daemon_on_a_state_directory_in_use_stops_before_it_does_anything(tmp_path: Path) -> None:
    from privacy.durable import DirectoryLock

    federation = make_federation(tmp_path / "fed")
    address = free_address()  # nothing listens: a daemon that got past the lock would retry, not exit 2
    site_state = federation.root / "state-site-a"
    site_state.mkdir(parents=True)
    coordinator_state = federation.root / "state"  # the harness's [output] state
    coordinator_state.mkdir(parents=True)
    held = [
        DirectoryLock(site_state, what="runtime.state"),
        DirectoryLock(coordinator_state, what="output.state"),
    ]
    try:
        federation.server["address"] = address
        coordinator, _ = start_coordinator(federation)
        site = start_participant(federation, "site-a", address, max_retry_time_s=60.0)
        for process, what in ((site, "runtime.state"), (coordinator, "output.state")):
            assert process.wait(timeout=90) == 2, process.output()
            assert f"{what} " in process.output() and "is in use by another process" in process.output()
            assert f"pid {os.getpid()}" in process.output()
    finally:
        for lock in held:
            lock.release()
