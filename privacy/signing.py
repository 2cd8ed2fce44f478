"""Long-term Ed25519 keys, their fingerprints, pinned trust, and participants' signed privacy statements.

Public API::

    key = load_or_create_signing_key(path)     # PEM (PKCS#8), created 0600 if absent, <path>.pub beside it
    key_fingerprint(public_key) -> str         # SHA-256 of the raw 32-byte key, 64 hex characters
    grouped_fingerprint(public_key) -> str     # "3f2a 9c01 ..." the full fingerprint in groups of four
    TrustedKey.from_fingerprint(text)          # a pinned key by value: exactly 64 hex digits (grouping allowed)
    TrustedKey.from_key_file(path)             # a pinned key from a public-key file (PEM, hex, raw)
    TrustedKey.parse(text)                     # a fingerprint when it looks like one, else a key file
    statement = sign_participant_statement(participant=, run_id=, events=, private_key=)
    verify_statement_signature(statement)      # raises StatementError; proves integrity, not identity

Why long-term keys: a key made for each run and shipped beside the report proves nothing about origin,
since a forger re-signs with a fresh key. Origin is proved only against a key (or its fingerprint) the
auditor obtained out of band: from the coordinator's operator for the report, from each site for its
statement. Without one the verifier can only say "self-consistent, unauthenticated".

Each signature is over a domain-separated message (``b"fedprune <kind> v1\\0"`` + canonical JSON), so a
participant's identity key, which also signs its secure-aggregation key advertisements, can never have a
statement confused with another kind of signed message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from pydantic import BaseModel, ConfigDict, Field

from privacy.errors import PrivacyError
from privacy.ledger import MechanismEvent, canonical_json

logger = logging.getLogger(__name__)

REPORT_SIGNATURE_CONTEXT = b"fedprune privacy report v2\x00"
STATEMENT_SIGNATURE_CONTEXT = b"fedprune participant statement v1\x00"
MIN_FINGERPRINT_HEX = 32
"""A pinned fingerprint must give at least 128 bits (32 hex digits) of the SHA-256."""
FULL_FINGERPRINT_HEX = 64
"""An auditor's pin (``TrustedKey.from_fingerprint``) is the whole SHA-256: 64 hex digits."""


class SigningKeyError(PrivacyError):
    """A signing key file or a trusted key cannot be used."""


class StatementError(PrivacyError):
    """A participant statement is malformed or its signature does not verify; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def raw_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """Return the 32 raw bytes of the public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """Return the fingerprint of a public key: SHA-256 of its raw 32 bytes, lowercase hex."""
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return hashlib.sha256(raw).hexdigest()


def grouped_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """Return the full fingerprint in sixteen groups of four hex digits, for reading aloud and pinning."""
    full = key_fingerprint(key)
    return " ".join(full[i : i + 4] for i in range(0, len(full), 4))


def _normalise_fingerprint(text: str) -> str:
    # People paste fingerprints with spaces, colons or dashes between the groups; none of those matter.
    return re.sub(r"[\s:\-]", "", text).lower()


def load_public_key(material: str | bytes) -> Ed25519PublicKey:
    """Return the Ed25519 public key in ``material`` (raw 32 bytes, 64 hex characters, or PEM)."""
    data = material.encode() if isinstance(material, str) else material
    try:
        if data.strip().startswith(b"-----BEGIN"):
            key = load_pem_public_key(data.strip())
            if not isinstance(key, Ed25519PublicKey):
                raise SigningKeyError("the PEM key is not an Ed25519 public key")
            return key
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode().strip()))
    except (ValueError, UnicodeDecodeError) as error:
        if isinstance(error, SigningKeyError):
            raise
        raise SigningKeyError(f"not an Ed25519 public key: {error}") from error


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """A key the auditor pinned out of band: its fingerprint (full, or at least a 128-bit prefix)."""

    fingerprint: str
    source: str = ""

    def __post_init__(self) -> None:
        value = _normalise_fingerprint(self.fingerprint)
        if not re.fullmatch(r"[0-9a-f]+", value) or not MIN_FINGERPRINT_HEX <= len(value) <= 64:
            raise SigningKeyError(
                f"trusted key fingerprint must be {MIN_FINGERPRINT_HEX} to 64 hex digits "
                f"(SHA-256 of the raw public key), got {self.fingerprint!r}"
            )
        object.__setattr__(self, "fingerprint", value)

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey, *, source: str = "") -> TrustedKey:
        """Return the pin of a public key the auditor holds."""
        return cls(key_fingerprint(key), source=source)

    @classmethod
    def from_fingerprint(cls, text: str, *, source: str = "fingerprint") -> TrustedKey:
        """Return the pin of the full fingerprint ``text``: exactly 64 hex digits, grouping allowed.

        Spaces, colons and dashes between groups are ignored (``grouped_fingerprint`` prints spaces).
        Nothing else is accepted, and ``text`` is never opened as a file: a file that a report's sender
        planted under a fingerprint's name must not become the pin.
        """
        value = _normalise_fingerprint(text)
        if len(value) != FULL_FINGERPRINT_HEX or not re.fullmatch(r"[0-9a-f]+", value):
            raise SigningKeyError(
                f"{text!r} is not a key fingerprint: expected exactly {FULL_FINGERPRINT_HEX} hex digits "
                "(SHA-256 of the raw public key, optionally in groups of four)"
            )
        return cls(value, source=source)

    @classmethod
    def from_key_file(cls, path: str | Path) -> TrustedKey:
        """Return the pin of the public key in the file ``path`` (PEM, 64 hex characters, or raw 32 bytes)."""
        key_path = Path(path)
        try:
            material = key_path.read_bytes()
        except OSError as error:
            raise SigningKeyError(f"cannot read public-key file {key_path}: {error.strerror}") from None
        try:
            key = load_public_key(material)
        except SigningKeyError as error:
            raise SigningKeyError(f"public-key file {key_path}: {error}") from None
        return cls.from_public_key(key, source=str(key_path))

    @classmethod
    def parse(cls, text: str) -> TrustedKey:
        """Return the pin named by ``text``: a fingerprint if it reads as one, else a public-key file.

        Which it is depends on ``text`` alone, never on which files exist: 32 to 64 hex digits (grouping
        allowed) are always a fingerprint, even when a file of that name exists, so a planted file cannot
        replace a pin. A bare 64-hex-digit string is a fingerprint, never a raw public key.
        """
        value = _normalise_fingerprint(text)
        if re.fullmatch(r"[0-9a-f]+", value) and MIN_FINGERPRINT_HEX <= len(value) <= FULL_FINGERPRINT_HEX:
            return cls(value, source="fingerprint")
        if Path(text).is_file():
            return cls.from_key_file(text)
        raise SigningKeyError(
            f"{text!r} is neither a readable public-key file nor a fingerprint of "
            f"{MIN_FINGERPRINT_HEX} to {FULL_FINGERPRINT_HEX} hex digits"
        )

    def matches(self, key: Ed25519PublicKey | bytes) -> bool:
        """Return True when ``key`` (or its raw bytes) has this fingerprint."""
        actual = key_fingerprint(key)[: len(self.fingerprint)]
        return hmac.compare_digest(actual, self.fingerprint)


# --------------------------------------------------------------------------------------------------
# Long-term signing key file
# --------------------------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the file itself was fsynced
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def public_key_path(signing_key_path: Path) -> Path:
    """Return where the public half of a signing key is written: ``<signing_key_path>.pub``."""
    return signing_key_path.with_name(signing_key_path.name + ".pub")


def _write_public_half(key: Ed25519PrivateKey, path: Path) -> None:
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    target = public_key_path(path)
    if not target.exists() or target.read_bytes() != pem:
        target.write_bytes(pem)


def _create_signing_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()  # the OS CSPRNG, via OpenSSL
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not both create (and one overwrite) the key;
    # mode 0600 from the first byte, so the private key is never readable by others, even briefly.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, pem)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    _fsync_directory(path.parent)
    logger.info("created long-term signing key %s (fingerprint %s)", path, grouped_fingerprint(key))
    return key


def _load_signing_key(key_path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise SigningKeyError(
            f"signing_key {key_path} has mode {mode:04o}; it must be readable by its owner only "
            f"(chmod 600 {key_path})"
        )
    try:
        loaded = load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"signing_key {key_path} is not an unencrypted PEM key: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"signing_key {key_path} is not an Ed25519 private key")
    return loaded


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Return the long-term Ed25519 key in ``path`` (PEM), creating it (mode 0600) if absent.

    The public half is (re)written beside it as ``<path>.pub`` for the operator to hand to auditors
    together with :func:`grouped_fingerprint`, out of band. An existing key file readable or writable by
    group or others is refused: a report key others can read proves nothing.
    """
    key_path = Path(path)
    try:
        key = _create_signing_key(key_path)
    except FileExistsError:
        key = _load_signing_key(key_path)
    _write_public_half(key, key_path)
    return key


# --------------------------------------------------------------------------------------------------
# Participants' signed statements
# --------------------------------------------------------------------------------------------------


class ParticipantStatement(BaseModel):
    """What one participant attests it applied in one run, signed with its own long-term key.

    ``events`` are exactly its mechanism events (randomized response eps0, threshold and coordinates;
    Gaussian noise multipliers, sample rates and release counts), in the order of the run's ledger.
    Exact record counts are deliberately absent: under add/remove-one DP the corpus size differs between
    neighbours, so publishing it exactly, or any function of it, would undo the guarantee:
    ``data_size_class`` stays optional only so that statements of earlier versions still verify, and a
    participant leaves it empty.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    participant: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="participant's Ed25519 key, raw hex")
    events: list[MechanismEvent]
    data_size_class: str | None = None
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="Ed25519 signature, hex")

    def signed_payload(self) -> bytes:
        """Return the bytes the participant signed: context + canonical JSON without ``signature``."""
        return STATEMENT_SIGNATURE_CONTEXT + canonical_json(
            self.model_dump(mode="json", exclude={"signature"})
        )

    @property
    def fingerprint(self) -> str:
        """Return the fingerprint of the participant's public key."""
        return key_fingerprint(bytes.fromhex(self.public_key))


def sign_participant_statement(
    *,
    participant: str,
    run_id: str,
    events: Sequence[MechanismEvent],
    private_key: Ed25519PrivateKey,
    data_size_class: str | None = None,
) -> ParticipantStatement:
    """Return the participant's statement of its own events in run ``run_id``, signed with its key."""
    foreign = [i for i, event in enumerate(events) if event.participant != participant]
    if foreign:
        raise StatementError(
            f"events[{foreign[0]}].participant",
            f"a statement by {participant!r} may only hold its own events",
        )
    unsigned = {
        "participant": participant,
        "run_id": run_id,
        "public_key": raw_public_key(private_key).hex(),
        "events": [event.model_dump(mode="json") for event in events],
        "data_size_class": data_size_class,
    }
    signature = private_key.sign(STATEMENT_SIGNATURE_CONTEXT + canonical_json(unsigned))
    return ParticipantStatement.model_validate({**unsigned, "signature": signature.hex()})


def verify_statement_signature(statement: ParticipantStatement, *, field: str = "statement") -> None:
    """Return None when the statement's signature verifies under its own key; raise StatementError if not."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(statement.public_key))
    try:
        key.verify(bytes.fromhex(statement.signature), statement.signed_payload())
    except InvalidSignature:
        raise StatementError(f"{field}.signature", "does not verify under the statement's key") from None
