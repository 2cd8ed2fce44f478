"""The signed privacy report: a versioned pydantic model, its guarantees, verification, Ed25519 signing.

Public API::

    report = build_report(ledger=ledger, threat_model=ThreatModel(participants=4,
                          secure_aggregation_threshold=3, max_colluding_participants=1),
                          delta=1e-5, run_id="run-42", exclusions=["embeddings and LM head: not pruned"],
                          participant_statements=[...])   # checked as `audit verify` would, or raises
    path = write_signed_report(report, signing_key_path, out)   # long-term key; verified, then written
    signed = sign_report(report, private_key)           # cryptography Ed25519PrivateKey (long-term)
    verify_report(report_or_json, trusted_public_key=, trusted_participant_keys=,
                  allow_missing_statements=) -> VerifiedReport
    render_markdown(report, verification=, failure=);  render_html(...)
    PrivacyReport.from_json(text)
    compute_guarantees(entries, inputs, threat_model)   # the figures, from the ledger and raw inputs only
    check_threat_model(threat_model, entries)           # the threat model against the secure-aggregation events
    report_json_schema()                                # == privacy/report_schema.json (a test checks it)

The modules import one way, each only the ones before it: :mod:`~privacy.report.schema` (the models and
the JSON Schema), :mod:`~privacy.report.guarantees` (what the ledger's events imply: sessions, threat
model, figures), :mod:`~privacy.report.verify` (every check ``fedprune audit verify`` runs),
:mod:`~privacy.report.build` (build, sign, write through :mod:`privacy.durable`) and
:mod:`~privacy.report.render` (Markdown and HTML for ``fedprune audit show``). Keys and participants'
statements are in :mod:`privacy.signing`.

A report covers exactly one run (``runs_covered`` = 1, ``composition_across_runs`` says how runs on the
same data add up); budgets across runs are kept by :mod:`privacy.budget`.
"""

from privacy.report.build import build_report, library_versions, sign_report, write_signed_report
from privacy.report.guarantees import (
    AMPLIFICATION_INVALID_WITH_UPDATES,
    SECURE_AGGREGATION_PARAMETERS,
    SecureAggregationSession,
    SummedInputs,
    check_threat_model,
    compute_guarantees,
    contributions,
    contributors_parameter,
    derive_minimum_honest_survivors,
    gaussian_releases,
    is_close,
    secure_aggregation_sessions,
)
from privacy.report.render import render_html, render_markdown, verification_status
from privacy.report.schema import (
    ACROSS_RUNS,
    DATA_DEPENDENT_ABORTS,
    PRIVACY_UNITS,
    REPORT_SIGNATURE_CONTEXT,
    REPORT_VERSION,
    SCHEMA_PATH,
    AccountingInputs,
    Guarantee,
    PrivacyReport,
    PrivacyUnit,
    ReportVerificationError,
    RngSource,
    Signature,
    ThreatModel,
    report_json_schema,
    write_report_schema,
)
from privacy.report.verify import (
    MissingStatement,
    MissingStatementError,
    StatementCheck,
    VerifiedReport,
    check_unsigned,
    verify_report,
)
from privacy.secagg.parameters import tolerated_colluders

__all__ = [
    "ACROSS_RUNS",
    "AMPLIFICATION_INVALID_WITH_UPDATES",
    "DATA_DEPENDENT_ABORTS",
    "PRIVACY_UNITS",
    "REPORT_SIGNATURE_CONTEXT",
    "REPORT_VERSION",
    "SCHEMA_PATH",
    "SECURE_AGGREGATION_PARAMETERS",
    "AccountingInputs",
    "Guarantee",
    "MissingStatement",
    "MissingStatementError",
    "PrivacyReport",
    "PrivacyUnit",
    "ReportVerificationError",
    "RngSource",
    "SecureAggregationSession",
    "Signature",
    "StatementCheck",
    "SummedInputs",
    "ThreatModel",
    "VerifiedReport",
    "build_report",
    "check_threat_model",
    "check_unsigned",
    "compute_guarantees",
    "contributions",
    "contributors_parameter",
    "derive_minimum_honest_survivors",
    "gaussian_releases",
    "is_close",
    "library_versions",
    "render_html",
    "render_markdown",
    "report_json_schema",
    "secure_aggregation_sessions",
    "sign_report",
    "tolerated_colluders",
    "verification_status",
    "verify_report",
    "write_report_schema",
    "write_signed_report",
]
