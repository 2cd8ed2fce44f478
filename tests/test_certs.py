"""fedprune certs and proto.tls: a trial CA whose certificates gRPC accepts for mutual TLS, and only them."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedprune.certs import CertificateError, check_name, create_ca, issue_certificate
from fedprune.cli import main
from proto import tls

CALL_TIMEOUT_S = 10


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.TlsFiles]:
    """A CA with a server and two clients, and a second, unrelated CA with a client of its own."""
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ca")
    create_ca(root / "other-ca")
    issue_certificate(root / "ca", "coordinator", root / "server", hosts=["localhost", "127.0.0.1"])
    issue_certificate(root / "ca", "hospital-a", root / "clients")
    issue_certificate(root / "other-ca", "intruder", root / "clients")

    def files(ca: str, directory: str, name: str) -> tls.TlsFiles:
        return tls.TlsFiles(
            ca=root / ca / "ca.pem",
            certificate=root / directory / f"{name}.pem",
            private_key=root / directory / f"{name}.key",
        )

    return {
        "server": files("ca", "server", "coordinator"),
        "client": files("ca", "clients", "hospital-a"),
        "intruder": files("other-ca", "clients", "intruder"),
        # a legitimate server certificate presented as a client certificate (wrong purpose)
        "server-as-client": files("ca", "server", "coordinator"),
    }


# ---------------------------------------------------------------- the certificates themselves
def test_init_writes_a_ca_certificate_and_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    assert main(["certs", "init", "--out", str(tmp_path / "ca")]) == 0
    ca = _load(tmp_path / "ca" / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600


def test_issue_makes_a_server_certificate_for_each_host(tmp_path: Path) -> None:
    main(["certs", "init", "--out", str(tmp_path / "ca")])
    code = main(
        [
            "certs",
            "issue",
            "--ca",
            str(tmp_path / "ca"),
            "--name",
            "coordinator",
            "--host",
            "coordinator.example.org",
            "--host",
            "10.0.0.7",
            "--host",
            "::1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    certificate = _load(tmp_path / "out" / "coordinator.pem")
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "coordinator"
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    certificate.verify_directly_issued_by(_load(tmp_path / "ca" / "ca.pem"))
    assert stat.S_IMODE((tmp_path / "out" / "coordinator.key").stat().st_mode) == 0o600


def test_issue_without_hosts_makes_a_client_certificate(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca")
    files = issue_certificate(tmp_path / "ca", "bank-7", tmp_path / "out")
    certificate = _load(files.certificate)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_existing_keys_are_never_replaced_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create_ca(tmp_path / "ca")
    first = (tmp_path / "ca" / "ca.key").read_bytes()
    assert main(["certs", "init", "--out", str(tmp_path / "ca")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "ca" / "ca.key").read_bytes() == first
    assert main(["certs", "init", "--out", str(tmp_path / "ca"), "--force"]) == 0
    assert (tmp_path / "ca" / "ca.key").read_bytes() != first


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 65, "space name"])
def test_names_that_cannot_be_a_file_and_a_common_name_are_refused(name: str) -> None:
    with pytest.raises(CertificateError, match="name"):
        check_name(name)


# ---------------------------------------------------------------- loading the [tls] files
def test_a_key_that_is_not_the_certificates_is_named(pki: dict[str, tls.TlsFiles]) -> None:
    mixed = tls.TlsFiles(
        ca=pki["client"].ca, certificate=pki["client"].certificate, private_key=pki["intruder"].private_key
    )
    with pytest.raises(tls.TlsConfigurationError, match=r"^tls\.private_key: .* is not the key of"):
        tls.load_tls_material(mixed)


def test_a_missing_file_is_named(pki: dict[str, tls.TlsFiles], tmp_path: Path) -> None:
    missing = tls.TlsFiles(
        ca=tmp_path / "nope.pem", certificate=pki["client"].certificate, private_key=pki["client"].private_key
    )
    with pytest.raises(tls.TlsConfigurationError, match=r"^tls\.ca: cannot read"):
        tls.load_tls_material(missing)


def test_a_non_pem_certificate_is_named(pki: dict[str, tls.TlsFiles], tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = tls.TlsFiles(
        ca=pki["client"].ca, certificate=tmp_path / "junk.pem", private_key=pki["client"].private_key
    )
    with pytest.raises(tls.TlsConfigurationError, match=r"^tls\.certificate: .* no PEM certificate"):
        tls.load_tls_material(junk)


# ---------------------------------------------------------------- a real loopback server
def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        return tls.peer_common_name(context).encode()
    except tls.PeerIdentityError as error:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
        raise  # abort raises; this keeps the type checker honest


@pytest.fixture(scope="module")
def server_port(pki: dict[str, tls.TlsFiles]) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=tls.server_options())
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    identity = grpc.method_handlers_generic_handler(
        "test.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)}
    )
    server.add_generic_rpc_handlers((identity,))
    port = tls.add_secure_port(server, "127.0.0.1:0", pki["server"])
    server.start()
    yield port
    server.stop(grace=None)


def _who_am_i_over(channel: grpc.Channel) -> str:
    call = channel.unary_unary("/test.Identity/WhoAmI")
    reply: bytes = call(b"", timeout=CALL_TIMEOUT_S)
    return reply.decode()


def test_a_client_with_a_certificate_from_the_ca_is_served_and_known_by_its_common_name(
    pki: dict[str, tls.TlsFiles], server_port: int
) -> None:
    with tls.secure_channel(f"127.0.0.1:{server_port}", pki["client"]) as channel:
        assert _who_am_i_over(channel) == "hospital-a"
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_the_server_is_also_reached_by_its_dns_name(pki: dict[str, tls.TlsFiles], server_port: int) -> None:
    with tls.secure_channel(f"localhost:{server_port}", pki["client"]) as channel:
        assert _who_am_i_over(channel) == "hospital-a"


def test_a_client_without_a_certificate_is_refused(pki: dict[str, tls.TlsFiles], server_port: int) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["client"].ca.read_bytes())
    with (
        grpc.secure_channel(f"127.0.0.1:{server_port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _who_am_i_over(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_with_a_certificate_from_another_ca_is_refused(
    pki: dict[str, tls.TlsFiles], server_port: int
) -> None:
    # The intruder even trusts the right CA for the server; only its own certificate is foreign.
    intruder = tls.TlsFiles(
        ca=pki["client"].ca, certificate=pki["intruder"].certificate, private_key=pki["intruder"].private_key
    )
    with (
        tls.secure_channel(f"127.0.0.1:{server_port}", intruder) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _who_am_i_over(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_refuses_the_server(
    pki: dict[str, tls.TlsFiles], server_port: int
) -> None:
    with (
        tls.secure_channel(f"127.0.0.1:{server_port}", pki["intruder"]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _who_am_i_over(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_certificate_cannot_serve_as_a_client_certificate(
    pki: dict[str, tls.TlsFiles], server_port: int
) -> None:
    with (
        tls.secure_channel(f"127.0.0.1:{server_port}", pki["server-as-client"]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _who_am_i_over(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_channel_and_server_options_set_message_sizes_and_keepalive_explicitly() -> None:
    for options in (dict(tls.channel_options()), dict(tls.server_options())):
        assert options["grpc.max_receive_message_length"] == tls.MAX_MESSAGE_BYTES
        assert options["grpc.max_send_message_length"] == tls.MAX_MESSAGE_BYTES
        assert int(options["grpc.keepalive_time_ms"]) > 0
    assert tls.MAX_MESSAGE_BYTES > tls.MAX_CHUNK_PAYLOAD_BYTES == 4 * 1024 * 1024
    # the server tolerates the client's ping rate (else GOAWAY too_many_pings)
    assert tls.SERVER_MIN_PING_INTERVAL_MS <= tls.CLIENT_KEEPALIVE_MS
