"""Building, signing and writing a run's privacy report.

::

    report = build_report(ledger=ledger, threat_model=ThreatModel(participants=4,
                          secure_aggregation_threshold=3, max_colluding_participants=1),
                          delta=1e-5, run_id="run-42", exclusions=["embeddings and LM head: not pruned"],
                          participant_statements=[...])   # checked as `audit verify` would, or raises
    path = write_signed_report(report, signing_key_path, out)   # long-term key; verified, then written
    signed = sign_report(report, private_key)           # cryptography Ed25519PrivateKey (long-term)

Signature: Ed25519 over ``b"fedprune privacy report v2\\0"`` and the canonical JSON (sorted keys, no
whitespace, UTF-8) of the report's JSON form without its ``signature`` field; it covers the participants'
signed statements.
"""

from __future__ import annotations

import datetime
import logging
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy import accounting
from privacy.durable import write_durably
from privacy.ledger import PrivacyLedger, verify_chain
from privacy.report.guarantees import (
    check_threat_model,
    compute_guarantees,
    derive_minimum_honest_survivors,
    secure_aggregation_sessions,
)
from privacy.report.schema import (
    PRIVACY_UNITS,
    AccountingInputs,
    PrivacyReport,
    ReportVerificationError,
    RngSource,
    Signature,
    ThreatModel,
)
from privacy.report.verify import check_unsigned, verify_report
from privacy.signing import (
    ParticipantStatement,
    TrustedKey,
    grouped_fingerprint,
    load_or_create_signing_key,
)

logger = logging.getLogger(__name__)

_LIBRARIES = ("fedprune", "torch", "opacus", "cryptography", "numpy", "pydantic", "transformers")


def library_versions() -> dict[str, str]:
    """Return the versions of Python and the libraries the figures depend on."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_report(
    *,
    ledger: PrivacyLedger,
    threat_model: ThreatModel,
    delta: float,
    run_id: str,
    extra_deltas: Sequence[float] | None = None,
    accountant_tolerance: float = accounting.DEFAULT_ACCOUNTANT_TOLERANCE,
    exclusions: Sequence[str] = (),
    created_at: str | None = None,
    participant_statements: Sequence[ParticipantStatement] = (),
) -> PrivacyReport:
    """Return the unsigned report of a run after checking it as ``audit verify`` would (all but the signature).

    ``threat_model.minimum_honest_survivors`` is derived from the ledger's secure-aggregation events; a
    caller-given value that differs is refused. Raises :class:`ReportVerificationError` (a PrivacyError)
    naming the field when the ledger, threat model, statements or accountants do not hold together, so a
    caller that builds the report first never writes a model whose report would not verify.
    """
    if extra_deltas is None:
        extra_deltas = [float(f"{d:.6g}") for d in (delta * 10, delta / 10, delta / 100) if 0 < d < 1]
    inputs = AccountingInputs(
        delta=delta, extra_deltas=list(extra_deltas), accountant_tolerance=accountant_tolerance
    )
    entries = list(ledger.entries)
    head = verify_chain(entries)
    colluders = threat_model.max_colluding_participants
    assert colluders is not None  # filled in by the model's validator
    derived = derive_minimum_honest_survivors(secure_aggregation_sessions(entries), colluders=colluders)
    if threat_model.minimum_honest_survivors not in (None, derived):
        raise ReportVerificationError(
            "threat_model.minimum_honest_survivors",
            f"is derived from the ledger ({derived}: smallest survivors minus max_colluding_participants); "
            f"do not set it (given {threat_model.minimum_honest_survivors})",
        )
    try:
        threat_model = ThreatModel.model_validate(
            {**threat_model.model_dump(), "minimum_honest_survivors": derived}
        )
    except ValueError as error:
        raise ReportVerificationError("threat_model", str(error)) from None
    check_threat_model(threat_model, entries)
    report = PrivacyReport(
        run_id=run_id,
        created_at=created_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        library_versions=library_versions(),
        threat_model=threat_model,
        privacy_units=PRIVACY_UNITS,
        rng=RngSource(),
        inputs=inputs,
        ledger=entries,
        ledger_head=head,
        guarantees=compute_guarantees(entries, inputs, threat_model),
        exclusions=list(exclusions),
        participant_statements=list(participant_statements),
    )
    check_unsigned(report, recompute=False)  # the figures were just computed from the same inputs
    return report


def sign_report(report: PrivacyReport, private_key: Ed25519PrivateKey) -> PrivacyReport:
    """Return a copy of ``report`` carrying an Ed25519 signature by ``private_key``.

    Use the coordinator's long-term key (:func:`privacy.signing.load_or_create_signing_key`); a key
    made for one run proves nothing about who signed.
    """
    unsigned = report.model_copy(update={"signature": None})
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = private_key.sign(unsigned.signed_payload())
    return unsigned.model_copy(
        update={"signature": Signature(public_key=public.hex(), value=signature.hex())}
    )


def write_signed_report(report: PrivacyReport, signing_key_path: str | Path, out: str | Path) -> Path:
    """Return the path of the report written after signing it with the long-term key and verifying it.

    ``signing_key_path`` is loaded, or created (0600, public half at ``<signing_key_path>.pub``) if
    absent. ``out`` is the report file, or a directory that receives ``privacy_report.json``. The signed
    report is verified against the key it was signed with before anything is written, and written
    with :func:`privacy.durable.write_durably` (temporary file, fsync, rename, directory fsync), so a reader
    never sees half a report and a written report survives a crash.
    """
    key = load_or_create_signing_key(signing_key_path)
    signed = sign_report(report, key)
    # A site that sent no statement is listed as such in the report, not a reason to withhold it.
    verify_report(
        signed, trusted_public_key=TrustedKey.from_public_key(key.public_key()), allow_missing_statements=True
    )
    target = Path(out)
    if target.is_dir():
        target = target / "privacy_report.json"
    write_durably(target, signed.to_json().encode("utf-8"))
    logger.info(
        "privacy report %s signed by key %s (give auditors this fingerprint out of band)",
        target,
        grouped_fingerprint(key),
    )
    return target
