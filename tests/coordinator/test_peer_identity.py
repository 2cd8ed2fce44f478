"""proto.tls.peer_common_name: the caller's name is its verified certificate's one printable common name.

Auth contexts as gRPC fills them, with certificates built here, so that each way two readers could see two
names in one certificate is refused with a reason (the live refusals are in
``tests/integration/test_service_admission.py``).
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proto.tls import PeerIdentityError, peer_common_name


def _pem(*attributes: x509.NameAttribute) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(list(attributes))
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class _Context:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self.auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth


def _context(pem: bytes | None, reported: list[bytes], transport: bytes = b"ssl") -> _Context:
    auth = {"transport_security_type": [transport], "x509_common_name": reported}
    if pem is not None:
        auth["x509_pem_cert"] = [pem]
    return _Context(auth)


def _cn(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def test_one_printable_common_name_equal_to_what_tls_reports_is_the_caller() -> None:
    assert peer_common_name(_context(_pem(_cn("site-a")), [b"site-a"])) == "site-a"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pem", "reported", "reason"),
    [
        (_pem(_cn("site-a"), _cn("site-d")), [b"site-a"], "exactly one common name, found 2"),
        (_pem(_cn("site-a\x00.evil")), [b"site-a"], "not a non-empty string of printable ASCII"),
        (_pem(_cn("site-a\n")), [b"site-a\n"], "printable ASCII"),
        (_pem(_cn("sité-a")), ["sité-a".encode()], "printable ASCII"),
        (_pem(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "site-a")), [], "found 0"),
        (_pem(_cn("site-a")), [b"site-b"], "differs from what TLS reports"),
        (_pem(_cn("site-a")), [b"site-a", b"site-a"], "differs from what TLS reports"),
        (None, [b"site-a"], "expected one verified client certificate, found 0"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", [b"site-a"], "cannot be parsed"),
    ],
    ids=[
        "two-cns",
        "nul",
        "newline",
        "non-ascii",
        "no-cn",
        "other-name",
        "reported-twice",
        "no-cert",
        "junk",
    ],
)
def test_anything_else_is_refused_saying_why(pem: bytes | None, reported: list[bytes], reason: str) -> None:
    with pytest.raises(PeerIdentityError, match=reason):
        peer_common_name(_context(pem, reported))  # type: ignore[arg-type]


def test_a_call_without_tls_is_refused() -> None:
    with pytest.raises(PeerIdentityError, match="did not arrive over TLS"):
        peer_common_name(_context(_pem(_cn("site-a")), [b"site-a"], transport=b"insecure"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [["site-a"], [b"site-a", "site-a"], "site-a", 7, None],
    ids=["str-item", "mixed", "bare-str", "int", "none"],
)
def test_an_auth_context_holding_anything_but_bytes_is_refused(values: object) -> None:
    # What a future gRPC (or a wrapper) might hand over: never read leniently, e.g. a str compared as bytes.
    context = _context(_pem(_cn("site-a")), [b"site-a"])
    context.auth["x509_common_name"] = values  # type: ignore[assignment]
    with pytest.raises(PeerIdentityError, match="no list of bytes under 'x509_common_name'"):
        peer_common_name(context)  # type: ignore[arg-type]
    context = _context(None, [b"site-a"])
    context.auth["x509_pem_cert"] = values  # type: ignore[assignment]
    with pytest.raises(PeerIdentityError, match="no list of bytes under 'x509_pem_cert'"):
        peer_common_name(context)  # type: ignore[arg-type]
