"""proto.domain <-> protobuf: run parameters, Join, tasks, masks and statements survive the wire unchanged.

Every field of the run parameters is set to a value other than its wire default, so a field the
conversion forgot fails the round trip. The digest a participant binds itself to stays the digest of the
protobuf message as received (what earlier versions stored), and a message the domain cannot hold
exactly (a field this version does not read, an enum that names no value) is refused instead of being
read as something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os

import pytest

from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.messages import (
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    Roster,
    ShareDelivery,
    SurvivorSignature,
    UnmaskRequest,
)
from privacy.secagg.parameters import SessionContext, SessionParameters
from proto import convert, domain
from proto.fedprune.v1 import service_pb2 as pb
from pruning.masks import ComparisonGroup, SparsityPattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe

SESSION = bytes(range(32))


def _run(**changes: object) -> domain.RunParameters:
    run = domain.RunParameters(
        run_id=os.urandom(16),
        method=Method.SPARSEGPT,
        pattern=SparsityPattern(sparsity=0.5, n=2, m=4),
        group=ComparisonGroup.COLUMN,
        mode=Mode.ITERATIVE,
        recipe=Recipe.FEDSPALLM,
        nsamples=17,
        seqlen=33,
        privacy=domain.AnnouncedPrivacy(
            randomized_response=True,
            epsilon0=1.25,
            record_level_dp=True,
            delta=1e-6,
            sample_rate=0.3,
            noise_multiplier=0.9,
            target_epsilon=7.5,
            accountant_tolerance=0.2,
        ),
        participants=5,
        min_participants=4,
        threshold=4,
        colluders=1,
        max_input=3,
        chunk_coordinates=4096,
        blocks=6,
        vote_layout_fingerprint=os.urandom(32),
        base_model_fingerprint=os.urandom(32),
        weight_scaling=True,
        protocol_version=2,
        participant_names=("e", "d", "c", "b", "a"),
        owl=domain.OwlTerms(outlier_multiple=4.5, lam=0.1),
    )
    return dataclasses.replace(run, **changes)  # type: ignore[arg-type]


def _wire_defaults(message: object) -> list[str]:
    """Return the fields of a protobuf message (recursively) that hold their wire default."""
    defaults = []
    for field in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        value = getattr(message, field.name)
        if field.message_type is not None and not field.is_repeated:
            defaults += [f"{field.name}.{name}" for name in _wire_defaults(value)]
        elif not value and not (field.has_presence and message.HasField(field.name)):  # type: ignore[attr-defined]
            defaults.append(field.name)
    return defaults


def test_every_run_parameter_survives_domain_to_protobuf_to_domain() -> None:
    run = _run()
    message = convert.run_parameters_to_proto(run)
    assert _wire_defaults(message) == []  # every field was set, so a dropped one would show
    assert convert.run_parameters_from_proto(pb.RunParameters.FromString(message.SerializeToString())) == run


@pytest.mark.parametrize(
    ("method", "group", "mode", "recipe"),
    list(itertools.product(Method, ComparisonGroup, Mode, Recipe)),
)
def test_every_enum_value_survives_the_wire(
    method: Method, group: ComparisonGroup, mode: Mode, recipe: Recipe
) -> None:
    run = _run(method=method, group=group, mode=mode, recipe=recipe)
    assert convert.run_parameters_from_proto(convert.run_parameters_to_proto(run)) == run


@pytest.mark.parametrize("absent", ["noise_multiplier", "target_epsilon", "accountant_tolerance"])
def test_an_absent_optional_privacy_parameter_stays_absent_and_a_zero_stays_zero(absent: str) -> None:
    for value in (None, 0.0):
        run = _run(privacy=dataclasses.replace(_run().privacy, **{absent: value}))
        message = convert.run_parameters_to_proto(run)
        assert message.privacy.HasField(absent) is (value is not None)
        assert convert.run_parameters_from_proto(message) == run


def test_the_run_digest_is_the_digest_of_the_message_as_received() -> None:
    # What earlier versions stored: SHA-256 over the label and the received message's deterministic bytes.
    message = convert.run_parameters_to_proto(_run())
    stored = hashlib.sha256(
        b"fedprune/run-parameters\0" + message.SerializeToString(deterministic=True)
    ).digest()
    assert convert.run_parameters_digest(convert.run_parameters_from_proto(message)) == stored
    # Any field changed changes the digest.
    assert convert.run_parameters_digest(_run(chunk_coordinates=2048)) != convert.run_parameters_digest(
        _run()
    )


@pytest.mark.parametrize("field", ["method", "group", "mode", "recipe"])
@pytest.mark.parametrize("value", [0, 99])
def test_an_enum_that_names_no_value_is_refused_naming_the_field(field: str, value: int) -> None:
    message = convert.run_parameters_to_proto(_run())
    setattr(message, field, value)
    with pytest.raises(InvalidMessageError, match=rf"RunParameters\.{field} must be one of"):
        convert.run_parameters_from_proto(message)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_run_parameters_with_a_field_this_version_does_not_read_are_refused() -> None:
    # What a newer coordinator (or one hoping the site binds to less than it got) could add: read and
    # dropped, the site's digest would cover less than the message it joined under.
    unknown = _varint(99 << 3) + _varint(1)  # field 99, wire type 0 (varint), value 1
    data = convert.run_parameters_to_proto(_run()).SerializeToString() + unknown
    message = pb.RunParameters.FromString(data)
    with pytest.raises(InvalidMessageError, match="fields this version does not read"):
        convert.run_parameters_from_proto(message)
    with pytest.raises(InvalidMessageError, match="fields this version does not read"):
        convert.join_reply_from_proto(pb.JoinReply(run=message, participant_id=1, name="a"))


def test_join_request_and_reply_survive_the_wire() -> None:
    request = domain.JoinRequest(
        base_model_fingerprint=os.urandom(32),
        identity_public_key=os.urandom(32),
        software_version="fedprune-participant/1",
        devices=("cuda",),
        protocol_versions=(2,),
        max_blocks=3,
    )
    assert convert.join_request_from_proto(convert.join_request_to_proto(request)) == request
    unlimited = dataclasses.replace(request, max_blocks=None)
    assert convert.join_request_to_proto(unlimited).capabilities.max_blocks == 0
    assert convert.join_request_from_proto(convert.join_request_to_proto(unlimited)) == unlimited
    reply = domain.JoinReply(run=_run(), participant_id=4, name="d")
    assert convert.join_reply_from_proto(convert.join_reply_to_proto(reply)) == reply
    with pytest.raises(InvalidMessageError, match="JoinReply.run is missing"):
        convert.join_reply_from_proto(pb.JoinReply(participant_id=4, name="d"))


def _parameters() -> SessionParameters:
    return SessionParameters(
        participant_ids=(1, 2, 3),
        threshold=2,
        dimension=640,
        chunk_coordinates=128,
        max_input=1,
        context=SessionContext.fresh(run_id="ab", round=1, block=1).encode(),
    )


def _tasks() -> list[domain.Task]:
    envelope = EncryptedShare(sender=1, recipient=2, nonce=os.urandom(12), ciphertext=os.urandom(40))
    advertisement = KeyAdvertisement(
        participant=2,
        cipher_public_key=os.urandom(32),
        mask_public_key=os.urandom(32),
        signature=os.urandom(64),
    )
    signature = SurvivorSignature(session_id=SESSION, sender=1, signature=os.urandom(64))
    return [
        domain.WaitTask(reason="waiting for 2 more participants"),
        domain.StartSessionTask(
            1,
            domain.SessionTerms.of(_parameters()),
            (domain.Member("a", 1, os.urandom(32)), domain.Member("b", 2, os.urandom(32))),
        ),
        domain.ShareKeysTask(1, SESSION, Roster(advertisements=(advertisement,))),
        domain.MaskedInputTask(
            1, SESSION, ShareDelivery(session_id=SESSION, recipient=2, envelopes=(envelope,))
        ),
        domain.SignSurvivorsTask(
            1, SESSION, ConsistencyCheck(session_id=SESSION, survivors=(1, 2), dropped=(3,))
        ),
        domain.UnmaskTask(
            1,
            SESSION,
            UnmaskRequest(session_id=SESSION, survivors=(1, 2), dropped=(3,), signatures=(signature,)),
        ),
        domain.StatementTask(),
        domain.RunCompleteTask(),
        domain.RunAbortedTask(reason="participant b failed"),
    ]


@pytest.mark.parametrize("task", _tasks(), ids=lambda task: task.kind)
def test_every_task_survives_the_wire_with_its_sequence_and_run(task: domain.Task) -> None:
    run_id = b"" if isinstance(task, domain.WaitTask) else os.urandom(16)
    assigned = domain.Assigned(41, task, run_id)
    message = convert.task_to_proto(assigned)
    assert message.WhichOneof("kind") == task.kind
    assert convert.task_from_proto(pb.Task.FromString(message.SerializeToString())) == assigned


def test_a_session_the_coordinator_issues_arrives_as_the_terms_it_announced() -> None:
    parameters = _parameters()
    issued = domain.Assigned(7, domain.StartSessionTask(1, parameters, ()), b"\x01" * 16)
    received = convert.task_from_proto(convert.task_to_proto(issued))
    assert isinstance(received.task, domain.StartSessionTask)
    terms = received.task.parameters
    assert terms == domain.SessionTerms.of(parameters)
    assert convert.session_parameters_from_terms(terms) == parameters  # the receiver accepts the same session


def test_a_start_session_without_parameters_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidMessageError, match="StartSession.parameters is missing"):
        convert.task_from_proto(pb.Task(sequence=1, start_session=pb.StartSession()))


@pytest.mark.parametrize("size", [0, 1, 9, 64])
def test_a_global_mask_survives_its_chunked_stream(size: int) -> None:
    mask = convert.block_mask_of(3, os.urandom(size), bit_count=size * 8, layout_fingerprint=os.urandom(32))
    chunks = convert.block_mask_to_chunks(mask, chunk_bytes=8)
    assert len(chunks) == max(1, -(-size // 8)) and [c.last for c in chunks] == [False] * (
        len(chunks) - 1
    ) + [True]
    assert convert.block_mask_from_chunks(3, chunks) == mask
    # A stream cut before its last chunk reads as incomplete; none at all, too.
    if len(chunks) > 1:
        assert not convert.block_mask_from_chunks(3, chunks[:-1]).complete
    assert not convert.block_mask_from_chunks(3, []).complete


def test_a_signed_statement_survives_the_wire() -> None:
    statement = domain.SignedStatement(
        run_id=os.urandom(16), participant=3, statement=b'{"participant": "c"}', signature=os.urandom(64)
    )
    assert convert.signed_statement_from_proto(convert.signed_statement_to_proto(statement)) == statement


def test_a_run_without_owl_keeps_the_digest_it_had_before_owl_existed() -> None:
    # Pinned: the digest of this run as a version without OWL computed it. Field 22 is absent when OWL is
    # off, so a site that joined before the upgrade still recognises the run it joined.
    run = domain.RunParameters(
        run_id=bytes(range(16)),
        method=Method.WANDA,
        pattern=SparsityPattern(sparsity=0.5),
        group=ComparisonGroup.LAYER,
        mode=Mode.ONE_SHOT,
        recipe=Recipe.FEDPRLLM,
        nsamples=8,
        seqlen=16,
        privacy=domain.AnnouncedPrivacy(
            randomized_response=True,
            epsilon0=2.0,
            record_level_dp=True,
            delta=1e-5,
            sample_rate=0.5,
            target_epsilon=8.0,
        ),
        participants=3,
        min_participants=3,
        threshold=3,
        colluders=0,
        max_input=1,
        chunk_coordinates=4096,
        blocks=2,
        vote_layout_fingerprint=bytes(32),
        base_model_fingerprint=bytes(range(32)),
        weight_scaling=False,
        protocol_version=2,
        participant_names=("a", "b", "c"),
    )
    assert not convert.run_parameters_to_proto(run).HasField("owl")
    assert (
        convert.run_parameters_digest(run).hex()
        == "4c448e8126d4d5f7f7b937aca2c7d4be1912d6fc6cbf2616f9ccf3f2793f78d5"
    )
    with_owl = dataclasses.replace(run, owl=domain.OwlTerms(outlier_multiple=5.0, lam=0.08))
    assert convert.run_parameters_digest(with_owl) != convert.run_parameters_digest(run)
    assert convert.run_parameters_from_proto(convert.run_parameters_to_proto(with_owl)) == with_owl
