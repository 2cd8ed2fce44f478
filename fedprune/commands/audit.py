"""``fedprune audit verify|show REPORT``: check a signed privacy report, or render it for reading.

``verify`` checks the schema, the ledger's hash chain, every derived parameter, recomputes every figure
from the ledger and raw inputs, and checks the Ed25519 signature (against ``--public-key`` when given;
otherwise against the embedded key, which proves integrity only). It exits 0 when all hold and 1 naming
the first field that does not match. ``show`` prints Markdown (default) or HTML.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="verify or show a signed privacy report", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify = commands.add_parser("verify", help="check signature, hash chain and every figure")
    verify.add_argument("report", type=Path, help="privacy report (JSON)")
    verify.add_argument("--public-key", type=Path, help="trusted Ed25519 public key (PEM, raw or hex)")
    verify.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    verify.set_defaults(handler=run_verify)
    show = commands.add_parser("show", help="render the report as Markdown or HTML")
    show.add_argument("report", type=Path, help="privacy report (JSON)")
    show.add_argument("--format", choices=("markdown", "html"), default="markdown")
    show.add_argument("--output", type=Path, help="write to this file instead of standard output")
    show.set_defaults(handler=run_show)


def _read(path: Path) -> bytes:
    from fedprune.errors import CommandError

    try:
        return path.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None


def run_verify(args: argparse.Namespace) -> int:
    from privacy.report_verify import ReportVerificationError, load_public_key, verify_report

    trusted = load_public_key(_read(args.public_key)) if args.public_key else None
    try:
        verified = verify_report(_read(args.report), trusted_public_key=trusted)
    except ReportVerificationError as error:
        if args.json:
            print(json.dumps({"ok": False, "field": error.field, "error": str(error)}, sort_keys=True))
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    signer = (
        "trusted key"
        if verified.signer_trusted
        else "embedded key only (no --public-key: integrity, not identity)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "checked_figures": verified.checked_figures,
                    "signer_trusted": verified.signer_trusted,
                },
                sort_keys=True,
            )
        )
    else:
        print(
            f"OK {args.report}: hash chain of {len(verified.report.ledger)} entries, "
            f"{verified.checked_figures} figures recomputed, signature valid ({signer})"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from privacy.report import PrivacyReport
    from privacy.report_verify import render_html, render_markdown, verify_report

    text = _read(args.report)
    try:
        report = PrivacyReport.from_json(text)
    except ValueError:
        report = verify_report(text).report  # raises naming the bad field
    rendered = render_html(report) if args.format == "html" else render_markdown(report)
    if args.output:
        args.output.write_text(rendered, encoding="utf-8")
    else:
        print(rendered)
    return 0
