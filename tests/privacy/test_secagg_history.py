"""A vector is its content, a survivor set is its people: the participant's memory across sessions.

A coordinator that gets one keep-vote vector summed over two survivor sets learns the difference of the
sums. These tests play the sessions such a coordinator would run (re-chunked, re-encoded, re-numbered
retries) against real clients and server, and check that a participant never signs a second set for
one vector, whatever the session's parameters or ids, also after its history went through a restart.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.errors import PrivacyError
from privacy.secagg import (
    ContextReplayError,
    ContradictoryViewError,
    CoordinatorMisbehaviour,
    DropPoint,
    ReplayError,
    SessionContext,
    SessionHistory,
    SessionParameters,
    keep_votes_digest,
    minimum_threshold,
    run_session,
)

PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")
KEYS = {name: Ed25519PrivateKey.generate() for name in PEOPLE}
DIMENSION = 256
ALICE_VOTES = np.random.default_rng(7).integers(0, 2, DIMENSION).astype(np.uint8)


# ---------------------------------------------------------------------- the canonical vector digest
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.uint32, np.int64, np.uint64])
def test_a_vector_has_one_digest_whatever_its_lane_type(dtype: type) -> None:
    assert keep_votes_digest(ALICE_VOTES.astype(dtype)) == keep_votes_digest(ALICE_VOTES)


def test_different_vectors_have_different_digests_also_across_widths() -> None:
    wide = ALICE_VOTES.astype(np.uint16)
    wide[0] = 256  # needs two bytes: the byte strings could collide with a longer 1-byte vector
    assert keep_votes_digest(wide) != keep_votes_digest(ALICE_VOTES)
    flipped = ALICE_VOTES.copy()
    flipped[-1] ^= 1
    assert keep_votes_digest(flipped) != keep_votes_digest(ALICE_VOTES)
    assert keep_votes_digest(ALICE_VOTES[:-8]) != keep_votes_digest(ALICE_VOTES)


# ---------------------------------------------------------------------- sessions a liar would run
def _session(
    people: tuple[str, ...],
    *,
    history: SessionHistory,
    chunk: int = 64,
    max_input: int = 1,
    absent: tuple[str, ...] = (),
    alice_dtype: type = np.uint8,
    ids: tuple[int, ...] | None = None,
) -> tuple[bool, frozenset[str]]:
    """Return (did alice sign, the people the session summed) for one session with ids as given."""
    ids = ids or tuple(range(1, len(people) + 1))
    by_id = dict(zip(ids, people, strict=True))
    order = tuple(sorted(by_id))
    parameters = SessionParameters(
        participant_ids=order,
        threshold=minimum_threshold(len(order)),
        dimension=DIMENSION,
        context=SessionContext.fresh(run_id="run", round=0, block=0).encode(),
        chunk_coordinates=chunk,
        max_input=max_input,
    )
    alice = next(p for p, name in by_id.items() if name == "alice")
    votes = {
        p: ALICE_VOTES.astype(alice_dtype)
        if name == "alice"
        else np.random.default_rng(p).integers(0, 2, DIMENSION).astype(np.uint8)
        for p, name in by_id.items()
    }
    private = {p: KEYS[name] for p, name in by_id.items()}
    public = {p: key.public_key() for p, key in private.items()}
    run = run_session(
        parameters,
        votes,
        drops={p: DropPoint.BEFORE_MASKED_INPUT for p, name in by_id.items() if name in absent},
        identities=(private, public),
        histories={alice: history},
        names=by_id,
    )
    signed = run.clients[alice].state.value in ("survivors_signed", "done")
    summed = frozenset(by_id[p] for p in run.result.contributors) if run.result is not None else frozenset()
    return signed, summed


FIVE = PEOPLE[:5]


@pytest.mark.parametrize(
    "retry",
    [
        {"chunk": 128},
        {"max_input": 2},
        {"alice_dtype": np.uint16, "max_input": 2, "chunk": 192},
        {"ids": (1, 2, 3, 4, 9)},  # renumbered: the people are what counts
    ],
    ids=["rechunked", "other-max-input", "other-lanes", "renumbered"],
)
def test_a_retry_with_the_victim_dropped_gets_no_second_signature(retry: dict) -> None:
    history = SessionHistory()
    assert _session(FIVE, history=history) == (True, frozenset(FIVE))
    signed, summed = _session(FIVE, history=history, absent=("erin",), **retry)
    assert not signed and summed == frozenset()  # refused: no sum over the second set exists


def test_a_retry_over_the_same_people_is_signed_again() -> None:
    history = SessionHistory()
    _session(FIVE, history=history)
    assert _session(FIVE, history=history, chunk=128, ids=(2, 3, 5, 7, 11)) == (True, frozenset(FIVE))


def test_the_history_survives_a_restart_and_refuses_what_it_refused_before(tmp_path: os.PathLike) -> None:
    history = SessionHistory()
    _session(FIVE, history=history)
    path = os.path.join(tmp_path, "history.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(history.export(), file)
    with open(path, encoding="utf-8") as file:
        restored = SessionHistory.restore(json.load(file))
    assert _session(FIVE, history=restored, chunk=128, absent=("erin",)) == (False, frozenset())


def test_a_history_of_another_format_is_refused() -> None:
    with pytest.raises(PrivacyError, match="not of format 2"):
        SessionHistory.restore({"contexts": [], "survivor_sets": []})


def test_a_reused_context_is_a_proof_against_the_coordinator() -> None:
    history = SessionHistory()
    history.join(b"ctx")
    with pytest.raises(ContextReplayError) as caught:
        history.join(b"ctx")
    assert (
        isinstance(caught.value, CoordinatorMisbehaviour) and caught.value.check == "session-context-reused"
    )


def test_agreeing_twice_to_other_people_is_refused_but_is_no_proof() -> None:
    # An honest coordinator that retries after a timeout in the consistency round can meet other
    # survivors: the participant refuses that session without calling the coordinator a liar.
    history = SessionHistory()
    digest = keep_votes_digest(ALICE_VOTES)
    history.agree(votes_digest=digest, survivors=(("alice", "aa"), ("bob", "bb")))
    with pytest.raises(ReplayError) as caught:
        history.agree(votes_digest=digest, survivors=(("alice", "aa"), ("carol", "cc")))
    assert not isinstance(caught.value, CoordinatorMisbehaviour)


def test_one_release_per_block_and_identities_fixed_for_the_run() -> None:
    history = SessionHistory()
    history.release(block=0, votes_digest=b"\x01" * 32)
    history.release(block=0, votes_digest=b"\x01" * 32)  # a retry with the same vector
    with pytest.raises(ContradictoryViewError, match="second-release"):
        history.release(block=0, votes_digest=b"\x02" * 32)
    history.bind_identity(name="bob", participant=2, key=b"\x0b" * 32)
    for name, participant, key in (
        ("bob", 3, b"\x0b" * 32),
        ("bob", 2, b"\x0c" * 32),
        ("carol", 2, b"\x0c" * 32),
    ):
        with pytest.raises(ContradictoryViewError, match="identity-changed"):
            history.bind_identity(name=name, participant=participant, key=key)
    restored = SessionHistory.restore(history.export())
    with pytest.raises(ContradictoryViewError, match="identity-changed"):
        restored.bind_identity(name="carol", participant=5, key=b"\x0b" * 32)


# ---------------------------------------------------------------------- property: one set per vector
_SESSION = st.fixed_dictionaries(
    {
        "others": st.lists(st.sampled_from(PEOPLE[1:]), min_size=2, max_size=4, unique=True),
        "chunk": st.sampled_from([64, 128, 192]),
        "max_input": st.integers(1, 3),
        "alice_dtype": st.sampled_from([np.bool_, np.uint8, np.uint16, np.uint64]),
        "id_offset": st.integers(0, 5),
        "drop": st.integers(0, 2),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SESSION, min_size=2, max_size=4))
def test_no_accepted_sequence_of_sessions_sums_one_vector_over_two_sets(sessions: list[dict]) -> None:
    history = SessionHistory()
    summed: set[frozenset[str]] = set()
    signed_sets: set[frozenset[str]] = set()
    for spec in sessions:
        people = ("alice", *spec["others"])
        n = len(people)
        droppable = n - minimum_threshold(n)
        absent = tuple(spec["others"][: min(spec["drop"], droppable)])
        ids = tuple(range(1 + spec["id_offset"], 1 + spec["id_offset"] + n))
        vote_dtype = (
            spec["alice_dtype"] if spec["max_input"] > 1 or spec["alice_dtype"] is not np.uint64 else np.uint8
        )
        signed, result = _session(
            people,
            history=history,
            chunk=spec["chunk"],
            max_input=spec["max_input"],
            absent=absent,
            alice_dtype=vote_dtype,
            ids=ids,
        )
        if signed:
            signed_sets.add(frozenset(p for p in people if p not in absent))
        if result:
            summed.add(result)
    assert len(signed_sets) <= 1 and len(summed) <= 1


def test_an_allocation_release_is_recorded_apart_from_the_blocks_own_and_survives_a_restart() -> None:
    history = SessionHistory()
    history.release(block=0, votes_digest=b"\x01" * 32)
    history.release(block=0, votes_digest=b"\x02" * 32, allocation=True)  # another vector, another slot
    assert history.released(0) == b"\x01" * 32 and history.released(0, allocation=True) == b"\x02" * 32
    with pytest.raises(ContradictoryViewError, match="allocation statistics 0"):
        history.release(block=0, votes_digest=b"\x01" * 32, allocation=True)
    restored = SessionHistory.restore(history.export())
    assert restored.released(0, allocation=True) == b"\x02" * 32 and restored.released(0) == b"\x01" * 32
    # A history without allocation releases exports exactly as before they existed.
    assert "allocation_releases" not in SessionHistory().export()
