"""Mutual-TLS credentials from the ``[tls]`` files, channel and server options, and the peer's verified name.

Both roles use this module; there is deliberately no way to make an insecure channel or port here. The
server requires and verifies a client certificate from the configured CA, and a participant is known by
that certificate's common name (``peer_common_name``), never by a field of a message.

The files are checked before gRPC sees them (readable, PEM, key matches certificate, not expired), because
gRPC reports a bad file only as a failed handshake much later, without saying which file.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto.limits import MAX_CHUNK_PAYLOAD_BYTES

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = MAX_CHUNK_PAYLOAD_BYTES + 64 * 1024
"""Largest message either side sends or accepts: one full chunk plus its envelope (ids, digest, tags)."""

# Keepalive: a participant may sit idle between long polls for minutes, and NATs and firewalls on
# hospital networks drop idle TCP flows after a few minutes, so clients ping every 30 s. The server must
# allow pings at least that often, or it answers GOAWAY "too_many_pings" and the channel flaps.
CLIENT_KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_KEEPALIVE_MS = 60_000
SERVER_MIN_PING_INTERVAL_MS = 20_000


class TlsConfigurationError(ValueError):
    """A ``[tls]`` file is missing, unreadable or does not fit the others; the message names the field."""


class PeerIdentityError(Exception):
    """The caller has no verified certificate common name (a servicer answers UNAUTHENTICATED)."""


class TlsPaths(Protocol):
    """What a ``[tls]`` config section provides: three paths (the config models satisfy this)."""

    @property
    def ca(self) -> Path: ...

    @property
    def certificate(self) -> Path: ...

    @property
    def private_key(self) -> Path: ...


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """Three paths, for callers without a config section (tests, tools)."""

    ca: Path
    certificate: Path
    private_key: Path


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one party's TLS files, checked to fit together, and its own common name."""

    ca_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes
    common_name: str


def _read(path: Path, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TlsConfigurationError(f"tls.{field}: cannot read {path}: {error.strerror}") from None


def _certificates(data: bytes, path: Path, field: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigurationError(f"tls.{field}: {path} holds no PEM certificate") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            raise TlsConfigurationError(
                f"tls.{field}: the certificate {_common_name(certificate) or '(no common name)'} in {path} "
                f"expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        if certificate.not_valid_before_utc > now:
            raise TlsConfigurationError(
                f"tls.{field}: the certificate in {path} is valid only from "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is the clock right?)"
            )
    return certificates


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value.decode() if isinstance(value, bytes) else value


def load_tls_material(files: TlsPaths) -> TlsMaterial:
    """Return the checked PEM material of ``files`` (errors name ``tls.ca``, ``tls.certificate``, ...)."""
    ca_pem = _read(files.ca, "ca")
    _certificates(ca_pem, files.ca, "ca")
    certificate_pem = _read(files.certificate, "certificate")
    # The certificate file may carry the chain (leaf first), as an organisation's PKI often issues it.
    leaf = _certificates(certificate_pem, files.certificate, "certificate")[0]
    private_key_pem = _read(files.private_key, "private_key")
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TlsConfigurationError(
            f"tls.private_key: {files.private_key} is not an unencrypted PEM private key ({error})"
        ) from None
    if key.public_key() != leaf.public_key():
        raise TlsConfigurationError(
            f"tls.private_key: {files.private_key} is not the key of tls.certificate {files.certificate}"
        )
    try:
        mode = Path(files.private_key).stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # A warning, not a refusal: some secret stores mount keys group-readable on purpose.
        logger.warning("tls.private_key %s is readable by other users; chmod 600 it", files.private_key)
    return TlsMaterial(
        ca_pem=ca_pem,
        certificate_pem=certificate_pem,
        private_key_pem=private_key_pem,
        common_name=_common_name(leaf),
    )


def server_credentials(files: TlsPaths) -> grpc.ServerCredentials:
    """Return server credentials that require and verify a client certificate from ``tls.ca``."""
    material = load_tls_material(files)
    return grpc.ssl_server_credentials(
        [(material.private_key_pem, material.certificate_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(files: TlsPaths) -> grpc.ChannelCredentials:
    """Return channel credentials that present this party's certificate and trust only ``tls.ca``."""
    material = load_tls_material(files)
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.private_key_pem,
        certificate_chain=material.certificate_pem,
    )


def channel_options(*, max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
    """Return the client channel's options: message size limits and keepalive, all explicit."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Retries are the client module's job (it knows which calls are idempotent), not the channel's.
        ("grpc.enable_retries", 0),
    ]


def server_options(*, max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
    """Return the server's options: message size limits, keepalive and what pings it tolerates."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        # Two coordinators on one port would split the participants between them.
        ("grpc.so_reuseport", 0),
    ]


def secure_channel(
    address: str, files: TlsPaths, *, extra_options: Sequence[tuple[str, int | str]] = ()
) -> grpc.Channel:
    """Return a mutual-TLS channel to ``address`` (``host:port``; the host must be in the server's SANs)."""
    return grpc.secure_channel(
        address, channel_credentials(files), options=[*channel_options(), *extra_options]
    )


def add_secure_port(server: grpc.Server, address: str, files: TlsPaths) -> int:
    """Return the port bound on ``server`` for ``address`` with mutual TLS (``host:0`` picks a free one)."""
    port = server.add_secure_port(address, server_credentials(files))
    if port == 0:
        raise TlsConfigurationError(f"server.address: cannot listen on {address}")
    return port


def check_address(address: str) -> str:
    """Return ``address`` if it is ``host:port`` (IPv6 hosts in brackets), else raise ValueError saying why."""
    host, separator, port = address.rpartition(":")
    if not separator or not host:
        raise ValueError(f"expected host:port, got {address!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 host goes in brackets, as in [::1]:50051, got {address!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number in [0, 65535], got {port!r}")
    return address


def _printable_ascii(value: str) -> bool:
    return all(0x20 <= ord(character) < 0x7F for character in value)


def _auth_values(auth: Mapping[str, object], key: str) -> list[bytes]:
    """Return the auth context's values under ``key``: gRPC gives a list of bytes (its stubs say bytes).

    A context holding anything else under ``key`` is refused (PeerIdentityError), never read leniently.
    """
    values = auth.get(key, [])
    if isinstance(values, bytes):
        return [values]
    if isinstance(values, (list, tuple)) and all(isinstance(value, bytes) for value in values):
        return list(values)
    raise PeerIdentityError(f"the call's auth context holds no list of bytes under {key!r}")


def peer_common_name(context: grpc.ServicerContext) -> str:
    """Return the one common name of the caller's verified client certificate, or raise PeerIdentityError.

    The name is read from the verified certificate itself (``x509_pem_cert``), not only from what gRPC
    extracts: the subject must hold exactly one common name, of printable ASCII (no NUL, no control
    character), equal to gRPC's ``x509_common_name``. Anything else would let two parties, or two
    parsers, read one certificate as different names.
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        raise PeerIdentityError("the call did not arrive over TLS")
    certificates = _auth_values(auth, "x509_pem_cert")
    if len(certificates) != 1:
        # The server requires a verified client certificate, so none here is a misconfigured server.
        raise PeerIdentityError(f"expected one verified client certificate, found {len(certificates)}")
    try:
        certificate = x509.load_pem_x509_certificate(certificates[0])
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError as error:
        raise PeerIdentityError(f"the client certificate cannot be parsed: {error}") from None
    if len(names) != 1:
        raise PeerIdentityError(
            f"the client certificate's subject must carry exactly one common name, found {len(names)}"
        )
    name = names[0].value
    if not isinstance(name, str) or not name or not _printable_ascii(name):
        raise PeerIdentityError(
            f"the client certificate's common name {name!r} is not a non-empty string of printable ASCII"
        )
    reported = _auth_values(auth, "x509_common_name")
    if reported != [name.encode("ascii")]:
        raise PeerIdentityError(
            f"the client certificate's common name {name!r} differs from what TLS reports ({reported!r})"
        )
    return name
