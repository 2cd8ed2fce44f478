"""proto.convert: every secure-aggregation message survives domain -> protobuf bytes -> domain unchanged.

The examples are built from the dataclasses' own type hints, so a field added to a message in
``privacy.secagg.messages`` without a protobuf field and a conversion fails here.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import typing
from typing import Any

import pytest

from privacy.secagg import messages
from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.parameters import PROTOCOL_VERSION, SessionContext, SessionParameters
from proto import convert
from proto.fedprune.v1 import secagg_pb2 as pb

SESSION = bytes(range(32))
# Dataclasses of privacy.secagg.messages that never travel (the server's own record of a chunk).
NOT_ON_THE_WIRE = {"RecordedChunk"}
# Domain fields that have no wire field on purpose (see secagg.proto).
LOCAL_ONLY_FIELDS = {"SessionParameters": {"allow_unsafe_threshold"}}


def _wire_dataclasses() -> list[type]:
    return [
        value
        for name, value in vars(messages).items()
        if dataclasses.is_dataclass(value)
        and isinstance(value, type)
        and value.__module__ == messages.__name__
        and name not in NOT_ON_THE_WIRE
    ]


_counter = itertools.count(1)


def _example_value(hint: Any) -> Any:
    if hint is bytes:
        return os.urandom(32)
    if hint is int:
        return next(_counter) * 7919  # distinct, valid participant ids, chunk indices and counts
    if dataclasses.is_dataclass(hint):
        return _example(hint)  # type: ignore[arg-type]
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_example_value(item) for _ in range(3))
    raise AssertionError(f"no example for type {hint!r}: extend _example_value")


def _example(cls: type) -> Any:
    """Return an instance of ``cls`` with every field filled with a distinct, valid value."""
    hints = typing.get_type_hints(cls, vars(messages))
    values = {}
    for field in dataclasses.fields(cls):
        values[field.name] = SESSION if field.name == "session_id" else _example_value(hints[field.name])
    return cls(**values)


def _over_the_wire(message: Any) -> Any:
    """Return what the receiver decodes after the message went through protobuf bytes."""
    encoded = convert.to_proto(message)
    decoded = type(encoded).FromString(encoded.SerializeToString())
    return convert.from_proto(decoded)


@pytest.mark.parametrize("cls", _wire_dataclasses(), ids=lambda c: c.__name__)
def test_every_message_round_trips_unchanged(cls: type) -> None:
    message = _example(cls)
    assert _over_the_wire(message) == message


@pytest.mark.parametrize("cls", [*_wire_dataclasses(), SessionParameters], ids=lambda c: c.__name__)
def test_protobuf_messages_mirror_the_dataclass_fields(cls: type) -> None:
    wire = {field.name for field in pb.DESCRIPTOR.message_types_by_name[cls.__name__].fields}
    domain = {field.name for field in dataclasses.fields(cls)} - LOCAL_ONLY_FIELDS.get(cls.__name__, set())
    assert wire == domain


def test_session_parameters_round_trip_with_a_real_context() -> None:
    context = SessionContext.fresh(run_id="run-7", round=0, block=3).encode()
    parameters = SessionParameters(
        participant_ids=(1, 5, 9, 12),
        threshold=3,
        dimension=1000,
        chunk_coordinates=128,
        context=context,
        colluders=1,
    )
    assert _over_the_wire(parameters) == parameters


def test_the_wire_cannot_lower_the_threshold_below_the_safe_minimum() -> None:
    context = SessionContext.fresh(run_id="run-7", round=0, block=0).encode()
    unsafe = pb.SessionParameters(
        participant_ids=[1, 2, 3, 4],
        threshold=2,
        dimension=64,
        chunk_coordinates=64,
        max_input=1,
        context=context,
        protocol_version=PROTOCOL_VERSION,
    )
    with pytest.raises(ValueError, match="threshold"):
        convert.from_proto(unsafe)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.ShareKeys(session_id=SESSION, sender=0), "ShareKeys.sender"),
        (pb.ShareKeys(session_id=b"short", sender=1), "ShareKeys.session_id"),
        (
            pb.ShareKeys(
                session_id=SESSION,
                sender=1,
                envelopes=[
                    pb.EncryptedShare(sender=1, recipient=2),
                    pb.EncryptedShare(sender=1, recipient=0),
                ],
            ),
            "ShareKeys.envelopes[1].recipient",
        ),
        (
            pb.ShareKeys(session_id=SESSION, sender=1, share_digests=[pb.ShareDigest(holder=0)]),
            "ShareKeys.share_digests[0].holder",
        ),
        (pb.ConsistencyCheck(session_id=SESSION, survivors=[1, 0]), "ConsistencyCheck.survivors[1]"),
        (
            pb.UnmaskRequest(
                session_id=SESSION,
                survivors=[1],
                signatures=[pb.SurvivorSignature(session_id=SESSION, sender=0)],
            ),
            "UnmaskRequest.signatures[0].sender",
        ),
        (
            pb.Roster(advertisements=[pb.KeyAdvertisement(participant=0)]),
            "Roster.advertisements[0].participant",
        ),
        (pb.MaskedInputChunk(session_id=b"", participant=1), "MaskedInputChunk.session_id"),
        (
            pb.UnmaskResponse(session_id=SESSION, sender=1, mask_key_shares=[pb.RevealedShare(owner=0)]),
            "UnmaskResponse.mask_key_shares[0].owner",
        ),
    ],
)
def test_malformed_messages_are_rejected_naming_the_field(message: Any, field: str) -> None:
    with pytest.raises(InvalidMessageError, match="^" + re.escape(field) + " "):
        convert.from_proto(message)


def test_absent_sub_message_is_named() -> None:
    from proto.fedprune.v1 import service_pb2

    with pytest.raises(InvalidMessageError, match="ShareKeysRequest.share_keys is missing"):
        convert.require_field(service_pb2.ShareKeysRequest(), "share_keys")


def test_unknown_types_are_refused() -> None:
    with pytest.raises(TypeError):
        convert.to_proto(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        convert.from_proto(object())
