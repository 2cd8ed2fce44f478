"""Long-term signing keys: created owner-only, public half beside them, fingerprints, pinned trust."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy.ledger import Mechanism, MechanismEvent
from privacy.signing import (
    SigningKeyError,
    StatementError,
    TrustedKey,
    grouped_fingerprint,
    key_fingerprint,
    load_or_create_signing_key,
    public_key_path,
    raw_public_key,
    sign_participant_statement,
    verify_statement_signature,
)


def test_the_key_is_created_owner_only_and_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "coordinator" / "report.key"
    created = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path) == tmp_path / "coordinator" / "report.key.pub"
    assert public_key_path(path).read_bytes() == created.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    assert raw_public_key(load_or_create_signing_key(path)) == raw_public_key(created)


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "report.key"
    load_or_create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_signing_key(path)


def test_the_fingerprint_is_the_sha256_of_the_raw_key_grouped_for_reading() -> None:
    key = Ed25519PrivateKey.generate()
    digest = hashlib.sha256(raw_public_key(key)).hexdigest()
    assert key_fingerprint(key) == key_fingerprint(key.public_key()) == digest
    grouped = grouped_fingerprint(key)
    assert grouped.replace(" ", "") == digest and len(grouped.split()) == 16


def test_a_pin_is_a_key_file_or_a_fingerprint_of_at_least_128_bits(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    key_file = tmp_path / "site.pub"
    key_file.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for pin in (TrustedKey.parse(str(key_file)), TrustedKey.parse(grouped_fingerprint(key))):
        assert pin.matches(key.public_key()) and not pin.matches(other.public_key())
    with pytest.raises(SigningKeyError, match="32 to 64 hex"):
        TrustedKey.parse(key_fingerprint(key)[:16])
    # A bare 64-hex string is a fingerprint, never a raw public key: the key's own hex does not pin it.
    assert not TrustedKey.parse(raw_public_key(key).hex()).matches(key.public_key())


def test_an_auditors_pin_is_the_full_fingerprint_by_value(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    for text in (key_fingerprint(key), grouped_fingerprint(key), key_fingerprint(key).upper()):
        assert TrustedKey.from_fingerprint(text).matches(key.public_key())
    for text in (key_fingerprint(key)[:32], key_fingerprint(key) + "0", "g" * 64, str(tmp_path / "k.pub")):
        with pytest.raises(SigningKeyError, match="exactly 64 hex digits"):
            TrustedKey.from_fingerprint(text)
    key_file = tmp_path / "k.pub"
    key_file.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert TrustedKey.from_key_file(key_file).matches(key.public_key())
    with pytest.raises(SigningKeyError, match="cannot read public-key file"):
        TrustedKey.from_key_file(tmp_path / "absent.pub")


def test_a_planted_file_named_after_a_fingerprint_is_never_the_pin(tmp_path: Path, monkeypatch) -> None:
    # A forger ships its own key in a file named after the real operator's fingerprint, in the directory
    # the auditor works in. The text is a fingerprint, so the file is never read, however it is spelled.
    operator, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    monkeypatch.chdir(tmp_path)
    pem = forger.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for name in (key_fingerprint(operator), key_fingerprint(operator)[:32]):
        (tmp_path / name).write_bytes(pem)
        for pin in (
            TrustedKey.parse(name),
            *(() if len(name) < 64 else (TrustedKey.from_fingerprint(name),)),
        ):
            assert pin.matches(operator.public_key()) and not pin.matches(forger.public_key())


def _event(participant: str) -> MechanismEvent:
    return MechanismEvent(
        mechanism=Mechanism.RANDOMIZED_RESPONSE,
        participant=participant,
        count=5,
        parameters={"epsilon0": 1.0},
    )


def test_a_statement_holds_only_the_participants_own_events_and_detects_edits() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(StatementError) as error:
        sign_participant_statement(
            participant="site-a", run_id="r", events=[_event("site-b")], private_key=key
        )
    assert error.value.field == "events[0].participant"
    statement = sign_participant_statement(
        participant="site-a", run_id="r", events=[_event("site-a")], private_key=key
    )
    verify_statement_signature(statement)
    assert statement.fingerprint == key_fingerprint(key)
    edited = statement.model_copy(update={"run_id": "another"})
    with pytest.raises(StatementError):
        verify_statement_signature(edited)
