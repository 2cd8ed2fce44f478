"""``fedprune certs init|issue``: a small certificate authority for trials and tests.

``init --out DIR`` writes ``DIR/ca.pem`` and ``DIR/ca.key``; ``issue --ca DIR --name NAME [--host H ...]
--out DIR2`` writes ``DIR2/NAME.pem`` and ``DIR2/NAME.key`` (mode 0600), NAME as the common name. With
``--host`` it is a server certificate for those DNS names or IP addresses, without a client certificate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedprune.commands.common import positive_int
from fedprune.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs", help="make a trial CA and certificates for mutual TLS", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="certs_command", metavar="SUBCOMMAND", required=True)
    init = commands.add_parser("init", help="create a CA: DIR/ca.pem and DIR/ca.key")
    init.add_argument("--out", type=Path, required=True, help="directory for ca.pem and ca.key")
    init.add_argument("--days", type=positive_int, default=5 * 365, help="validity in days [1825]")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=run_init)
    issue = commands.add_parser("issue", help="issue NAME.pem and NAME.key signed by the CA")
    issue.add_argument("--ca", type=Path, required=True, help="directory holding ca.pem and ca.key")
    issue.add_argument("--name", required=True, help="common name: the identity in a run's participants")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP address of a server (repeatable); makes a server certificate",
    )
    issue.add_argument("--out", type=Path, required=True, help="directory for NAME.pem and NAME.key")
    issue.add_argument("--days", type=positive_int, default=365, help="validity in days [365]")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(handler=run_issue)


def _refuse_existing(error: Exception) -> CommandError:
    return CommandError(f"{error}; pass --force to replace it")


def run_init(args: argparse.Namespace) -> int:
    from fedprune.certs import ExistingFileError, create_ca

    try:
        files = create_ca(args.out, days=args.days, overwrite=args.force)
    except ExistingFileError as error:
        raise _refuse_existing(error) from None
    print(f"CA certificate: {files.certificate}\nCA key (keep it offline): {files.private_key}")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    from fedprune.certs import ExistingFileError, issue_certificate

    try:
        files = issue_certificate(
            args.ca, args.name, args.out, hosts=args.host, days=args.days, overwrite=args.force
        )
    except ExistingFileError as error:
        raise _refuse_existing(error) from None
    kind = "server" if args.host else "client"
    print(f"{kind} certificate for {args.name}: {files.certificate}\nkey: {files.private_key}")
    return 0
