"""The coordinator refuses before it reads: identity, membership and call caps, then bounded, decoded reads.

A live coordinator (real gRPC, mutual TLS, port 0, ``coordinator.admission`` in front of the servicer)
beside hostile callers holding certificates of the run's own CA: callers that open calls and send
nothing, certificates whose subject is ambiguous, raw bytes that are no protobuf message. None of them
delays a participant's call beyond a small bound, none is answered INTERNAL, none leaves a traceback in
the log, and the run's result is the one a run without them gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.live import (
    LiveFederation,
    common_name,
    held_open,
    issue_with_subject,
    live_coordinator,
    make_live_federation,
    run_participants,
)

SERVICE = "/fedprune.v1.Coordinator/"
METHODS = (
    "Join",
    "Await",
    "AdvertiseKeys",
    "ShareKeys",
    "MaskedInput",
    "SignSurvivors",
    "Unmask",
    "BlockMask",
    "BlockWeights",
    "OwlAllocation",
    "SubmitStatement",
)
STREAMING_RESPONSE = {"BlockMask", "BlockWeights"}
HOSTILE_STREAMS = 64


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> LiveFederation:
    return make_live_federation(tmp_path_factory.mktemp("live"))


def _join_request(coordinator: object) -> object:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.signing import raw_public_key
    from proto.fedprune.v1 import service_pb2 as pb

    run = coordinator.run  # type: ignore[attr-defined]
    return pb.JoinRequest(
        base_model_fingerprint=run.model_fingerprint,
        identity_public_key=raw_public_key(Ed25519PrivateKey.generate().public_key()),
    )


def _raw(channel: grpc.Channel, method: str, payload: bytes, *, timeout: float = 5.0) -> grpc.StatusCode:
    """Return the status of sending ``payload`` as the request bytes of ``method`` (a generic channel)."""
    try:
        if method == "MaskedInput":
            channel.stream_unary(SERVICE + method)(iter([payload]), timeout=timeout)
        elif method in STREAMING_RESPONSE:
            list(channel.unary_stream(SERVICE + method)(payload, timeout=timeout))
        else:
            channel.unary_unary(SERVICE + method)(payload, timeout=timeout)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _no_traceback(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


# ---------------------------------------------------------------------------- idle and slow callers
@pytest.mark.slow
def test_64_idle_streams_of_strangers_and_an_insider_delay_no_participant_and_are_cut_when_idle(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with live_coordinator(federation, "idle", idle_timeout_s=3.0) as coordinator:
        stranger = coordinator.channel("outsider")
        insider = coordinator.channel("site-c")  # a site's own certificate, used to stall
        ends = []
        for index in range(HOSTILE_STREAMS):
            channel = stranger if index % 2 else insider
            method = (
                "/grpc.health.v1.Health/Check" if index % 8 == 1 else SERVICE + METHODS[index % len(METHODS)]
            )
            ends.append(held_open(channel, method, timeout=60))
        time.sleep(0.5)  # every hostile call has reached the server

        started = time.monotonic()
        with coordinator.channel("site-a") as channel:
            from proto.fedprune.v1 import service_pb2_grpc

            reply = service_pb2_grpc.CoordinatorStub(channel).Join(_join_request(coordinator), timeout=5)
            joined_s = time.monotonic() - started
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.name == "site-a"
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert joined_s < 1.0, f"site-a's Join took {joined_s:.2f} s beside {HOSTILE_STREAMS} idle streams"

        # The insider's own calls are capped: a fifth one is refused at once, not queued.
        with pytest.raises(grpc.RpcError) as refused:
            insider.unary_unary(SERVICE + "Join")(b"", timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

        # After the idle bound every held call is cut, and the insider may call again.
        time.sleep(3.5)
        code = _raw(insider, "Await", b"\xff\xff")
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        for end in ends:
            end()
        stranger.close()
        insider.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "coordinator.admission"]
    assert any("cut: no message for 3 s" in m for m in messages), messages
    assert any("PERMISSION_DENIED" in m and "outsider" in m for m in messages), messages
    _no_traceback(caplog.records)


@pytest.mark.slow
def test_an_honest_run_beside_64_idle_hostile_streams_gives_the_same_masks_in_about_the_same_time(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    with live_coordinator(federation, "reference") as coordinator:
        reference_s = run_participants(coordinator)
        reference = coordinator.masks()
    with live_coordinator(federation, "attacked") as coordinator:
        stranger = coordinator.channel("outsider")
        ends = [
            held_open(
                stranger,
                "/grpc.health.v1.Health/Watch" if i % 4 == 0 else SERVICE + METHODS[i % len(METHODS)],
                timeout=120,
            )
            for i in range(HOSTILE_STREAMS)
        ]
        time.sleep(0.5)
        attacked_s = run_participants(coordinator)
        masks = coordinator.masks()
        for end in ends:
            end()
        stranger.close()
    print(
        f"\nhonest run: {reference_s:.2f} s alone, {attacked_s:.2f} s beside {HOSTILE_STREAMS} idle hostile streams"
    )
    assert masks == reference
    assert attacked_s < reference_s + 10.0
    _no_traceback(caplog.records)


# ---------------------------------------------------------------------------- identity
@pytest.mark.parametrize(
    ("label", "subject"),
    [
        ("two-names", common_name("site-a", "site-d")),
        ("nul", common_name("site-a\x00.evil")),
        ("control", common_name("site-a\n")),
        ("no-name", None),
    ],
)
def test_a_certificate_without_exactly_one_printable_common_name_is_unauthenticated_and_binds_nothing(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture, label: str, subject: object
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from proto.fedprune.v1 import service_pb2_grpc

    caplog.set_level(logging.INFO)
    if subject is None:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "site-a")])
    files = issue_with_subject(federation.pki, f"odd-{label}", subject)  # type: ignore[arg-type]
    with live_coordinator(federation, f"identity-{label}") as coordinator:
        with coordinator.channel("", files=files) as channel:
            for call in (
                lambda: service_pb2_grpc.CoordinatorStub(channel).Join(_join_request(coordinator), timeout=5),
                lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        assert coordinator.run.state.members() == {}  # nothing bound to site-a's name
        with coordinator.channel("site-a") as channel:
            reply = service_pb2_grpc.CoordinatorStub(channel).Join(_join_request(coordinator), timeout=5)
        assert reply.name == "site-a"
    lines = [r.getMessage() for r in caplog.records if "UNAUTHENTICATED" in r.getMessage()]
    assert lines and all("common name" in line for line in lines), lines
    _no_traceback(caplog.records)


# ---------------------------------------------------------------------------- bytes that are no message
def test_bytes_that_do_not_decode_are_invalid_argument_for_every_rpc_never_internal(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    from proto.fedprune.v1 import service_pb2_grpc

    caplog.set_level(logging.INFO)
    with (
        live_coordinator(federation, "raw") as coordinator,
        coordinator.channel("site-a") as member,
        coordinator.channel("outsider") as stranger,
    ):
        service_pb2_grpc.CoordinatorStub(member).Join(_join_request(coordinator), timeout=5)
        for method in METHODS:
            for payload in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11):
                assert _raw(member, method, payload) is grpc.StatusCode.INVALID_ARGUMENT, method
                # A stranger is refused on its name, before its bytes are even read.
                assert _raw(stranger, method, payload) is grpc.StatusCode.PERMISSION_DENIED, method
    refusals = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert len(refusals) == 3 * len(METHODS), refusals
    _no_traceback(caplog.records)


def _ended(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """Return the one line each ended MaskedInput call left.

    gRPC's client may close its side of a cancelled stream before the cancellation reaches the server; a
    server that reads that close first sees an empty stream and refuses it (INVALID_ARGUMENT), in one line
    too. Either way: one info line a call, no traceback.
    """
    return [
        r
        for r in records
        if "MaskedInput from site-a ended" in r.getMessage()
        or r.getMessage() == "MaskedInput refused (INVALID_ARGUMENT): empty masked-input stream"
    ]


def test_a_cancelled_or_expired_stream_is_one_info_line_without_a_traceback(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    from proto.fedprune.v1 import service_pb2 as pb

    caplog.set_level(logging.INFO)
    with live_coordinator(federation, "cancel") as coordinator, coordinator.channel("site-a") as channel:
        from proto.fedprune.v1 import service_pb2_grpc

        service_pb2_grpc.CoordinatorStub(channel).Join(_join_request(coordinator), timeout=5)

        def slow() -> Iterator[pb.MaskedInputPart]:
            time.sleep(2.0)  # the first part is late: the server is waiting for it
            yield pb.MaskedInputPart()

        call = service_pb2_grpc.CoordinatorStub(channel).MaskedInput
        with pytest.raises(grpc.RpcError) as expired:
            call(slow(), timeout=0.5)
        assert expired.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        future = call.future(slow(), timeout=10)
        time.sleep(1.0)  # the server is waiting for the first part (due at 2 s) when the call is cancelled
        future.cancel()
        # The server notices the cancellation on its own thread: wait for it (bounded), not a fixed time.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(_ended(caplog.records)) < 2:
            time.sleep(0.05)
    ended = _ended(caplog.records)
    assert len(ended) == 2 and all(r.levelno == logging.INFO for r in ended), [r.getMessage() for r in ended]
    _no_traceback(caplog.records)
