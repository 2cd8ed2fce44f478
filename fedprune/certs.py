"""A small certificate authority for trials and tests: a CA, then server and client certificates from it.

Every party of a run is known by the common name of its certificate, so the CA is what decides who can
take part. Organisations with their own PKI use their own CA and certificates instead (docs/OPERATORS.md);
this module only has to make certificates that gRPC's TLS stack (BoringSSL) accepts for mutual TLS.

Keys are ECDSA P-256: every TLS stack accepts it for both server and client authentication, while
Ed25519 certificates are still refused by some (and by older gRPC releases) in TLS 1.2 handshakes.
Private keys are written unencrypted (gRPC loads PEM keys without a passphrase), with mode 0600.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedprune.errors import CommandError

logger = logging.getLogger(__name__)

CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_CA_DAYS = 5 * 365
DEFAULT_CERTIFICATE_DAYS = 365
# Certificates start a few minutes in the past so that a peer whose clock runs slightly behind accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
# A name becomes a file name and a common name (at most 64 characters in X.509): keep it boring.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CertificateError(CommandError):
    """A certificate or key cannot be made, read or written as asked."""


class ExistingFileError(CertificateError):
    """An output file exists and ``overwrite`` is off."""


@dataclasses.dataclass(frozen=True)
class IssuedFiles:
    """Where a certificate and its private key were written."""

    certificate: Path
    private_key: Path


def check_name(name: str) -> str:
    """Return ``name`` if it can be a common name and a file name, else raise naming the rule."""
    if not _NAME_PATTERN.fullmatch(name):
        raise CertificateError(
            f"name {name!r} must be 1 to 64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    # O_EXCL: never silently replace a key someone relies on; the mode is set at creation, so the key is
    # never readable by others, not even for an instant.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ExistingFileError(f"{path} exists and overwrite is off") from None
    except OSError as error:
        raise CertificateError(f"cannot write {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an existing file opened with O_TRUNC keeps its old mode


def _write_public(path: Path, data: bytes, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ExistingFileError(f"{path} exists and overwrite is off")
    try:
        path.write_bytes(data)
    except OSError as error:
        raise CertificateError(f"cannot write {path}: {error.strerror}") from None


def _check_free(files: IssuedFiles, *, overwrite: bool) -> None:
    # Checked before anything is written, so a refusal never leaves a new key beside an old certificate.
    for path in (files.certificate, files.private_key):
        if path.exists() and not overwrite:
            raise ExistingFileError(f"{path} exists and overwrite is off")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _prepare_out(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CertificateError(f"cannot create {out_dir}: {error.strerror}") from None
    return out_dir


def create_ca(
    out_dir: Path,
    *,
    common_name: str = "fedprune trial CA",
    days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> IssuedFiles:
    """Return where a new self-signed CA (``ca.pem``, ``ca.key``) was written under ``out_dir``."""
    if days < 1:
        raise CertificateError(f"days must be >= 1, got {days}")
    out_dir = _prepare_out(Path(out_dir))
    files = IssuedFiles(certificate=out_dir / CA_CERTIFICATE, private_key=out_dir / CA_KEY)
    _check_free(files, overwrite=overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: this CA signs end-entity certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.private_key, _key_pem(key), overwrite=overwrite)
    _write_public(
        files.certificate, certificate.public_bytes(serialization.Encoding.PEM), overwrite=overwrite
    )
    logger.info("wrote CA certificate %s and key %s", files.certificate, files.private_key)
    return files


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Return the CA certificate and key from ``ca_dir`` (as written by :func:`create_ca`)."""
    ca_dir = Path(ca_dir)
    try:
        certificate = x509.load_pem_x509_certificate((ca_dir / CA_CERTIFICATE).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except OSError as error:
        raise CertificateError(
            f"cannot read the CA in {ca_dir}: {error.strerror}: {error.filename}"
        ) from None
    except ValueError as error:
        raise CertificateError(
            f"the CA in {ca_dir} is not a PEM certificate and unencrypted key: {error}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{ca_dir / CA_KEY} is not an ECDSA key (fedprune certs init writes one)")
    if certificate.public_key() != key.public_key():
        raise CertificateError(f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERTIFICATE}")
    return certificate, key


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise CertificateError("hosts must not contain an empty name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            # Not an address, so a DNS name; IDNA turns a non-ASCII one into the form certificates hold.
            try:
                names.append(x509.DNSName(host.encode("idna").decode("ascii")))
            except UnicodeError:
                raise CertificateError(f"host {host!r} is neither an IP address nor a DNS name") from None
    return names


def issue_certificate(
    ca_dir: Path,
    name: str,
    out_dir: Path,
    *,
    hosts: Sequence[str] = (),
    days: int = DEFAULT_CERTIFICATE_DAYS,
    overwrite: bool = False,
) -> IssuedFiles:
    """Return where ``NAME.pem`` and ``NAME.key``, signed by the CA in ``ca_dir``, were written.

    ``name`` is the certificate's common name (a participant's identity in a run). With ``hosts`` the
    certificate is a server certificate (serverAuth) whose subject alternative names are the hosts (DNS
    names or IP addresses); without, a client certificate (clientAuth). One purpose per certificate:
    a stolen participant certificate cannot impersonate the coordinator.
    """
    check_name(name)
    if days < 1:
        raise CertificateError(f"days must be >= 1, got {days}")
    alternative_names = _subject_alternative_names(hosts)
    out_dir = _prepare_out(Path(out_dir))
    files = IssuedFiles(certificate=out_dir / f"{name}.pem", private_key=out_dir / f"{name}.key")
    _check_free(files, overwrite=overwrite)
    ca_certificate, ca_key = load_ca(ca_dir)
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc)
    if not_after <= now:
        raise CertificateError(f"the CA in {ca_dir} has expired; create a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if alternative_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if alternative_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    _write_private(files.private_key, _key_pem(key), overwrite=overwrite)
    _write_public(
        files.certificate, certificate.public_bytes(serialization.Encoding.PEM), overwrite=overwrite
    )
    logger.info(
        "wrote %s certificate %s for %r and key %s",
        "server" if alternative_names else "client",
        files.certificate,
        name,
        files.private_key,
    )
    return files
