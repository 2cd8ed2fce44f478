"""A coordinator that lies learns nothing: a real participant against a scripted hostile coordinator.

Each test is one attack a deviating coordinator could run on the retry channel of secure aggregation
(docs/SECURE_AGGREGATION.md, "What a lying coordinator cannot do"). The coordinator runs real sessions
(``tests.participant.hostile``) and the site under test is a real ``ParticipantRun``; the assertions are on
what left the site: its refusal, that it signed no second survivor set and sent no unmask share for one,
and that it stopped (``CoordinatorLiedError`` naming the check, exit 1 for the daemon).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from participant.client import WireClient
from participant.config import ParticipantConfig, parse_config
from participant.run import CoordinatorLiedError, ParticipantRun, RunAbortedError
from privacy.secagg import published_view
from pruning.model_io import load_model
from tests.participant.hostile import HostileCoordinator, Session, members

FIVE = ("site-a", "site-b", "site-c", "site-d", "site-e")
FOUR = FIVE[:4]


@pytest.fixture
def site(
    tmp_path: Path, model_dir: Callable[..., Path]
) -> Callable[..., tuple[ParticipantRun, HostileCoordinator]]:
    """Return a factory: (a real participant, the hostile coordinator it talks to) for a script."""
    model_path = model_dir("llama", layers=2)
    model = load_model(model_path)
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "w1 w2 w3"}\n', encoding="utf-8")

    def make(
        sessions: list[Session], *, names: tuple[str, ...] = FIVE, threshold: int = 4, **run: Any
    ) -> tuple[ParticipantRun, HostileCoordinator]:
        config: ParticipantConfig = parse_config(
            {
                "coordinator": {"address": "127.0.0.1:1"},
                "tls": {"ca": "ca.pem", "certificate": "a.pem", "private_key": "a.key"},
                "model": {"directory": str(model_path)},
                "data": {"calibration": str(data)},
                "runtime": {"device": "cpu", "state": str(tmp_path / "state"), "progress": False},
            },
            base_dir=tmp_path,
        )
        coordinator = HostileCoordinator(model, names=names, threshold=threshold, sessions=sessions, **run)
        return ParticipantRun(config, WireClient(coordinator)), coordinator

    return make


def _lied(participant: ParticipantRun, check: str) -> CoordinatorLiedError:
    with pytest.raises(CoordinatorLiedError, match=f"check {check}") as caught:
        participant.run()
    assert caught.value.check == check
    assert participant._secagg is None and not participant._vectors  # secrets and votes dropped
    return caught.value


HONEST = Session(block=0, members=members(*FIVE))


def test_an_honest_run_of_the_script_completes_and_its_sum_holds_the_site(site: Any) -> None:
    participant, coordinator = site([HONEST, dataclasses.replace(HONEST, block=1)])
    participant.run()
    assert coordinator.sent("Unmask") == [0, 1] and len(coordinator.sums) == 2
    assert int(coordinator.sums[0].max()) <= len(FIVE)


def test_a_rechunked_retry_with_the_victim_dropped_is_refused_and_ends_the_run(site: Any) -> None:
    # sum1 - sum2 would be site-e's votes: the retry re-chunks the same block so that the old
    # chunk-dependent digest saw a new vector, and marks the victim dropped.
    retry = dataclasses.replace(HONEST, chunk_coordinates=512, absent=frozenset({"site-e"}))
    participant, coordinator = site([HONEST, retry])
    _lied(participant, "session-chunk")
    assert coordinator.sent("SignSurvivors") == [0] and coordinator.sent("Unmask") == [0]
    assert coordinator.sent("AdvertiseKeys") == [0]  # nothing at all left the site for the retry


def test_a_retry_with_another_max_input_is_refused_and_ends_the_run(site: Any) -> None:
    retry = dataclasses.replace(HONEST, max_input=2, absent=frozenset({"site-e"}))
    participant, coordinator = site([HONEST, retry])
    _lied(participant, "session-encoding")
    assert coordinator.sent("SignSurvivors") == [0] and coordinator.sent("Unmask") == [0]


def test_a_retry_in_the_run_s_own_encoding_gets_no_second_survivor_set(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # What an honest coordinator could also send (a retry after a timeout in the consistency round):
    # the site refuses to sign another set for the same vector, but stays in the run.
    retry = dataclasses.replace(HONEST, absent=frozenset({"site-e"}))
    participant, coordinator = site([HONEST, retry])
    with caplog.at_level(logging.WARNING, logger="participant.run"), pytest.raises(RunAbortedError):
        participant.run()  # it waits for a session it can take until the coordinator gives up
    assert "already summed over survivors" in caplog.text
    assert "proof of a lying coordinator" not in caplog.text
    assert coordinator.sent("MaskedInput") == [0, 1]  # the same vector again: no new release
    assert coordinator.sent("SignSurvivors") == [0] and coordinator.sent("Unmask") == [0]


def test_ids_remapped_between_sessions_are_refused_and_end_the_run(site: Any) -> None:
    # id 4 is site-d, then site-e: signing both would hand over x_d - x_e.
    remapped = Session(
        block=1,
        members=(
            ("site-a", 1, "site-a"),
            ("site-b", 2, "site-b"),
            ("site-c", 3, "site-c"),
            ("site-e", 4, "site-e"),
            ("site-d", 5, "site-d"),
        ),
    )
    participant, coordinator = site([HONEST, remapped])
    error = _lied(participant, "identity-changed")
    assert "site-e" in str(error)
    assert coordinator.sent("AdvertiseKeys") == [0]


@pytest.mark.parametrize(
    "roster",
    [
        # one colluding site (one name, one key) under ids 2, 3 and 4, at t = 3 of 4
        (("site-a", 1, "site-a"), ("site-b", 2, "site-b"), ("site-b", 3, "site-b"), ("site-b", 4, "site-b")),
        # the same key under several names
        (("site-a", 1, "site-a"), ("site-b", 2, "site-b"), ("site-c", 3, "site-b"), ("site-d", 4, "site-b")),
    ],
    ids=["one-name-several-ids", "one-key-several-names"],
)
def test_one_site_under_several_ids_is_refused_before_anything_leaves(site: Any, roster: Any) -> None:
    participant, coordinator = site([Session(block=0, members=roster)], names=FOUR, threshold=3)
    _lied(participant, "roster-repeats-identity")
    assert coordinator.sent("AdvertiseKeys") == []


def test_a_session_larger_than_the_run_is_refused(site: Any) -> None:
    # five members at t = 3 under a run announced as n = 4, t = 3
    participant, coordinator = site([Session(block=0, members=members(*FIVE))], names=FOUR, threshold=3)
    _lied(participant, "session-members")
    assert coordinator.sent("AdvertiseKeys") == []


@pytest.mark.parametrize(
    ("override", "check"),
    [
        ({"threshold": 3}, "session-threshold"),
        ({"colluders": 0}, "session-colluders"),
        ({"dimension": 64}, "session-dimension"),
        ({"context_block": 1}, "session-context"),
    ],
)
def test_a_session_weaker_or_other_than_the_run_is_refused(
    site: Any, override: dict[str, int], check: str
) -> None:
    participant, coordinator = site([dataclasses.replace(HONEST, **override)])
    _lied(participant, check)
    assert coordinator.sent("AdvertiseKeys") == []


def test_a_session_beyond_the_run_s_blocks_is_refused(site: Any) -> None:
    participant, coordinator = site([HONEST, dataclasses.replace(HONEST, block=2)])
    _lied(participant, "session-block-outside-run")
    assert coordinator.sent("AdvertiseKeys") == [0]


def test_after_a_detected_lie_the_site_takes_no_further_session(site: Any) -> None:
    liar = dataclasses.replace(HONEST, other_survivors_at_unmask=True)
    participant, coordinator = site([liar, HONEST, dataclasses.replace(HONEST, block=1)])
    _lied(participant, "unmask-other-survivor-set")
    assert coordinator.sent("Unmask") == []  # no share for the other set left the site
    last_await = max(i for i, (call, _) in enumerate(coordinator.calls) if call == "Await")
    assert coordinator.calls[last_await + 1 :] == []  # the unmask task was its last: nothing answered it
    assert {session for _, session in coordinator.calls} == {-1, 0}  # Join, then session 0; no retry


def test_identities_and_run_parameters_hold_across_a_restart_of_the_site(site: Any) -> None:
    # The history file is written (atomically, fsync'd) before anything it records leaves the site, so
    # a restarted process reads back the ids, keys and run parameters it fixed.
    first, coordinator = site([dataclasses.replace(HONEST, abort_after_advertise=True)])
    with pytest.raises(RunAbortedError):
        first.run()
    assert coordinator.sent("AdvertiseKeys") == [0]
    remapped = Session(
        block=0,
        members=(
            ("site-a", 1, "site-a"),
            ("site-b", 2, "site-b"),
            ("site-c", 3, "site-c"),
            ("site-e", 4, "site-e"),
            ("site-d", 5, "site-d"),
        ),
    )
    restarted, _ = site([remapped], keys=coordinator.keys)
    _lied(restarted, "identity-changed")
    changed, _ = site([HONEST], keys=coordinator.keys, chunk_coordinates=512)
    _lied(changed, "run-parameters-changed")


# ------------------------------------------------------ one view of what the coordinator published
def test_a_site_fetches_earlier_masks_and_binds_them_before_a_later_block_s_session(site: Any) -> None:
    participant, coordinator = site([HONEST, dataclasses.replace(HONEST, block=1)])
    participant.run()
    # One-shot votes do not read block 0's mask, yet the site checks it before block 1's session.
    assert coordinator.sent("BlockMask") == [1]
    assert coordinator.sent("Unmask") == [0, 1]


def test_a_session_binding_another_mask_than_the_site_was_served_is_refused_before_anything_leaves(
    site: Any,
) -> None:
    # The coordinator serves this site one global mask of block 0 and binds, in block 1's session, the
    # view of another (the one the other sites were shown): the site takes no part in that session.
    _, script = site([])
    shown_to_others = bytearray(script.masks[0])
    shown_to_others[0] ^= 0xFF
    others_view = published_view(blocks=[(hashlib.sha256(bytes(shown_to_others)).digest(), None)])
    participant, coordinator = site([HONEST, dataclasses.replace(HONEST, block=1, published=others_view)])
    _lied(participant, "published-view")
    assert coordinator.sent("AdvertiseKeys") == [0]  # nothing left the site for block 1
    assert coordinator.sent("BlockMask") == [1]
