"""``fedprune audit verify|show REPORT``: check a signed privacy report, or render it for reading.

``verify`` checks the schema, the ledger's hash chain, every derived parameter, the threat model against
the secure-aggregation events, each participant's signed statement, recomputes every figure from the
ledger and raw inputs, and checks the coordinator's Ed25519 signature. Origin is proved only against keys
the auditor obtained out of band, pinned by value: ``--trusted-key FINGERPRINT`` (the coordinator's full
SHA-256 fingerprint, 64 hex digits) or ``--trusted-key-file PATH`` (its public-key file), and for the
sites ``--participant-key NAME=FINGERPRINT`` or ``--participant-key-file NAME=PATH`` (repeatable). A
fingerprint is never opened as a file, nor a file read as a fingerprint. Without a coordinator pin the
outcome is UNAUTHENTICATED (anyone can re-sign a forged report with a fresh key): both commands say so
in their first line and exit 1 unless ``--unauthenticated`` asks for the self-consistency checks alone.
Every site whose input a secure-aggregation session summed must have a signed statement in the report;
one that has none fails the check unless ``--allow-missing-statements`` (then a WARNING line names it).
``verify`` exits 0 when all checks hold and 1 naming the first field that does not match.

``show`` verifies first, then prints Markdown (default) or HTML, its first line saying what verification
established. A report that fails verification is shown under a loud UNVERIFIED line with the reason, and
the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privacy.report import VerifiedReport
    from privacy.signing import TrustedKey

NO_PIN = (
    "UNAUTHENTICATED: no coordinator key pinned; anyone can re-sign a forged report with a fresh key. Pin "
    "the fingerprint the coordinator's operator gave you out of band (--trusted-key FINGERPRINT or "
    "--trusted-key-file PATH), or pass --unauthenticated to check self-consistency only"
)


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument(
        "--trusted-key",
        metavar="FINGERPRINT",
        help="the coordinator's key fingerprint (64 hex digits, spaces between groups allowed), obtained "
        "out of band from the coordinator's operator; never opened as a file",
    )
    pin.add_argument(
        "--trusted-key-file",
        metavar="PATH",
        type=Path,
        help="the coordinator's public-key file (PEM, hex or raw), obtained out of band (never a key "
        "shipped with the report)",
    )
    # The former name, kept so existing scripts keep working; it means exactly --trusted-key.
    pin.add_argument("--public-key", dest="trusted_key", help=argparse.SUPPRESS)
    parser.add_argument(
        "--participant-key",
        action="append",
        default=[],
        metavar="NAME=FINGERPRINT",
        help="pin a site's statement key by fingerprint, obtained out of band from that site (repeatable)",
    )
    parser.add_argument(
        "--participant-key-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="pin a site's statement key by its public-key file, obtained out of band (repeatable)",
    )
    parser.add_argument(
        "--unauthenticated",
        action="store_true",
        help="without a coordinator pin, run every other check and exit 0 when they hold; the output "
        "still says UNAUTHENTICATED first",
    )
    parser.add_argument(
        "--allow-missing-statements",
        action="store_true",
        help="accept a report in which a site whose input was summed sent no signed statement (a WARNING "
        "line names each one and what it means for its guarantee)",
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


def _pin(text: str, *, option: str, from_file: bool) -> TrustedKey:
    from fedprune.errors import CommandError
    from privacy.signing import SigningKeyError, TrustedKey

    try:
        return TrustedKey.from_key_file(text) if from_file else TrustedKey.from_fingerprint(text)
    except SigningKeyError as error:
        hint = "" if from_file else f" (for a public-key file use {option}-file)"
        raise CommandError(f"{option}: {error}{hint}") from None


def _pins(args: argparse.Namespace) -> tuple[TrustedKey | None, dict[str, TrustedKey]]:
    from fedprune.errors import CommandError

    coordinator = None
    if args.trusted_key is not None:
        coordinator = _pin(args.trusted_key, option="--trusted-key", from_file=False)
    elif args.trusted_key_file is not None:
        coordinator = _pin(str(args.trusted_key_file), option="--trusted-key-file", from_file=True)
    participants: dict[str, TrustedKey] = {}
    for option, items, from_file in (
        ("--participant-key", args.participant_key, False),
        ("--participant-key-file", args.participant_key_file, True),
    ):
        for item in items:
            name, separator, key = item.partition("=")
            if not separator or not name or not key:
                value = "PATH" if from_file else "FINGERPRINT"
                raise CommandError(f"{option} expects NAME={value}, got {item!r}")
            if name in participants:
                raise CommandError(f"{option}: {name!r} is pinned twice")
            participants[name] = _pin(key, option=option, from_file=from_file)
    return coordinator, participants


def _missing_lines(verified: VerifiedReport) -> list[str]:
    return [
        f"  WARNING {m.participant}: NO SIGNED STATEMENT: {m.meaning}" for m in verified.missing_statements
    ]


def _failure(error: Exception) -> str:
    from privacy.report import MissingStatementError

    if isinstance(error, MissingStatementError):
        return f"{error} (--allow-missing-statements accepts the report with a warning)"
    return str(error)


def run_verify(args: argparse.Namespace) -> int:
    from privacy.report import ReportVerificationError, verify_report

    trusted, participants = _pins(args)
    text = _read(args.report)
    if trusted is None and not args.unauthenticated:
        if args.json:
            print(json.dumps({"ok": False, "field": "signature.public_key", "error": NO_PIN}, sort_keys=True))
        else:
            print(NO_PIN)
        return 1
    try:
        verified = verify_report(
            text,
            trusted_public_key=trusted,
            trusted_participant_keys=participants,
            allow_missing_statements=args.allow_missing_statements,
        )
    except ReportVerificationError as error:
        if args.json:
            print(json.dumps({"ok": False, "field": error.field, "error": _failure(error)}, sort_keys=True))
        print(f"FAIL {_failure(error)}", file=sys.stderr)
        return 1
    if args.json:
        statements = [
            {
                "participant": s.participant,
                "fingerprint": s.fingerprint,
                "authenticated": s.authenticated,
                "events": s.events,
            }
            for s in verified.statements
        ]
        missing = [
            {
                "participant": m.participant,
                "blocks": list(m.blocks),
                "has_events": m.has_events,
                "meaning": m.meaning,
            }
            for m in verified.missing_statements
        ]
        print(
            json.dumps(
                {
                    "ok": True,
                    "checked_figures": verified.checked_figures,
                    "signer_trusted": verified.signer_trusted,
                    "authentication": verified.authentication,
                    "signer_fingerprint": verified.signer_fingerprint,
                    "statements": statements,
                    "missing_statements": missing,
                    "unattested_participants": list(verified.unattested_participants),
                },
                sort_keys=True,
            )
        )
        return 0
    checks = (
        f"hash chain of {len(verified.report.ledger)} entries, {verified.checked_figures} figures recomputed, "
        "threat model matches the ledger"
    )
    if verified.signer_trusted:
        lines = [f"OK {args.report}: {checks}, signature valid: {verified.authentication}"]
    else:
        said = verified.authentication.removeprefix("UNAUTHENTICATED: ")
        lines = [f"UNAUTHENTICATED {args.report}: {checks}; {said}"]
    for check in verified.statements:
        status = "authenticated (pinned key)" if check.authenticated else "self-consistent, unauthenticated"
        lines.append(
            f"  statement of {check.participant}: {check.events} events, key {check.fingerprint}, {status}"
        )
    lines += _missing_lines(verified)
    print("\n".join(lines))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from privacy.report import (
        PrivacyReport,
        ReportVerificationError,
        render_html,
        render_markdown,
        verification_status,
        verify_report,
    )

    text = _read(args.report)
    trusted, participants = _pins(args)
    if trusted is None and not args.unauthenticated:
        # First line, on both streams, and nothing rendered: an unpinned report must not look vouched for.
        print(NO_PIN)
        print(NO_PIN, file=sys.stderr)
        return 1
    verification: VerifiedReport | None = None
    failure: str | None = None
    try:
        verification = verify_report(
            text,
            trusted_public_key=trusted,
            trusted_participant_keys=participants,
            allow_missing_statements=args.allow_missing_statements,
        )
    except ReportVerificationError as error:
        failure = _failure(error)
    status = verification_status(verification, failure)
    if verification is None or not verification.signer_trusted or verification.missing_statements:
        # Loud, first, and on stderr too, so it is seen even when the rendering goes to a file.
        print(status, file=sys.stderr)
    if verification is not None:
        report = verification.report
    else:
        try:
            report = PrivacyReport.from_json(text)
        except ValueError:
            print(status)
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
