"""Generated messages and raw bytes at every RPC of a live coordinator: only expected refusals, same result.

The messages are built by hypothesis from the service's own descriptors (every field, nested messages,
oneofs, repeated fields, out-of-range enums and numbers), half of them carrying the run's real id so they
reach the run's checks rather than stopping at "another run". They are sent by a participant of the run
that has joined with its real identity key, over mutual TLS, as raw bytes through a generic channel. Each
answer must be one of the statuses a refusal may have (never INTERNAL or UNKNOWN), nothing may leave a
traceback in the log, and the run that follows must give the masks of a run nobody fuzzed.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as protobuf_descriptor
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.live import (
    LiveFederation,
    live_coordinator,
    make_live_federation,
    run_participants,
)

SERVICE = "/fedprune.v1.Coordinator/"
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FieldDescriptor = protobuf_descriptor.FieldDescriptor
_INTEGERS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _field_values(field: Any, depth: int) -> st.SearchStrategy[Any] | None:
    kind = field.type
    if kind in _INTEGERS:
        low, high = _INTEGERS[kind]
        return st.one_of(st.integers(0, 8), st.integers(low, high))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=80)
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=20)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    if kind == FieldDescriptor.TYPE_MESSAGE and depth < 3:
        return messages(field.message_type, depth + 1)
    return None


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Return a strategy of messages of type ``descriptor`` with any subset of fields set."""
    kind = message_factory.GetMessageClass(descriptor)
    optional = {}
    for field in descriptor.fields:
        values = _field_values(field, depth)
        if values is None:
            continue
        repeated = field.is_repeated
        optional[field.name] = (st.lists(values, max_size=3) if repeated else values, field)

    def build(chosen: dict[str, Any]) -> Any:
        message = kind()
        for name, value in chosen.items():
            field = optional[name][1]
            target = getattr(message, name) if field.type == FieldDescriptor.TYPE_MESSAGE else None
            if field.is_repeated:
                container = getattr(message, name)
                for item in value:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        container.add().CopyFrom(item)
                    else:
                        container.append(item)
            elif target is not None:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional={n: s for n, (s, _) in optional.items()}).map(build)


def _with_run_id(message: Any, run_id: bytes) -> Any:
    """Return ``message`` with every ``run_id`` field, at any depth, set to the run's real id."""
    for field, value in message.ListFields():
        if field.name == "run_id" and field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, field.name, run_id)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                _with_run_id(item, run_id)
    for field in message.DESCRIPTOR.fields:
        if field.name == "run_id" and field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, field.name, run_id)
    return message


def _send(channel: grpc.Channel, method: Any, payloads: list[bytes]) -> grpc.StatusCode:
    path = SERVICE + method.name
    try:
        if method.client_streaming:
            channel.stream_unary(path)(iter(payloads), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path)(payloads[0], timeout=10))
        else:
            channel.unary_unary(path)(payloads[0], timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> LiveFederation:
    return make_live_federation(tmp_path_factory.mktemp("fuzz"))


def test_generated_messages_and_raw_bytes_at_every_rpc_get_expected_statuses_and_change_no_result(
    federation: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    from privacy.signing import load_or_create_signing_key, raw_public_key
    from proto.fedprune.v1 import service_pb2 as pb
    from proto.fedprune.v1 import service_pb2_grpc

    with live_coordinator(federation, "unfuzzed") as coordinator:
        run_participants(coordinator)
        expected_masks = coordinator.masks()

    caplog.set_level(logging.INFO)
    answers: dict[tuple[str, str], int] = {}
    methods = list(pb.DESCRIPTOR.services_by_name["Coordinator"].methods)
    with live_coordinator(federation, "fuzzed") as coordinator:
        run_id = bytes.fromhex(coordinator.run.run_id)
        # site-a joins with the identity key its participant will use, so the fuzz reaches past Join.
        config = federation.participant_config("site-a", coordinator.address, coordinator.run.run_id)
        key = load_or_create_signing_key(config.runtime.identity_key_path)
        with coordinator.channel("site-a") as channel:
            service_pb2_grpc.CoordinatorStub(channel).Join(
                pb.JoinRequest(
                    base_model_fingerprint=coordinator.run.model_fingerprint,
                    identity_public_key=raw_public_key(key),
                ),
                timeout=10,
            )

            @st.composite
            def payloads_for(draw: Any, method: Any) -> list[bytes]:
                count = draw(st.integers(1, 3)) if method.client_streaming else 1
                payloads = []
                for _ in range(count):
                    if draw(st.booleans()):
                        message = draw(messages(method.input_type))
                        if draw(st.booleans()):
                            message = _with_run_id(message, run_id)
                        payloads.append(message.SerializeToString())
                    else:
                        payloads.append(draw(st.binary(max_size=120)))
                return payloads

            def fuzz(method: Any) -> None:
                @settings(
                    max_examples=12,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                )
                @given(payloads=payloads_for(method))
                def answered_as_expected(payloads: list[bytes]) -> None:
                    code = _send(channel, method, payloads)
                    answers[(method.name, code.name)] = answers.get((method.name, code.name), 0) + 1
                    assert code in EXPECTED, (method.name, code, payloads)

                answered_as_expected()

            # Every RPC gets its own examples: drawing the method at random could leave one out.
            for method in methods:
                fuzz(method)
        run_participants(coordinator)
        assert coordinator.masks() == expected_masks
    print("\nfuzz answers:", dict(sorted(answers.items())))
    assert {method for method, _ in answers} == {m.name for m in methods}
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]
