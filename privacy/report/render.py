"""Rendering a privacy report for reading (``fedprune audit show``): Markdown or HTML, status first.

Public API::

    render_markdown(report, verification=, failure=) -> str;  render_html(...) -> str
    verification_status(verification, failure) -> str   # UNVERIFIED, UNAUTHENTICATED or verified

Only a report whose signature verified under a pinned coordinator key is called verified.
"""

from __future__ import annotations

import html
import math

from privacy.report.guarantees import contributions, secure_aggregation_sessions
from privacy.report.schema import PrivacyReport
from privacy.report.verify import UNAUTHENTICATED, VerifiedReport
from privacy.signing import grouped_fingerprint


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
