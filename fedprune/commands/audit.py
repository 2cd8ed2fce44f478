"""``fedprune audit verify|show REPORT``: check a signed privacy report, or render it for reading.

``verify`` checks the schema, the ledger's hash chain, every derived parameter, the threat model against
the secure-aggregation events, each participant's signed statement, recomputes every figure from the
ledger and raw inputs, and checks the coordinator's Ed25519 signature. Origin is proved only against keys
the auditor obtained out of band: ``--trusted-key`` (the coordinator's public key file or its fingerprint)
and ``--participant-key NAME=KEY`` (repeatable). Without them the outcome is "self-consistent,
unauthenticated": anyone can re-sign a forged report with a fresh key. It exits 0 when all checks hold and
1 naming the first field that does not match.

``show`` verifies first, then prints Markdown (default) or HTML. A report that fails verification is shown
under a loud UNVERIFIED line with the reason, and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privacy.signing import TrustedKey


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trusted-key",
        metavar="FILE_OR_FINGERPRINT",
        help="the coordinator's public key (PEM, raw or hex file) or its SHA-256 fingerprint, "
        "obtained out of band from the coordinator's operator (never a key shipped with the report)",
    )
    # The former name, kept so existing scripts keep working; it means exactly --trusted-key.
    parser.add_argument("--public-key", dest="trusted_key", help=argparse.SUPPRESS)
    parser.add_argument(
        "--participant-key",
        action="append",
        default=[],
        metavar="NAME=FILE_OR_FINGERPRINT",
        help="pin a participant's statement key, obtained out of band from that site (repeatable)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="verify or show a signed privacy report", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify = commands.add_parser("verify", help="check signatures, hash chain, threat model and every figure")
    verify.add_argument("report", type=Path, help="privacy report (JSON)")
    _add_key_options(verify)
    verify.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    verify.set_defaults(handler=run_verify)
    show = commands.add_parser("show", help="verify, then render the report as Markdown or HTML")
    show.add_argument("report", type=Path, help="privacy report (JSON)")
    _add_key_options(show)
    show.add_argument("--format", choices=("markdown", "html"), default="markdown")
    show.add_argument("--output", type=Path, help="write to this file instead of standard output")
    show.set_defaults(handler=run_show)
    fingerprint = commands.add_parser(
        "fingerprint", help="print the fingerprint of a public or private key file, to compare out of band"
    )
    fingerprint.add_argument(
        "key", type=Path, help="Ed25519 key file (public: PEM, raw or hex; private: PEM)"
    )
    fingerprint.set_defaults(handler=run_fingerprint)


def _read(path: Path) -> bytes:
    from fedprune.errors import CommandError

    try:
        return path.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None


def _pins(args: argparse.Namespace) -> tuple[TrustedKey | None, dict[str, TrustedKey]]:
    from fedprune.errors import CommandError
    from privacy.signing import TrustedKey

    coordinator = TrustedKey.parse(args.trusted_key) if args.trusted_key else None
    participants: dict[str, TrustedKey] = {}
    for item in args.participant_key:
        name, separator, key = item.partition("=")
        if not separator or not name or not key:
            raise CommandError(f"--participant-key expects NAME=FILE_OR_FINGERPRINT, got {item!r}")
        participants[name] = TrustedKey.parse(key)
    return coordinator, participants


def run_verify(args: argparse.Namespace) -> int:
    from privacy.report_verify import ReportVerificationError, verify_report

    trusted, participants = _pins(args)
    try:
        verified = verify_report(
            _read(args.report), trusted_public_key=trusted, trusted_participant_keys=participants
        )
    except ReportVerificationError as error:
        if args.json:
            print(json.dumps({"ok": False, "field": error.field, "error": str(error)}, sort_keys=True))
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    statements = [
        {
            "participant": s.participant,
            "fingerprint": s.fingerprint,
            "authenticated": s.authenticated,
            "events": s.events,
        }
        for s in verified.statements
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "checked_figures": verified.checked_figures,
                    "signer_trusted": verified.signer_trusted,
                    "authentication": verified.authentication,
                    "signer_fingerprint": verified.signer_fingerprint,
                    "statements": statements,
                    "unattested_participants": list(verified.unattested_participants),
                },
                sort_keys=True,
            )
        )
        return 0
    lines = [
        f"OK {args.report}: hash chain of {len(verified.report.ledger)} entries, "
        f"{verified.checked_figures} figures recomputed, threat model matches the ledger, "
        f"signature valid: {verified.authentication}"
    ]
    if not verified.signer_trusted:
        lines.append(
            "  to authenticate, pass --trusted-key with the fingerprint the coordinator's operator gave you "
            "out of band"
        )
    for check in verified.statements:
        status = "authenticated (pinned key)" if check.authenticated else "self-consistent, unauthenticated"
        lines.append(
            f"  statement of {check.participant}: {check.events} events, key {check.fingerprint}, {status}"
        )
    for name in verified.unattested_participants:
        lines.append(f"  {name}: no signed statement; only the coordinator attests its events")
    print("\n".join(lines))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from privacy.report import PrivacyReport
    from privacy.report_verify import (
        ReportVerificationError,
        VerifiedReport,
        render_html,
        render_markdown,
        verification_status,
        verify_report,
    )

    text = _read(args.report)
    trusted, participants = _pins(args)
    verification: VerifiedReport | None = None
    failure: str | None = None
    try:
        verification = verify_report(text, trusted_public_key=trusted, trusted_participant_keys=participants)
    except ReportVerificationError as error:
        failure = str(error)
        # Loud, first, and on stderr too, so it is seen even when the rendering goes to a file.
        print(verification_status(None, failure), file=sys.stderr)
    if verification is not None:
        report = verification.report
    else:
        try:
            report = PrivacyReport.from_json(text)
        except ValueError:
            print(verification_status(None, failure))
            return 1  # nothing trustworthy to render: the reason is above
    if args.format == "html":
        rendered = render_html(report, verification=verification, failure=failure)
    else:
        rendered = render_markdown(report, verification=verification, failure=failure)
    if args.output:
        args.output.write_text(rendered, encoding="utf-8")
    else:
        print(rendered)
    return 0 if verification is not None else 1


def run_fingerprint(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from fedprune.errors import CommandError
    from privacy.signing import grouped_fingerprint, key_fingerprint, load_public_key

    material = _read(args.key)
    if b"PRIVATE KEY" in material:
        private = load_pem_private_key(material, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise CommandError(f"{args.key} is not an Ed25519 private key")
        public = private.public_key()
    else:
        public = load_public_key(material)
    print(f"{grouped_fingerprint(public)}  (SHA-256 of the raw public key: {key_fingerprint(public)})")
    return 0
