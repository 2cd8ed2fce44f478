"""Checking and rendering a privacy report: what ``fedprune audit verify`` and ``audit show`` run.

Public API::

    verify_report(report_or_json, trusted_public_key=None, trusted_participant_keys=None,
                  allow_missing_statements=False) -> VerifiedReport
    check_unsigned(report, recompute=True) -> int   # every check but the signature (build_report runs it)
    ReportVerificationError.field                    # e.g. "guarantees[0].epsilon", "threat_model.participants"
    render_markdown(report, verification=, failure=) -> str;  render_html(...) -> str
    load_public_key(text_or_bytes) -> Ed25519PublicKey   (raw 32 bytes, 64 hex chars, or PEM)

Order of checks, each naming the first field that does not match: the schema (pydantic), the hash chain
and ``ledger_head``, the parameters each ledger event derives from others (RR eps0 and flip probability
from the integer threshold; Gaussian per-statistic multipliers from the block multiplier and clip share;
clip shares of one release with squares summing to at most 1; secure-aggregation events' participants,
threshold, survivors, colluders, the survivors' names and what was summed), the run scope, the threat
model against the secure-aggregation events (participants, threshold, colluders, and minimum honest
survivors = smallest survivors - colluders), each participant statement (its signature, its run id, and
its events equal to that participant's events in the ledger, so the coordinator cannot forge a site's
claim), every guarantee recomputed from the ledger and ``inputs`` (relative tolerance 1e-4; the
aggregation bound only where the sessions summed keep-votes alone), the coordinator's Ed25519 signature
over the whole, and last that every site whose input was summed (or whose events the ledger holds) sent
a signed statement, unless ``allow_missing_statements``.

Authentication needs keys pinned out of band: ``trusted_public_key`` for the coordinator (a public key or
a :class:`~privacy.signing.TrustedKey` fingerprint) and ``trusted_participant_keys`` (name -> pin) for the
sites. Without a pin a signature proves only that the report (or statement) is self-consistent under the
key embedded in it: anyone can re-sign a forged report with a fresh key. The result says which.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from privacy.errors import PrivacyError
from privacy.ledger import ChainError, Mechanism, verify_chain
from privacy.randomized_response import THRESHOLD_BITS, epsilon0_from_threshold
from privacy.report import (
    ACROSS_RUNS,
    PrivacyReport,
    ReportVerificationError,
    check_threat_model,
    compute_guarantees,
    contributions,
    is_close,
    secure_aggregation_sessions,
)
from privacy.signing import (
    StatementError,
    TrustedKey,
    grouped_fingerprint,
    load_public_key,
    verify_statement_signature,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MissingStatement",
    "MissingStatementError",
    "ReportVerificationError",
    "StatementCheck",
    "VerifiedReport",
    "check_unsigned",
    "load_public_key",
    "render_html",
    "render_markdown",
    "verify_report",
]

UNAUTHENTICATED = "self-consistent, unauthenticated"


class MissingStatementError(ReportVerificationError):
    """A site whose input was summed (or whose events the ledger holds) sent no signed statement."""

    def __init__(self, missing: tuple[MissingStatement, ...]) -> None:
        first = missing[0]
        super().__init__(
            "participant_statements",
            f"has no statement by {first.participant!r} ({len(missing)} participant(s) without one): "
            f"{first.meaning}",
        )
        self.missing = missing


@dataclasses.dataclass(frozen=True)
class StatementCheck:
    """A participant statement that verified, and whether its key was pinned by the auditor."""

    participant: str
    fingerprint: str
    authenticated: bool
    events: int


@dataclasses.dataclass(frozen=True)
class MissingStatement:
    """A participant the report names (a contributor to a sum, or events in the ledger) without a statement."""

    participant: str
    blocks: tuple[int | None, ...]
    """The blocks of the secure-aggregation sessions that summed its input (empty: none did)."""
    has_events: bool
    """Whether the ledger holds mechanism events of it (then attested by the coordinator alone)."""

    @property
    def meaning(self) -> str:
        """Return what the missing statement means for this participant's guarantee, in words."""
        if self.blocks:
            where = ", ".join("the run" if b is None else str(b) for b in self.blocks)
            summed = f"its input was summed in block(s) {where}, but it sent no signed statement"
        else:
            summed = "it sent no signed statement"
        if self.has_events:
            return (
                f"{summed}: its events in the ledger, and so its guarantees in this report, rest on the "
                "coordinator's word alone"
            )
        return (
            f"{summed} and the ledger holds no event of it: this report states no guarantee for it, and "
            "nothing here says which randomized response or record-level DP it applied"
        )


@dataclasses.dataclass(frozen=True)
class VerifiedReport:
    """A report that passed every check, and what its signatures prove."""

    report: PrivacyReport
    signer_trusted: bool
    """True only when the coordinator's key matched a key pinned by the auditor."""
    checked_figures: int
    signer_fingerprint: str = ""
    statements: tuple[StatementCheck, ...] = ()
    missing_statements: tuple[MissingStatement, ...] = ()
    """Participants that contributed to a sum or have ledger events, but sent no signed statement."""

    @property
    def unattested_participants(self) -> tuple[str, ...]:
        """Return the names of the participants without a signed statement."""
        return tuple(m.participant for m in self.missing_statements)

    @property
    def authentication(self) -> str:
        """Return what the coordinator's signature proves, in words."""
        if self.signer_trusted:
            return f"authenticated: signed by the pinned key {self.signer_fingerprint}"
        return (
            f"UNAUTHENTICATED: {UNAUTHENTICATED} under the key embedded in the report (fingerprint "
            f"{self.signer_fingerprint}); anyone can re-sign a forged report with a fresh key, so nothing "
            "in it is vouched for until the coordinator's key is pinned"
        )


def _parse(report: PrivacyReport | str | bytes | dict[str, Any]) -> PrivacyReport:
    if isinstance(report, PrivacyReport):
        return report
    try:
        if isinstance(report, dict):
            return PrivacyReport.model_validate(report)
        return PrivacyReport.from_json(report)
    except ValidationError as error:
        first = error.errors()[0]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(
            "."
        )
        raise ReportVerificationError(path or "report", first["msg"]) from None


def _check_event_parameters(report: PrivacyReport) -> None:
    shares: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for position, entry in enumerate(report.ledger):
        event, where = entry.event, f"ledger[{position}].parameters"
        params = event.parameters
        try:
            if event.mechanism is Mechanism.RANDOMIZED_RESPONSE:
                threshold = int(params["threshold"])
                if int(params.get("threshold_bits", THRESHOLD_BITS)) != THRESHOLD_BITS:
                    raise ReportVerificationError(f"{where}.threshold_bits", f"expected {THRESHOLD_BITS}")
                if not is_close(float(params["epsilon0"]), epsilon0_from_threshold(threshold), rel=1e-12):
                    raise ReportVerificationError(f"{where}.epsilon0", "does not follow from the threshold")
                if not is_close(float(params["flip_probability"]), threshold / 2**THRESHOLD_BITS, rel=1e-12):
                    raise ReportVerificationError(
                        f"{where}.flip_probability", "does not follow from the threshold"
                    )
            elif event.mechanism is Mechanism.GAUSSIAN:
                share = float(params["clip_share"])
                expected = float(params["block_noise_multiplier"]) / share
                if not is_close(float(params["noise_multiplier"]), expected, rel=1e-12):
                    raise ReportVerificationError(
                        f"{where}.noise_multiplier", "is not block_noise_multiplier / clip_share"
                    )
                if float(params.get("clip_norm", 1.0)) != 1.0:
                    raise ReportVerificationError(f"{where}.clip_norm", "must be 1 (unit-norm records)")
                shares[str(params.get("release", position))].append((position, share))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ReportVerificationError):
                raise
            raise ReportVerificationError(where, f"missing or malformed parameter: {error}") from None
    for parts in shares.values():
        if sum(share**2 for _, share in parts) > 1.0 + 1e-9:
            raise ReportVerificationError(
                f"ledger[{parts[-1][0]}].parameters.clip_share",
                "the clip shares of one release have squares summing to more than 1",
            )


def _compare_guarantees(report: PrivacyReport) -> int:
    try:
        recomputed = compute_guarantees(report.ledger, report.inputs, report.threat_model)
    except PrivacyError as error:
        raise ReportVerificationError("guarantees", f"cannot be recomputed: {error}") from None
    if len(recomputed) != len(report.guarantees):
        raise ReportVerificationError(
            "guarantees",
            f"the ledger gives {len(recomputed)} guarantees, the report lists {len(report.guarantees)}",
        )
    checked = 0
    for index, (reported, expected) in enumerate(zip(report.guarantees, recomputed, strict=True)):
        where = f"guarantees[{index}]"
        for name in ("layer", "participant", "unit", "composition", "delta", "assumptions"):
            if getattr(reported, name) != getattr(expected, name):
                raise ReportVerificationError(f"{where}.{name}", f"expected {getattr(expected, name)!r}")
        if not is_close(reported.epsilon, expected.epsilon):
            raise ReportVerificationError(
                f"{where}.epsilon", f"reported {reported.epsilon}, recomputed {expected.epsilon}"
            )
        checked += 1
        if set(reported.epsilon_at) != set(expected.epsilon_at):
            raise ReportVerificationError(f"{where}.epsilon_at", "lists different deltas than the inputs")
        for key, value in expected.epsilon_at.items():
            if not is_close(reported.epsilon_at[key], value):
                raise ReportVerificationError(
                    f"{where}.epsilon_at.{key}", f"reported {reported.epsilon_at[key]}, recomputed {value}"
                )
            checked += 1
        if set(reported.details) != set(expected.details):
            raise ReportVerificationError(f"{where}.details", "has different fields than recomputed")
        for key, detail in expected.details.items():
            mine = reported.details[key]
            numeric = isinstance(detail, (int, float)) and not isinstance(detail, bool)
            if (
                isinstance(detail, (int, float))
                and numeric
                and (
                    isinstance(mine, bool)
                    or not isinstance(mine, (int, float))
                    or not is_close(float(mine), float(detail))
                )
            ):
                raise ReportVerificationError(
                    f"{where}.details.{key}", f"reported {mine}, recomputed {detail}"
                )
            if not numeric and mine != detail:
                raise ReportVerificationError(
                    f"{where}.details.{key}", f"reported {mine!r}, recomputed {detail!r}"
                )
            checked += 1
    return checked


def _check_statements(
    report: PrivacyReport, pins: Mapping[str, TrustedKey]
) -> tuple[tuple[StatementCheck, ...], tuple[MissingStatement, ...]]:
    own_events: dict[str, list[Any]] = defaultdict(list)
    for entry in report.ledger:
        own_events[entry.event.participant].append(entry.event)
    checks: list[StatementCheck] = []
    seen: set[str] = set()
    for index, statement in enumerate(report.participant_statements):
        where = f"participant_statements[{index}]"
        if statement.participant in seen:
            raise ReportVerificationError(
                f"{where}.participant", f"{statement.participant!r} has two statements"
            )
        seen.add(statement.participant)
        if statement.run_id != report.run_id:
            raise ReportVerificationError(
                f"{where}.run_id", f"is {statement.run_id!r}, the report's run is {report.run_id!r}"
            )
        try:
            verify_statement_signature(statement, field=where)
        except StatementError as error:
            raise ReportVerificationError(error.field, str(error).split(": ", 1)[-1]) from None
        # The statement must say exactly what the ledger says of this participant: the coordinator
        # writes the ledger, so a ledger event the participant did not sign is the coordinator's claim.
        expected = own_events.get(statement.participant, [])
        for position, (claimed, recorded) in enumerate(zip(statement.events, expected, strict=False)):
            if claimed != recorded:
                raise ReportVerificationError(
                    f"{where}.events[{position}]",
                    f"differs from {statement.participant!r}'s event in the ledger",
                )
        if len(statement.events) != len(expected):
            raise ReportVerificationError(
                f"{where}.events",
                f"lists {len(statement.events)} events; the ledger has {len(expected)} "
                f"of {statement.participant!r}",
            )
        pin = pins.get(statement.participant)
        if pin is not None and not pin.matches(bytes.fromhex(statement.public_key)):
            raise ReportVerificationError(
                f"{where}.public_key", f"is not the key pinned for {statement.participant!r}"
            )
        checks.append(
            StatementCheck(
                participant=statement.participant,
                fingerprint=grouped_fingerprint(bytes.fromhex(statement.public_key)),
                authenticated=pin is not None,
                events=len(statement.events),
            )
        )
    missing = sorted(set(pins) - seen)
    if missing:
        raise ReportVerificationError(
            "participant_statements", f"has no statement by the pinned participant {missing[0]!r}"
        )
    summed = contributions(secure_aggregation_sessions(report.ledger))
    with_events = {
        name
        for name, events in own_events.items()
        if any(e.mechanism is not Mechanism.SECURE_AGGREGATION for e in events)
    }
    absent = tuple(
        MissingStatement(participant=name, blocks=summed.get(name, ()), has_events=name in with_events)
        for name in sorted((set(summed) | with_events) - seen)
    )
    return tuple(checks), absent


def check_unsigned(report: PrivacyReport, *, recompute: bool = True) -> int:
    """Return the number of figures recomputed after every check but the coordinator's signature.

    Raises ReportVerificationError naming the first field that does not match. ``recompute=False``
    skips recomputing the guarantees (for a report whose figures were just computed).
    """
    try:
        head = verify_chain(report.ledger)
    except ChainError as error:
        raise ReportVerificationError(error.field, str(error).split(": ", 1)[-1]) from None
    if head != report.ledger_head:
        raise ReportVerificationError("ledger_head", "is not the hash of the last ledger entry")
    _check_event_parameters(report)
    secure_aggregation_sessions(report.ledger)
    if report.composition_across_runs != ACROSS_RUNS:
        raise ReportVerificationError("composition_across_runs", "is not the statement this version makes")
    check_threat_model(report.threat_model, report.ledger)
    _check_statements(report, {})
    return _compare_guarantees(report) if recompute else 0


def _as_pin(key: Ed25519PublicKey | TrustedKey) -> TrustedKey:
    return key if isinstance(key, TrustedKey) else TrustedKey.from_public_key(key)


def verify_report(
    report: PrivacyReport | str | bytes | dict[str, Any],
    *,
    trusted_public_key: Ed25519PublicKey | TrustedKey | None = None,
    trusted_participant_keys: Mapping[str, Ed25519PublicKey | TrustedKey] | None = None,
    allow_missing_statements: bool = False,
) -> VerifiedReport:
    """Return the verified report; raise ReportVerificationError naming the first field that does not match.

    Without ``trusted_public_key`` the coordinator's signature is checked under the key embedded in the
    report, which proves self-consistency only (``signer_trusted`` is False). Participants named in
    ``trusted_participant_keys`` must have a statement signed by exactly that key. Every participant
    whose input a secure-aggregation session summed, or whose events the ledger holds, must have a
    signed statement; with ``allow_missing_statements`` the report verifies without it and
    ``missing_statements`` says who and what that means for its guarantee.
    """
    parsed = _parse(report)
    checked = check_unsigned(parsed)
    pins = {name: _as_pin(key) for name, key in (trusted_participant_keys or {}).items()}
    statements, absent = _check_statements(parsed, pins)
    if parsed.signature is None:
        raise ReportVerificationError("signature", "the report is not signed")
    embedded = bytes.fromhex(parsed.signature.public_key)
    if trusted_public_key is not None and not _as_pin(trusted_public_key).matches(embedded):
        raise ReportVerificationError("signature.public_key", "is not the trusted key")
    try:
        Ed25519PublicKey.from_public_bytes(embedded).verify(
            bytes.fromhex(parsed.signature.value), parsed.signed_payload()
        )
    except InvalidSignature:
        raise ReportVerificationError("signature.value", "does not verify over the report") from None
    verified = VerifiedReport(
        report=parsed,
        signer_trusted=trusted_public_key is not None,
        checked_figures=checked,
        signer_fingerprint=grouped_fingerprint(embedded),
        statements=statements,
        missing_statements=absent,
    )
    if absent and not allow_missing_statements:
        raise MissingStatementError(absent)
    return verified


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def verification_status(verification: VerifiedReport | None, failure: str | None) -> str:
    """Return one line saying what verification established: UNVERIFIED, UNAUTHENTICATED, or verified.

    Only a report whose signature verified under a pinned coordinator key is called verified; one
    checked under the key it carries itself is UNAUTHENTICATED, whatever else held.
    """
    if failure is not None:
        return f"UNVERIFIED: this report failed verification ({failure}); nothing in it is vouched for"
    if verification is None:
        return "UNVERIFIED: not checked (run fedprune audit verify)"
    if not verification.signer_trusted:
        line = (
            f"{verification.authentication}; its figures recompute from its own ledger, which proves "
            "nothing about who wrote it"
        )
    else:
        line = f"verified: every figure recomputed, signature valid, {verification.authentication}"
    if verification.missing_statements:
        names = ", ".join(m.participant for m in verification.missing_statements)
        line += f"; WARNING: no signed statement by {names} (see Participant statements)"
    return line


def _statement_rows(report: PrivacyReport, verification: VerifiedReport | None) -> list[list[str]]:
    rows = [["participant", "key fingerprint", "events", "status"]]
    checks = {c.participant: c for c in verification.statements} if verification else {}
    for statement in report.participant_statements:
        check = checks.get(statement.participant)
        if check is None:
            status = "not verified"
        elif check.authenticated:
            status = "authenticated: signed by the key pinned for this site"
        else:
            status = f"{UNAUTHENTICATED}: checked only under the key it carries (no key pinned for this site)"
        rows.append(
            [
                statement.participant,
                grouped_fingerprint(bytes.fromhex(statement.public_key)),
                str(len(statement.events)),
                status,
            ]
        )
    for missing in verification.missing_statements if verification else ():
        rows.append([missing.participant, "—", "—", f"NO SIGNED STATEMENT: {missing.meaning}"])
    return rows


def _block_subset_rows(report: PrivacyReport) -> list[list[str]]:
    """Return the contributors per block (counts, never identities) when block assignment gave subsets."""
    sessions = secure_aggregation_sessions(report.ledger)
    if all(s.participants == report.threat_model.participants for s in sessions):
        return []
    per_block: dict[int, int] = {}
    for session in sessions:
        if session.block is not None:
            previous = per_block.get(session.block, session.survivors)
            per_block[session.block] = min(previous, session.survivors)
    listed = ", ".join(f"block {block}: {count}" for block, count in sorted(per_block.items()))
    return [["contributors per block (block assignment; smallest survivors of its sessions)", listed]]


def _contributor_rows(report: PrivacyReport) -> list[list[str]]:
    """Return the sites whose inputs the secure-aggregation sessions summed, with their blocks."""
    summed = contributions(secure_aggregation_sessions(report.ledger))
    if not summed:
        return []
    listed = "; ".join(
        f"{name} ({', '.join('run' if b is None else f'block {b}' for b in blocks)})"
        for name, blocks in summed.items()
    )
    return [["sites whose input was summed (secure-aggregation survivors)", listed]]


def _rows(
    report: PrivacyReport, verification: VerifiedReport | None, failure: str | None
) -> list[tuple[str, list[list[str]]]]:
    tm = report.threat_model
    sections: list[tuple[str, list[list[str]]]] = [
        (
            "Run",
            [
                ["verification", verification_status(verification, failure)],
                ["run id", report.run_id],
                ["runs covered", f"{report.runs_covered}: {report.composition_across_runs}"],
                ["created", report.created_at],
                ["report version", report.report_version],
                [
                    "signer key fingerprint",
                    grouped_fingerprint(bytes.fromhex(report.signature.public_key))
                    if report.signature
                    else "none: the report is not signed",
                ],
                ["ledger entries", str(len(report.ledger))],
                ["ledger head", report.ledger_head],
            ],
        ),
        (
            "Threat model",
            [
                ["coordinator", tm.coordinator],
                ["participants", str(tm.participants)],
                ["secure-aggregation threshold t", str(tm.secure_aggregation_threshold)],
                ["max colluding participants", str(tm.max_colluding_participants)],
                [
                    "minimum honest survivors (smallest survivors recorded - colluders)",
                    str(tm.minimum_honest_survivors),
                ],
                ["input-validity proof for votes", "yes" if tm.input_validity_proof else "no"],
                ["transport", tm.transport],
                *_block_subset_rows(report),
                *_contributor_rows(report),
                ["data-dependent aborts (outside every guarantee)", tm.data_dependent_aborts],
            ],
        ),
        (
            "Privacy units",
            [[u.layer, f"{u.unit}; neighbours: {u.neighbouring_relation}"] for u in report.privacy_units],
        ),
    ]
    guarantee_rows = [
        ["layer", "participant", "epsilon", "at delta", "other deltas", "composition", "details"]
    ]
    for g in report.guarantees:
        guarantee_rows.append(
            [
                g.layer,
                g.participant,
                _fmt(g.epsilon),
                _fmt(g.delta),
                ", ".join(f"{k}: {_fmt(v)}" for k, v in g.epsilon_at.items() if float(k) != g.delta),
                g.composition,
                "; ".join(f"{k}={_fmt(v)}" for k, v in g.details.items()),
            ]
        )
    sections.append(("Guarantees", guarantee_rows))
    sections.append(("Participant statements", _statement_rows(report, verification)))
    ledger_rows = [["#", "mechanism", "participant", "round", "block", "statistic", "count", "parameters"]]
    for entry in report.ledger:
        e = entry.event
        ledger_rows.append(
            [
                str(entry.index),
                e.mechanism.value,
                e.participant,
                str(e.round),
                _fmt(e.block),
                _fmt(e.statistic),
                str(e.count),
                ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(e.parameters.items())),
            ]
        )
    sections.append(("Ledger", ledger_rows))
    sections.append(
        (
            "Randomness",
            [
                ["CSPRNG", report.rng.csprng],
                ["Gaussian sampler", report.rng.gaussian_sampler],
                ["RR threshold bits", str(report.rng.rr_threshold_bits)],
            ],
        )
    )
    sections.append(("Exclusions", [[item] for item in report.exclusions] or [["none stated"]]))
    sections.append(("Library versions", [[k, v] for k, v in sorted(report.library_versions.items())]))
    return sections


_TABLES_WITH_HEADER = {"Guarantees", "Ledger", "Participant statements"}


def render_markdown(
    report: PrivacyReport, *, verification: VerifiedReport | None = None, failure: str | None = None
) -> str:
    """Return the report as Markdown, its verification status first: UNVERIFIED, UNAUTHENTICATED or verified."""
    lines = [f"**{verification_status(verification, failure)}**", ""]
    lines += [f"# Privacy report `{report.run_id}`", ""]
    for title, rows in _rows(report, verification, failure):
        lines += [f"## {title}", ""]
        header = rows[0] if title in _TABLES_WITH_HEADER else ["item", "value"][: len(rows[0])] or ["item"]
        body = rows[1:] if title in _TABLES_WITH_HEADER else rows
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        lines.append("")
    for g in report.guarantees:
        if g.assumptions:
            lines += [f"**Assumptions of {g.layer} ({g.participant})**", ""]
            lines += [f"- {a}" for a in g.assumptions] + [""]
    return "\n".join(lines)


def render_html(
    report: PrivacyReport, *, verification: VerifiedReport | None = None, failure: str | None = None
) -> str:
    """Return the report as a standalone HTML page, its verification status first."""
    status = html.escape(verification_status(verification, failure))
    banner = (
        f"<p style='border:3px solid #c00;padding:.5em;font-weight:bold'>{status}</p>"
        if verification is None or not verification.signer_trusted or verification.missing_statements
        else f"<p>{status}</p>"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Privacy report {html.escape(report.run_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.2em .5em;vertical-align:top}</style></head><body>",
        banner,
        f"<h1>Privacy report <code>{html.escape(report.run_id)}</code></h1>",
    ]
    for title, rows in _rows(report, verification, failure):
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        body = rows
        if title in _TABLES_WITH_HEADER:
            parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
            body = rows[1:]
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
