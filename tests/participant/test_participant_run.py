"""participant.run without a network: what a site accepts at join, what it spends, whose keys it trusts.

A fake client stands in for the coordinator, so each test reads as the exchange a site's operator would see:
the run's announced parameters, the participant's answer (refusal message, budget ledger, roster check).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from participant.client import CoordinatorClient
from participant.config import ParticipantConfig, parse_config
from participant.privacy import RunPrivacy, record_level_epsilon
from participant.run import ParticipantRun, PeerKeyError, RunRefusedError, planned_spend, run_privacy
from privacy.accounting import GaussianRelease, gaussian_epsilon
from privacy.budget import LifetimeBudget
from privacy.errors import PrivacyError
from privacy.secagg import ContradictoryViewError, SessionHistory
from privacy.signing import key_fingerprint, raw_public_key
from proto.fedprune.v1 import secagg_pb2 as secagg_pb
from proto.fedprune.v1 import service_pb2 as pb
from pruning.layout import VoteLayout, base_model_fingerprint
from pruning.model_io import load_model

BLOCKS = 2


class FakeCoordinator:
    """Answers Join with ``reply`` and Await with ``tasks`` in order; records every other call."""

    def __init__(self, reply: pb.JoinReply, tasks: list[pb.Task] | None = None) -> None:
        self.reply = reply
        self.tasks = list(tasks or [])
        self.calls: list[str] = []

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        self.calls.append("Join")
        return self.reply

    def await_task(self, run_id: bytes, *, max_wait_s: float) -> pb.Task:
        return self.tasks.pop(0)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)

        return record


@pytest.fixture
def site(tmp_path: Path, model_dir: Callable[..., Path]) -> Callable[..., ParticipantConfig]:
    """Return a factory of participant configs on one tiny model (sections merged over a base)."""
    model = model_dir("llama", layers=BLOCKS)
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "w1 w2 w3"}\n', encoding="utf-8")

    def make(**sections: dict[str, Any]) -> ParticipantConfig:
        base: dict[str, Any] = {
            "coordinator": {"address": "127.0.0.1:1"},
            "tls": {"ca": "ca.pem", "certificate": "site-a.pem", "private_key": "site-a.key"},
            "model": {"directory": str(model)},
            "data": {"calibration": str(data)},
            "runtime": {"device": "cpu", "state": str(tmp_path / "state"), "progress": False},
        }
        for name, values in sections.items():
            base[name] = {**base.get(name, {}), **values}
        return parse_config(base, base_dir=tmp_path)

    return make


def _reply(config: ParticipantConfig, *, run_id: bytes = b"\x01" * 16, **privacy: Any) -> pb.JoinReply:
    model = load_model(config.model.directory)
    settings = {"randomized_response": False, "record_level_dp": True, "target_epsilon": 4.0}
    settings.update(privacy)
    settings.setdefault("delta", 1e-5)
    settings.setdefault("sample_rate", 1.0)
    run = pb.RunParameters(
        run_id=run_id,
        method=privacy.pop("method", pb.METHOD_WANDA) if "method" in privacy else pb.METHOD_WANDA,
        pattern=pb.SparsityPattern(sparsity=0.5),
        mode=pb.MODE_ONE_SHOT,
        nsamples=4,
        seqlen=8,
        privacy=pb.PrivacyParameters(**{k: v for k, v in settings.items() if k != "method"}),
        participants=3,
        min_participants=3,
        threshold=2,
        colluders=0,
        max_input=1,
        chunk_coordinates=1024,
        participant_names=["site-a", "site-b", "site-c"],
        blocks=BLOCKS,
        vote_layout_fingerprint=VoteLayout.for_model(model).fingerprint(),
        base_model_fingerprint=base_model_fingerprint(model),
    )
    return pb.JoinReply(run=run, participant_id=1, name="site-a")


def _participant(config: ParticipantConfig, reply: pb.JoinReply, tasks: list[pb.Task] | None = None) -> Any:
    client = FakeCoordinator(reply, tasks)
    return ParticipantRun(config, cast(CoordinatorClient, client)), client


# ---------------------------------------------------------------------- record-level epsilon of a sigma
def test_a_run_that_states_a_noise_multiplier_reports_the_epsilon_the_accountants_give(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site()
    reply = _reply(config, target_epsilon=None, noise_multiplier=1.0)
    reply.run.privacy.ClearField("target_epsilon")
    expected = gaussian_epsilon([GaussianRelease(noise_multiplier=1.0, count=BLOCKS)], delta=1e-5).epsilon
    assert planned_spend(reply.run) == (pytest.approx(expected), 1e-5)

    loose = site(privacy={"max_target_epsilon": expected * 1.01})
    participant, _ = _participant(loose, reply)
    participant.join()  # within the minimum: accepted (it used to be refused for stating no epsilon)

    strict = site(privacy={"max_target_epsilon": expected * 0.99})
    participant, _ = _participant(strict, reply)
    with pytest.raises(RunRefusedError, match=f"record-level epsilon {expected:g}, above max_target_epsilon"):
        participant.join()


def test_the_accountant_tolerance_comes_from_the_run_and_defaults_when_absent() -> None:
    stated = pb.PrivacyParameters(record_level_dp=True, noise_multiplier=1.0, delta=1e-5, sample_rate=0.1)
    assert run_privacy(stated).accountant_tolerance == 0.10
    stated.accountant_tolerance = 0.3
    assert run_privacy(stated).accountant_tolerance == 0.3
    # At q = 0.1 RDP is 10-16% looser than PRV: the run's recorded tolerance is what lets it be accounted.
    settings = run_privacy(stated)
    assert record_level_epsilon(settings, blocks=8) is not None


def test_without_record_level_dp_no_finite_epsilon_is_claimed() -> None:
    settings = RunPrivacy(
        randomized_response=True,
        epsilon0=1.0,
        record_level_dp=False,
        noise_multiplier=None,
        target_epsilon=None,
        delta=1e-5,
        sample_rate=1.0,
    )
    assert record_level_epsilon(settings, blocks=4) is None


# ---------------------------------------------------------------------- lifetime budget
def _budget(config: ParticipantConfig) -> LifetimeBudget:
    assert config.privacy is not None and config.privacy.lifetime_epsilon is not None
    return LifetimeBudget(
        config.runtime.budget_path,
        dataset=config.data.dataset_name,
        lifetime_epsilon=config.privacy.lifetime_epsilon,
    )


def test_the_lifetime_budget_is_committed_before_any_vote_and_refuses_the_run_that_would_pass_it(
    site: Callable[..., ParticipantConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = site(privacy={"lifetime_epsilon": 10.0}, data={"dataset": "notes-2024"})
    assert config.runtime.budget_path == config.runtime.state / "privacy_budget.json"
    first = _reply(config, run_id=b"\x01" * 16, target_epsilon=6.0)
    participant, _ = _participant(config, first, [pb.Task(run_complete=pb.RunComplete())])

    seen: list[float] = []

    def prepare(reply: pb.JoinReply) -> None:
        seen.append(_budget(config).spent().epsilon)  # what is on disk when the first vote would be computed
        participant.params = reply.run
        participant.run_id = reply.run.run_id.hex()

    monkeypatch.setattr(participant, "_prepare", prepare)
    participant.run()
    assert seen == [6.0]

    # The same run again (a restarted participant resuming it): accepted, not charged twice.
    again, _ = _participant(config, first)
    again.join()
    again._commit_budget()
    assert _budget(config).spent().runs == 1

    # Another run of 6 would make 12 > 10: refused at join, with the figures, before any data is read.
    second, client = _participant(config, _reply(config, run_id=b"\x02" * 16, target_epsilon=6.0))
    with pytest.raises(RunRefusedError, match=r"lifetime_epsilon of dataset 'notes-2024' is 10.*needs 6"):
        second.run()
    assert client.calls == ["Join"]
    assert _budget(config).spent().epsilon == 6.0


def test_a_lifetime_budget_refuses_exact_statistics_but_not_magnitude_pruning(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site(privacy={"lifetime_epsilon": 10.0})
    exact = _reply(config, record_level_dp=False, target_epsilon=None)
    exact.run.privacy.ClearField("target_epsilon")
    participant, _ = _participant(config, exact)
    with pytest.raises(RunRefusedError, match="no record-level DP .* unbounded epsilon"):
        participant.join()

    magnitude = _reply(config, run_id=b"\x03" * 16, record_level_dp=False, target_epsilon=None)
    magnitude.run.privacy.ClearField("target_epsilon")
    magnitude.run.method = pb.METHOD_MAGNITUDE
    assert planned_spend(magnitude.run) == (0.0, 0.0)  # magnitude pruning reads no data
    participant, _ = _participant(config, magnitude)
    participant.join()
    participant._commit_budget()
    assert _budget(config).spent().epsilon == 0.0


# ---------------------------------------------------------------------- pinned identity keys
def _members(config: ParticipantConfig, participant: Any, peers: dict[str, bytes]) -> list[pb.Member]:
    own = pb.Member(
        participant_id=1, name="site-a", identity_public_key=raw_public_key(participant.identity_key)
    )
    return [own] + [
        pb.Member(participant_id=i + 2, name=name, identity_public_key=key)
        for i, (name, key) in enumerate(peers.items())
    ]


def _joined(config: ParticipantConfig) -> Any:
    reply = _reply(config)
    participant, _ = _participant(config, reply)
    participant.participant_id, participant.name, participant.params = 1, "site-a", reply.run
    participant.history = SessionHistory()
    return participant


def _check(participant: Any, members: list[pb.Member]) -> None:
    participant._check_members(members, [m.participant_id for m in members])


def test_pinned_peers_refuse_a_roster_with_another_key_or_an_unpinned_member(
    site: Callable[..., ParticipantConfig], tmp_path: Path
) -> None:
    b_key, c_key, forged = (raw_public_key(Ed25519PrivateKey.generate()) for _ in range(3))
    (tmp_path / "site-c.pub").write_text(c_key.hex(), encoding="utf-8")
    config = site(peers={"site-b": key_fingerprint(b_key)[:32], "site-c": "site-c.pub"})
    assert set(config.pinned_keys()) == {"site-b", "site-c"}
    participant = _joined(config)
    only_b = _joined(site(peers={"site-b": key_fingerprint(b_key)[:32]}))
    with pytest.raises(PeerKeyError, match="'site-c', which has no pinned key"):
        _check(only_b, _members(config, only_b, {"site-b": b_key, "site-c": c_key}))

    _check(participant, _members(config, participant, {"site-b": b_key, "site-c": c_key}))
    with pytest.raises(
        PeerKeyError, match=r"relays for 'site-b' .* differs from the one pinned in peers.site-b"
    ):
        _check(participant, _members(config, participant, {"site-b": forged, "site-c": c_key}))
    with pytest.raises(ContradictoryViewError, match=r"session-members: .*\['site-z'\], not among the run's"):
        _check(participant, _members(config, participant, {"site-b": b_key, "site-z": forged}))


def test_without_pins_the_participant_warns_and_refuses_a_key_that_changes_within_the_run(
    site: Callable[..., ParticipantConfig], caplog: pytest.LogCaptureFixture
) -> None:
    config = site()
    participant, _ = _participant(config, _reply(config))
    with caplog.at_level(logging.WARNING, logger="participant.run"):
        participant.join()
    assert "no [peers] identity keys pinned" in caplog.text
    participant.participant_id, participant.name, participant.params = 1, "site-a", _reply(config).run
    participant.history = SessionHistory()
    b_key, forged = (raw_public_key(Ed25519PrivateKey.generate()) for _ in range(2))
    _check(participant, _members(config, participant, {"site-b": b_key}))
    with pytest.raises(
        ContradictoryViewError, match="identity-changed: .*'site-b' with another identity key"
    ):
        _check(participant, _members(config, participant, {"site-b": forged}))


def test_a_roster_that_gives_this_participant_another_key_is_refused(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site()
    participant = _joined(config)
    members = _members(config, participant, {})
    members[0].identity_public_key = raw_public_key(Ed25519PrivateKey.generate())
    with pytest.raises(PeerKeyError, match="another identity for this participant"):
        _check(participant, members)


def test_a_bad_pin_fails_at_load_naming_the_peer(site: Callable[..., ParticipantConfig]) -> None:
    from participant.config import ConfigError

    with pytest.raises(ConfigError, match="peers: site-b: 'xyz' is neither a readable public-key file"):
        site(peers={"site-b": "xyz"})


# ---------------------------------------------------------------------- malformed and unexpected tasks
def test_malformed_or_unexpected_tasks_are_refused_and_the_participant_carries_on(
    site: Callable[..., ParticipantConfig], caplog: pytest.LogCaptureFixture
) -> None:
    config = site()
    reply = _reply(config, method=pb.METHOD_MAGNITUDE)
    reply.run.method = pb.METHOD_MAGNITUDE
    ref = pb.SessionRef(run_id=reply.run.run_id, block=0, session_id=b"\x00" * 32)
    tasks = [
        pb.Task(sequence=1, share_keys=pb.ShareKeysTask(session=ref)),  # no session was started
        pb.Task(sequence=2, unmask=pb.UnmaskTask(session=ref)),
        pb.Task(sequence=3, start_session=pb.StartSession(session=ref)),  # no parameters at all
        pb.Task(
            sequence=4,
            start_session=pb.StartSession(
                session=ref,
                parameters=secagg_pb.SessionParameters(
                    participant_ids=[1, 2],
                    threshold=2,
                    dimension=VoteLayout.for_block(load_model(config.model.directory), 0).dimension,
                    chunk_coordinates=1024,
                    max_input=1,
                    ring_headroom=True,
                    context=b"garbage",
                ),
            ),
        ),
        pb.Task(sequence=5, wait=pb.Wait(reason="later")),
        pb.Task(sequence=6, run_complete=pb.RunComplete()),
    ]
    participant, client = _participant(config, reply, tasks)
    with caplog.at_level(logging.WARNING, logger="participant.run"):
        participant.run()  # returns normally: nothing above crashed it
    assert caplog.text.count("refused by this participant") == 4
    assert client.calls == ["Join"]  # it answered none of them


# ---------------------------------------------------------------------- what the coordinator publishes
def test_another_vote_layout_is_refused_naming_the_local_then_the_run_s_fingerprint(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site()
    reply = _reply(config)
    local = reply.run.vote_layout_fingerprint.hex()
    reply.run.vote_layout_fingerprint = b"\x00" * 32
    participant, _ = _participant(config, reply)
    with pytest.raises(RunRefusedError) as refused:  # exit 1, as every refused run
        participant.join()
    assert str(refused.value).startswith(
        f"model.directory's vote layout fingerprint {local} differs from the run's {'00' * 32}"
    )


@pytest.mark.parametrize("extra", [b"", b"\x00"], ids=["exact", "trailing-byte"])
def test_a_global_mask_with_trailing_bytes_is_refused(
    site: Callable[..., ParticipantConfig], extra: bytes
) -> None:
    config = site()
    reply = _reply(config)
    participant, client = _participant(config, reply)
    participant.params = reply.run
    layout = VoteLayout.for_block(participant.model, 0)
    packed = b"\x00" * (-(-layout.dimension // 8)) + extra
    asked: list[int] = []

    def block_mask(request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]:
        asked.append(max_bytes)
        return [
            pb.BlockMaskChunk(
                block=0,
                packed=packed,
                bit_count=layout.dimension,
                layout_fingerprint=layout.fingerprint(),
                digest=hashlib.sha256(packed).digest(),
                last=True,
            )
        ]

    client.block_mask = block_mask
    if extra:
        with pytest.raises(PrivacyError, match=r"has \d+ bytes, expected \d+"):
            participant._mask(0)
    else:
        assert set(participant._mask(0)) == set(layout.names)
    assert asked == [-(-layout.dimension // 8)]  # the site bounds the stream by its own layout


# ---------------------------------------------------------------------- property: identities fixed for the run
_PARTICIPANTS: dict[int, Any] = {}
_NAMES = ("site-a", "site-b", "site-c")
_KEYS = [raw_public_key(Ed25519PrivateKey.generate()) for _ in range(4)]
_ROSTER = st.lists(
    st.tuples(st.sampled_from(_NAMES[1:]), st.integers(2, 5), st.integers(0, len(_KEYS) - 1)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rosters=st.lists(_ROSTER, min_size=1, max_size=4))
def test_no_accepted_rosters_give_a_name_two_identities_or_an_identity_two_names(
    site: Callable[..., ParticipantConfig], rosters: list[list[tuple[str, int, int]]]
) -> None:
    # One participant for all examples (its model loads once); each example starts a fresh history.
    participant = _PARTICIPANTS.get(id(site))
    if participant is None:
        participant = _PARTICIPANTS[id(site)] = _joined(site())
    participant.history = SessionHistory()
    own = pb.Member(
        participant_id=1, name="site-a", identity_public_key=raw_public_key(participant.identity_key)
    )
    seen: dict[str, tuple[int, bytes]] = {}
    for roster in rosters:
        members = [own] + [
            pb.Member(participant_id=i, name=n, identity_public_key=_KEYS[k]) for n, i, k in roster
        ]
        try:
            _check(participant, members)
        except ContradictoryViewError:
            continue
        for member in members[1:]:
            seen.setdefault(member.name, (member.participant_id, bytes(member.identity_public_key)))
            assert seen[member.name] == (member.participant_id, bytes(member.identity_public_key))
        ids = [pid for pid, _ in seen.values()]
        keys = [key for _, key in seen.values()]
        assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys)
