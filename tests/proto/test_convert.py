"""proto.convert: every secure-aggregation message survives domain -> protobuf bytes -> domain unchanged."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pytest

from privacy.secagg.client import SecAggClient
from privacy.secagg.driver import identity_keys_for
from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.messages import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    RevealedShare,
    Roster,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secagg.parameters import SessionParameters
from privacy.secagg.server import SecAggServer
from proto import convert
from proto.fedprune.v1 import secagg_pb2 as pb

SESSION = bytes(range(32))


def _over_the_wire(message: Any) -> Any:
    """Return what the receiver decodes after the message went through protobuf bytes."""
    encoded = convert.to_proto(message)
    decoded = type(encoded).FromString(encoded.SerializeToString())
    return convert.from_proto(decoded)


EXAMPLES = [
    SessionParameters(participant_ids=(1, 5, 9), threshold=2, dimension=1000, chunk_coordinates=128,
                      context=b"run/block 3"),
    KeyAdvertisement(participant=7, cipher_public_key=os.urandom(32), mask_public_key=os.urandom(32),
                     signature=os.urandom(64)),
    Roster(advertisements=(
        KeyAdvertisement(participant=1, cipher_public_key=b"a" * 32, mask_public_key=b"b" * 32, signature=b"s" * 64),
        KeyAdvertisement(participant=2 ** 32 - 1, cipher_public_key=b"c" * 32, mask_public_key=b"d" * 32,
                         signature=b"t" * 64),
    )),
    Roster(advertisements=()),
    EncryptedShare(sender=1, recipient=2, nonce=b"n" * 12, ciphertext=b"x" * 90),
    ShareKeys(session_id=SESSION, sender=3, envelopes=(
        EncryptedShare(sender=3, recipient=1, nonce=b"1" * 12, ciphertext=b"c1"),
        EncryptedShare(sender=3, recipient=2, nonce=b"2" * 12, ciphertext=b"c2"),
    )),
    ShareDelivery(session_id=SESSION, recipient=1, envelopes=(
        EncryptedShare(sender=2, recipient=1, nonce=b"3" * 12, ciphertext=b"c3"),
    )),
    MaskedInputChunk(session_id=SESSION, participant=4, chunk_index=2 ** 40, payload=os.urandom(4096)),
    MaskedInputChunk(session_id=SESSION, participant=4, chunk_index=0, payload=b""),
    MaskedInputDone(session_id=SESSION, participant=4, chunk_count=3, digest=os.urandom(32)),
    UnmaskRequest(session_id=SESSION, survivors=(1, 3), dropped=(2,)),
    RevealedShare(owner=9, value=os.urandom(33)),
    UnmaskResponse(session_id=SESSION, sender=1,
                   self_seed_shares=(RevealedShare(owner=3, value=b"v" * 33),),
                   mask_key_shares=(RevealedShare(owner=2, value=b"w" * 33),)),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_unchanged(message: Any) -> None:
    assert _over_the_wire(message) == message


def test_a_whole_session_over_protobuf_bytes_sums_the_votes() -> None:
    """Every message of a real session crosses the wire as protobuf; the coordinator still gets the sum."""
    parameters = _over_the_wire(SessionParameters(participant_ids=(1, 2, 3), threshold=2, dimension=300,
                                                  chunk_coordinates=128, context=b"test"))
    private, public = identity_keys_for(parameters.participant_ids)
    rng = np.random.default_rng(0)
    votes = {p: rng.integers(0, 2, parameters.dimension, dtype=np.uint8) for p in parameters.participant_ids}
    clients = {p: SecAggClient(participant=p, parameters=parameters, identity_key=private[p], identity_keys=public)
               for p in parameters.participant_ids}
    with SecAggServer(parameters=parameters, identity_keys=public) as server:
        for client in clients.values():
            server.receive_advertisement(_over_the_wire(client.advertise_keys()))
        roster = _over_the_wire(server.close_advertisements())
        for client in clients.values():
            server.receive_shares(_over_the_wire(client.share_keys(roster)))
        for p, delivery in server.close_shares().items():
            clients[p].receive_shares(_over_the_wire(delivery))
        for p, client in clients.items():
            for message in client.masked_input(votes[p]):
                decoded = _over_the_wire(message)
                if isinstance(decoded, MaskedInputChunk):
                    server.receive_masked_chunk(decoded)
                else:
                    server.receive_masked_done(decoded)
        request = _over_the_wire(server.close_masked_input())
        for p in request.survivors:
            server.receive_unmask(_over_the_wire(clients[p].unmask(request)))
        result = server.finalize()
    expected = sum(v.astype(np.int64) for v in votes.values())
    np.testing.assert_array_equal(result.keep_votes, expected)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.ShareKeys(session_id=SESSION, sender=0), "ShareKeys.sender"),
        (pb.ShareKeys(session_id=b"short", sender=1), "ShareKeys.session_id"),
        (pb.ShareKeys(session_id=SESSION, sender=1, envelopes=[pb.EncryptedShare(sender=1, recipient=2),
                                                              pb.EncryptedShare(sender=1, recipient=0)]),
         "ShareKeys.envelopes[1].recipient"),
        (pb.UnmaskRequest(session_id=SESSION, survivors=[1, 0]), "UnmaskRequest.survivors[1]"),
        (pb.Roster(advertisements=[pb.KeyAdvertisement(participant=0)]), "Roster.advertisements[0].participant"),
        (pb.MaskedInputChunk(session_id=b"", participant=1), "MaskedInputChunk.session_id"),
        (pb.UnmaskResponse(session_id=SESSION, sender=1, mask_key_shares=[pb.RevealedShare(owner=0)]),
         "UnmaskResponse.mask_key_shares[0].owner"),
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
        convert.from_proto(pb.ConsistencyCheck())
