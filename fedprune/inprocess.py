"""The service's roles in one process: the real coordinator and participants over an in-memory transport.

``run_federation`` runs ``coordinator.run.CoordinatorRun`` behind the real
``coordinator.servicer.CoordinatorServicer`` and one ``participant.run.ParticipantRun`` per site, each in
its own thread. A participant's calls reach the servicer as plain method calls (``InProcessClient`` is a
``participant.client.WireCalls``, and the participant talks to it through the same ``WireClient``
conversions as over gRPC) with a servicer context whose verified identity is the site's name, what a
client certificate's common name is over the network. Every message therefore goes through the same
protobuf conversions, state machines, secure-aggregation sessions, randomized response, DP statistics,
signed statements and signed report as in the service; what is not exercised is the network: no socket,
no TLS, no gRPC channel, no retries (nothing here is transient).

An aborted call raises an ``InProcessRpcError`` carrying the status the servicer chose, exactly what a
participant's ``WireClient`` sees over the network (and classifies the same way). A participant that
fails aborts the coordinator's run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.config import CoordinatorConfig
from coordinator.events import EventSink
from coordinator.events import ignore as ignore_run_events
from coordinator.run import CoordinatorRun, RunSummary
from coordinator.servicer import CoordinatorServicer
from participant.client import WireClient, collect_mask_stream, collect_weights_stream
from participant.config import ParticipantConfig
from participant.events import ignore
from participant.progress import BlockProgressBar
from participant.run import ParticipantRun, RunAbortedError
from proto.fedprune.v1 import service_pb2 as pb
from pruning.data import CalibrationSet

logger = logging.getLogger(__name__)

IN_PROCESS_TRANSPORT = (
    "in-process simulation (the service's coordinator and participants in one process, no network)"
)

# Loggers of the roles: a one-process run shows their warnings only, unless debug logging is on.
ROLE_LOGGERS = ("coordinator", "participant", "privacy.secagg")


class InProcessRpcError(grpc.RpcError):
    """What ``context.abort`` raises: a status code and details, as a failed call carries them."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """Return the status code the servicer chose."""
        return self._code

    def details(self) -> str:
        """Return the servicer's message."""
        return self._details


@functools.lru_cache(maxsize=64)
def _certificate_pem(name: str) -> bytes:
    """Return a self-signed certificate whose subject is ``CN=name`` (what the servicer reads identity from)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class InProcessContext:
    """A servicer context whose caller is verified as ``name`` (None: a caller without a certificate)."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def auth_context(self) -> dict[str, list[bytes]]:
        """Return the auth context a mutual-TLS call would carry for this caller (with its certificate)."""
        if self.name is None:
            return {"transport_security_type": [b"ssl"]}
        return {
            "transport_security_type": [b"ssl"],
            "x509_common_name": [self.name.encode()],
            "x509_pem_cert": [_certificate_pem(self.name)],
        }

    def time_remaining(self) -> float | None:
        """Return None: in-process calls have no deadline."""
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        """Raise the failed call's error, as ``grpc.ServicerContext.abort`` does."""
        raise InProcessRpcError(code, details)


class InProcessServer:
    """The servicer every in-process client talks to (a test may swap it to 'restart' the coordinator)."""

    def __init__(self, servicer: CoordinatorServicer) -> None:
        self.servicer = servicer

    def call(self, name: str | None, method: str, request: Any) -> Any:
        """Return what the servicer's ``method`` answers to ``request`` from caller ``name``."""
        return getattr(self.servicer, method)(request, InProcessContext(name))


class InProcessClient:
    """The coordinator's protobuf calls (``WireCalls``) over an ``InProcessServer``, as caller ``name``."""

    def __init__(self, server: InProcessServer, name: str) -> None:
        self.server = server
        self.name = name

    def _call(self, method: str, request: Any) -> Any:
        return self.server.call(self.name, method, request)

    def close(self) -> None:
        """Nothing to release."""

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        return self._call("Join", request)  # type: ignore[no-any-return]

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task:
        request = pb.AwaitRequest(run_id=run_id, max_wait_ms=int(max_wait_s * 1000))
        return self._call("Await", request)  # type: ignore[no-any-return]

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        self._call("AdvertiseKeys", request)

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        self._call("ShareKeys", request)

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        return self._call("MaskedInput", parts())  # type: ignore[no-any-return]

    def sign_survivors(self, request: pb.SignSurvivorsRequest) -> None:
        self._call("SignSurvivors", request)

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        self._call("Unmask", request)

    def block_mask(self, request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]:
        return collect_mask_stream(self._call("BlockMask", request), max_bytes=max_bytes)

    def block_weights(self, request: pb.BlockWeightsRequest, *, max_bytes: int) -> list[pb.BlockWeightsChunk]:
        return collect_weights_stream(self._call("BlockWeights", request), max_bytes=max_bytes)

    def owl_allocation(self, request: pb.OwlAllocationRequest) -> pb.OwlAllocationReply:
        return self._call("OwlAllocation", request)  # type: ignore[no-any-return]

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        self._call("SubmitStatement", request)


@dataclasses.dataclass(frozen=True)
class Site:
    """One participant of an in-process federation: its name (its identity), its config, its data."""

    name: str
    config: ParticipantConfig
    samples: torch.Tensor | CalibrationSet | None = None
    """Calibration data already read; None lets the participant read ``config.data.calibration``."""


@dataclasses.dataclass(frozen=True)
class FederationResult:
    """What an in-process run produced: the coordinator's summary and its (closed) run object."""

    summary: RunSummary
    run: CoordinatorRun
    participants: tuple[ParticipantRun, ...] = ()
    """Each site's finished run, in the order of the sites (kept only when asked: each holds its model)."""


@contextlib.contextmanager
def quiet_roles(*extra: str) -> Iterator[None]:
    """Show only the warnings of the roles' loggers (and of ``extra`` ones) while the block lasts.

    Nothing changes when debug logging is on: then every line of every role is shown.
    """
    loggers = [logging.getLogger(name) for name in (*ROLE_LOGGERS, *extra)]
    levels = [item.level for item in loggers]
    try:
        for item in loggers:
            if not item.isEnabledFor(logging.DEBUG):
                item.setLevel(logging.WARNING)
        yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


class _Threads:
    """Threads that keep their exception instead of losing it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}

    def start(
        self, label: str, body: Callable[[], object], on_error: Callable[[str, BaseException], None]
    ) -> None:
        def target() -> None:
            try:
                body()
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which re-raises it
                self.errors[label] = error
                on_error(label, error)

        thread = threading.Thread(target=target, name=f"fedprune-{label}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()


def run_federation(
    config: CoordinatorConfig,
    sites: Sequence[Site],
    *,
    transport: str = IN_PROCESS_TRANSPORT,
    progress: bool = False,
    on_event: EventSink | None = None,
    keep_participants: bool = False,
) -> FederationResult:
    """Return the outputs of one run of the coordinator and ``sites``, all in this process.

    The coordinator writes the outputs exactly as the service does (report built and checked first, then
    the checkpoint and ``sparsity.json`` in ``config.output.directory``). Raises the first participant's
    error if one failed (the run is aborted then), otherwise the coordinator's. ``on_event`` receives the
    coordinator's typed run events (``coordinator.events``), from the coordinator's thread;
    ``keep_participants`` returns each site's finished run (its model, pruned in place, with it).
    """
    names = [site.name for site in sites]
    if sorted(names) != sorted(config.run.participants):
        raise ValueError(f"sites {names} differ from the run's participants {list(config.run.participants)}")
    run = CoordinatorRun(
        config, transport=transport, on_event=on_event if on_event is not None else ignore_run_events
    )
    server = InProcessServer(CoordinatorServicer(run))
    bar = BlockProgressBar(enabled=progress)
    threads = _Threads()

    def failed(label: str, error: BaseException) -> None:
        if label != "coordinator":
            run.abort(f"participant {label} failed: {error}")

    # No site computes before every site has loaded its model: loading changes torch's process-wide default
    # dtype while it lasts (pruning.model_io.transformers_load_lock), which a forward pass in another
    # thread could pick up. A site that fails to start still counts as done loading.
    loading = [len(sites)]
    loading_lock = threading.Lock()
    all_loaded = threading.Event()
    participants: dict[int, ParticipantRun] = {}

    def participant_body(index: int, site: Site) -> None:
        try:
            participant = ParticipantRun(
                site.config,
                WireClient(InProcessClient(server, site.name)),
                on_event=bar if index == 0 else ignore,
                samples=site.samples,
                strict=True,
            )
            if keep_participants:
                participants[index] = participant
        finally:
            with loading_lock:
                loading[0] -= 1
                if not loading[0]:
                    all_loaded.set()
        all_loaded.wait()
        participant.run()

    summaries: list[RunSummary] = []
    try:
        threads.start("coordinator", lambda: summaries.append(run.run()), failed)
        for index, site in enumerate(sites):
            threads.start(site.name, lambda i=index, s=site: participant_body(i, s), failed)  # type: ignore[misc]
        threads.join()
    finally:
        bar.close()
        run.close()
    if threads.errors:
        raise _first_cause(threads.errors, names)
    return FederationResult(
        summary=summaries[0],
        run=run,
        participants=tuple(participants[i] for i in sorted(participants)),
    )


def _first_cause(errors: dict[str, BaseException], names: Sequence[str]) -> BaseException:
    """Return the error that stopped the run: a participant's own failure first, else the coordinator's."""
    for name in names:
        error = errors.get(name)
        if error is not None and not isinstance(error, RunAbortedError):
            return error
    return errors.get("coordinator") or next(iter(errors.values()))
