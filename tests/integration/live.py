"""A live coordinator in this process: the real server (mutual TLS, port 0) and real participant clients.

Unlike ``tests.integration.harness`` (separate processes), the coordinator and the participants run as
threads of the test, so a test can hold hostile gRPC channels beside them, read the coordinator's log
records and compare the run's masks, within a few seconds. Everything on the wire is real: TLS
certificates of the run's CA (``fedprune.certs``), the servicer behind ``coordinator.admission``, and
``participant.client.CoordinatorClient`` with its deadlines and retries.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.tiny import build_tiny_model, build_word_tokenizer, random_text

NAMES = ("site-a", "site-b", "site-c")
CALL_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Pki:
    """A CA directory with the coordinator's server certificate and one client certificate per name."""

    directory: Path

    def files(self, name: str) -> Any:
        from proto.tls import TlsFiles

        return TlsFiles(
            ca=self.directory / "ca.pem",
            certificate=self.directory / f"{name}.pem",
            private_key=self.directory / f"{name}.key",
        )


def make_pki(directory: Path, *names: str) -> Pki:
    """Return a fresh CA with a server certificate for 127.0.0.1 and client certificates for ``names``."""
    from fedprune.certs import create_ca, issue_certificate

    create_ca(directory)
    issue_certificate(directory, "coordinator", directory, hosts=["127.0.0.1"])
    for name in names:
        issue_certificate(directory, name, directory)
    return Pki(directory)


def issue_with_subject(pki: Pki, label: str, subject: x509.Name) -> Any:
    """Return TLS files for a client certificate with exactly ``subject``, signed by the run's CA.

    ``fedprune certs`` refuses such names; an attacker with the CA's signature (or a careless CA) does not.
    """
    from fedprune.certs import load_ca

    ca_certificate, ca_key = load_ca(pki.directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (pki.directory / f"{label}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path = pki.directory / f"{label}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return pki.files(label)


def common_name(*values: str) -> x509.Name:
    """Return a subject of one RDN per common name in ``values``."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value) for value in values])


@dataclasses.dataclass
class LiveFederation:
    """What a live run needs: the CA, a tiny model, each site's data, and where outputs go."""

    root: Path
    pki: Pki
    model: Path
    names: tuple[str, ...] = NAMES

    def coordinator_config(self, label: str, run: dict[str, Any] | None = None, **server: Any) -> Any:
        """``run``: keys added to (or replacing) the ``[run]`` section; ``server``: to ``[server]``."""
        from coordinator.config import parse_config

        root = self.root / label
        return parse_config(
            {
                "server": {
                    "address": "127.0.0.1:0",
                    "await_poll_s": 0.5,
                    "round_timeout_s": 20.0,
                    **server,
                },
                "tls": {
                    "ca": str(self.pki.directory / "ca.pem"),
                    "certificate": str(self.pki.directory / "coordinator.pem"),
                    "private_key": str(self.pki.directory / "coordinator.key"),
                },
                "run": {
                    "model": str(self.model),
                    "participants": list(self.names),
                    "method": "wanda",
                    "sparsity": 0.5,
                    "nsamples": 4,
                    "seqlen": 8,
                    **(run or {}),
                },
                "privacy": {"randomized_response": False, "record_level_dp": False},
                "output": {
                    "directory": str(root / "out"),
                    "state": str(root / "state"),
                    "signing_key": str(self.root / "report.key"),
                },
            }
        )

    def participant_config(self, name: str, address: str, label: str) -> Any:
        from participant.config import parse_config

        tls = self.pki.files(name)
        return parse_config(
            {
                "coordinator": {
                    "address": address,
                    "call_timeout_s": CALL_TIMEOUT_S,
                    "max_backoff_s": 0.2,
                    "max_retry_time_s": 30.0,
                },
                "tls": {
                    "ca": str(tls.ca),
                    "certificate": str(tls.certificate),
                    "private_key": str(tls.private_key),
                },
                "model": {"directory": str(self.model)},
                "data": {"calibration": str(self.root / f"{name}.jsonl")},
                "runtime": {
                    "device": "cpu",
                    "state": str(self.root / label / f"state-{name}"),
                    "progress": False,
                },
                # The live run keeps exact statistics: its sites opt out of the record-level default.
                "privacy": {"require_record_level_dp": False},
            }
        )


def make_live_federation(root: Path, *, layers: int = 2) -> LiveFederation:
    """Return a federation of three sites (and an ``outsider`` certificate) on a tiny llama."""
    root.mkdir(parents=True, exist_ok=True)
    pki = make_pki(root / "pki", *NAMES, "outsider")
    model = root / "model"
    build_tiny_model("llama", layers=layers).save_pretrained(model)
    build_word_tokenizer().save_pretrained(model)
    for index, name in enumerate(NAMES):
        lines = [json.dumps({"text": random_text(40, seed=10 * index + d)}) for d in range(8)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return LiveFederation(root=root, pki=pki, model=model)


@dataclasses.dataclass
class LiveCoordinator:
    """A started coordinator: its run (driven in a thread), the gRPC server and its address."""

    run: Any
    server: grpc.Server
    address: str
    federation: LiveFederation
    thread: threading.Thread
    errors: list[BaseException]

    def channel(self, name: str, *, files: Any = None) -> grpc.Channel:
        """Return a mutual-TLS channel presenting ``name``'s certificate (or ``files``)."""
        from proto.tls import secure_channel

        return secure_channel(self.address, files or self.federation.pki.files(name))

    def masks(self) -> list[bytes]:
        """Return each block's packed global mask."""
        return [self.run.state.packed_mask(block) for block in range(self.run.blocks)]


@contextmanager
def live_coordinator(
    federation: LiveFederation, label: str, run: dict[str, Any] | None = None, **server: Any
) -> Iterator[LiveCoordinator]:
    """Yield a coordinator serving on a free loopback port; stopped and closed at the end."""
    from coordinator.run import CoordinatorRun
    from coordinator.servicer import serve

    config = federation.coordinator_config(label, run, **server)
    run = CoordinatorRun(config)
    grpc_server, port, _ = serve(run, address="127.0.0.1:0")
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            run.run()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    thread = threading.Thread(target=drive, name=f"coordinator-{label}", daemon=True)
    thread.start()
    try:
        yield LiveCoordinator(run, grpc_server, f"127.0.0.1:{port}", federation, thread, errors)
    finally:
        run.abort("the test ended")
        thread.join(30)
        grpc_server.stop(grace=0).wait()
        run.close()


def run_participants(
    coordinator: LiveCoordinator, *, names: Sequence[str] = NAMES, timeout: float = 120.0
) -> float:
    """Return the seconds until every participant and the coordinator finished (fails on any error)."""
    from participant.client import CoordinatorClient, RetryPolicy
    from participant.run import ParticipantRun

    errors: dict[str, BaseException] = {}
    threads = []
    start = time.monotonic()
    for name in names:
        config = coordinator.federation.participant_config(name, coordinator.address, coordinator.run.run_id)
        section = config.coordinator
        client = CoordinatorClient(
            section.address,
            config.tls,
            call_timeout_s=section.call_timeout_s,
            stream_timeout_s=section.stream_timeout_s,
            policy=RetryPolicy(
                max_backoff_s=section.max_backoff_s, max_retry_time_s=section.max_retry_time_s
            ),
        )

        def body(config: Any = config, client: Any = client, name: str = name) -> None:
            try:
                ParticipantRun(config, client).run()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors[name] = error
            finally:
                client.close()

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        threads.append(thread)
    deadline = start + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"
    coordinator.thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - start
    assert not errors, errors
    assert not coordinator.thread.is_alive(), "the coordinator's run did not finish"
    assert not coordinator.errors, coordinator.errors
    return elapsed


def held_open(channel: grpc.Channel, method: str, *, timeout: float) -> Callable[[], None]:
    """Open a call on ``method`` that sends nothing (a stranger's stall); return a function that ends it."""
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait(timeout)
        return
        yield b""  # a generator that never yields

    call = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
    future = call.future(nothing(), timeout=timeout)

    def end() -> None:
        release.set()
        future.cancel()

    return end
