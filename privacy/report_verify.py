"""Checking and rendering a privacy report: what ``fedprune audit verify`` and ``audit show`` run.

Public API::

    verify_report(report_or_json, trusted_public_key=None) -> VerifiedReport   # raises on any mismatch
    ReportVerificationError.field                    # e.g. "guarantees[0].epsilon", "ledger[3].event"
    render_markdown(report) -> str;  render_html(report) -> str
    load_public_key(text_or_bytes) -> Ed25519PublicKey   (raw 32 bytes, 64 hex chars, or PEM)

Order of checks, each naming the first field that does not match: the schema (pydantic), the hash chain
and ``ledger_head``, the parameters each ledger event derives from others (RR eps0 and flip probability
from the integer threshold; Gaussian per-statistic multipliers from the block multiplier and clip share;
clip shares of one release with squares summing to at most 1), every guarantee recomputed from the ledger
and ``inputs`` (relative tolerance 1e-4), and last the Ed25519 signature. Without a trusted key the
embedded key is used, which proves integrity but not who signed: the result says so.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
from collections import defaultdict
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from pydantic import ValidationError

from privacy.errors import PrivacyError
from privacy.ledger import ChainError, Mechanism, verify_chain
from privacy.randomized_response import THRESHOLD_BITS, epsilon0_from_threshold
from privacy.report import PrivacyReport, compute_guarantees, is_close

logger = logging.getLogger(__name__)


class ReportVerificationError(PrivacyError):
    """A report failed verification; ``field`` is the path of the first field that does not match."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class VerifiedReport:
    """A report that passed every check, and whether its signer's key was the trusted one."""

    report: PrivacyReport
    signer_trusted: bool
    checked_figures: int


def load_public_key(material: str | bytes) -> Ed25519PublicKey:
    """Return the Ed25519 public key in ``material`` (raw 32 bytes, 64 hex characters, or PEM)."""
    data = material.encode() if isinstance(material, str) else material
    try:
        if data.strip().startswith(b"-----BEGIN"):
            key = load_pem_public_key(data.strip())
            if not isinstance(key, Ed25519PublicKey):
                raise PrivacyError("the PEM key is not an Ed25519 public key")
            return key
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode().strip()))
    except (ValueError, UnicodeDecodeError) as error:
        raise PrivacyError(f"not an Ed25519 public key: {error}") from error


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
        for name in ("layer", "participant", "unit", "composition", "delta"):
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
            if isinstance(detail, (int, float)) and numeric and (
                isinstance(mine, bool)
                or not isinstance(mine, (int, float))
                or not is_close(float(mine), float(detail))
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


def verify_report(
    report: PrivacyReport | str | bytes | dict[str, Any],
    *,
    trusted_public_key: Ed25519PublicKey | None = None,
) -> VerifiedReport:
    """Return the verified report; raise ReportVerificationError naming the first field that does not match."""
    parsed = _parse(report)
    try:
        head = verify_chain(parsed.ledger)
    except ChainError as error:
        raise ReportVerificationError(error.field, str(error).split(": ", 1)[-1]) from None
    if head != parsed.ledger_head:
        raise ReportVerificationError("ledger_head", "is not the hash of the last ledger entry")
    _check_event_parameters(parsed)
    checked = _compare_guarantees(parsed)
    if parsed.signature is None:
        raise ReportVerificationError("signature", "the report is not signed")
    embedded = Ed25519PublicKey.from_public_bytes(bytes.fromhex(parsed.signature.public_key))
    key = trusted_public_key or embedded
    if trusted_public_key is not None and trusted_public_key.public_bytes(
        Encoding.Raw, PublicFormat.Raw
    ) != bytes.fromhex(parsed.signature.public_key):
        raise ReportVerificationError("signature.public_key", "is not the trusted key")
    try:
        key.verify(bytes.fromhex(parsed.signature.value), parsed.signed_payload())
    except InvalidSignature:
        raise ReportVerificationError("signature.value", "does not verify over the report") from None
    return VerifiedReport(
        report=parsed, signer_trusted=trusted_public_key is not None, checked_figures=checked
    )


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def _rows(report: PrivacyReport) -> list[tuple[str, list[list[str]]]]:
    tm = report.threat_model
    sections: list[tuple[str, list[list[str]]]] = [
        (
            "Run",
            [
                ["run id", report.run_id],
                ["created", report.created_at],
                ["report version", report.report_version],
                [
                    "signed",
                    "yes (Ed25519, key " + report.signature.public_key[:16] + "…)"
                    if report.signature
                    else "NO",
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
                ["minimum honest survivors", str(tm.minimum_honest_survivors)],
                ["input-validity proof for votes", "yes" if tm.input_validity_proof else "no"],
                ["transport", tm.transport],
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


_TABLES_WITH_HEADER = {"Guarantees", "Ledger"}


def render_markdown(report: PrivacyReport) -> str:
    """Return the report as Markdown: tables for the run, threat model, guarantees and ledger."""
    lines = [f"# Privacy report `{report.run_id}`", ""]
    for title, rows in _rows(report):
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


def render_html(report: PrivacyReport) -> str:
    """Return the report as a standalone HTML page."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Privacy report {html.escape(report.run_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.2em .5em;vertical-align:top}</style></head><body>",
        f"<h1>Privacy report <code>{html.escape(report.run_id)}</code></h1>",
    ]
    for title, rows in _rows(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        body = rows
        if title in _TABLES_WITH_HEADER:
            parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
            body = rows[1:]
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
