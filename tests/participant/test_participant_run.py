"""participant.run without a network: what a site accepts at join, what it spends, whose keys it trusts.

A fake client stands in for the coordinator, so each test reads as the exchange a site's operator would see:
the run's announced parameters, the participant's answer (refusal message, budget ledger, roster check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from participant.client import WireClient
from participant.config import ParticipantConfig, parse_config
from participant.privacy import RunPrivacy, plan_privacy
from participant.run import ParticipantRun, PeerKeyError, RunRefusedError, run_plan, run_privacy
from participant.voting import PackedBits, one_shot_votes
from privacy.accounting import GaussianRelease, gaussian_epsilon
from privacy.budget import LifetimeBudget
from privacy.errors import PrivacyError
from privacy.secagg import ContradictoryViewError, SessionHistory
from privacy.signing import key_fingerprint, raw_public_key
from proto import convert
from proto.domain import Member
from proto.fedprune.v1 import secagg_pb2 as secagg_pb
from proto.fedprune.v1 import service_pb2 as pb
from pruning.layout import VoteLayout, base_model_fingerprint
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.model_io import load_model
from tests.tiny import random_text

BLOCKS = 2
DOCUMENTS = 3


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
    data.write_text(
        "".join(f'{{"text": "{random_text(24, seed=d)}"}}\n' for d in range(DOCUMENTS)), encoding="utf-8"
    )

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
        group=pb.COMPARISON_GROUP_LAYER,
        mode=pb.MODE_ONE_SHOT,
        recipe=pb.RECIPE_FEDPRLLM,
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


def _run(reply: pb.JoinReply) -> Any:
    """Return the run parameters of a hand-built Join reply as the participant reads them."""
    return convert.run_parameters_from_proto(reply.run)


def _participant(config: ParticipantConfig, reply: pb.JoinReply, tasks: list[pb.Task] | None = None) -> Any:
    client = FakeCoordinator(reply, tasks)
    return ParticipantRun(config, WireClient(cast(Any, client))), client


# ---------------------------------------------------------------------- record-level epsilon of a sigma
def test_a_run_that_states_a_noise_multiplier_reports_the_epsilon_the_accountants_give(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site()
    reply = _reply(config, target_epsilon=None, noise_multiplier=1.0)
    reply.run.privacy.ClearField("target_epsilon")
    expected = gaussian_epsilon([GaussianRelease(noise_multiplier=1.0, count=BLOCKS)], delta=1e-5).epsilon
    plan = run_plan(_run(reply), blocks=BLOCKS)
    assert (plan.epsilon, plan.delta, plan.releases) == (pytest.approx(expected), 1e-5, BLOCKS)

    loose = site(privacy={"max_target_epsilon": expected * 1.01})
    participant, _ = _participant(loose, reply)
    participant.join()  # within the minimum: accepted (it used to be refused for stating no epsilon)

    strict = site(privacy={"max_target_epsilon": expected * 0.99})
    participant, _ = _participant(strict, reply)
    with pytest.raises(
        RunRefusedError,
        match=rf"\[privacy\] max_target_epsilon = {expected * 0.99:g}: the run's record-level epsilon on this "
        rf"site's data is {expected:g}",
    ):
        participant.join()


def test_the_accountant_tolerance_comes_from_the_run_and_defaults_when_absent() -> None:
    stated = pb.PrivacyParameters(record_level_dp=True, noise_multiplier=1.0, delta=1e-5, sample_rate=0.1)
    assert run_privacy(convert.privacy_parameters_from_proto(stated)).accountant_tolerance == 0.10
    stated.accountant_tolerance = 0.3
    assert run_privacy(convert.privacy_parameters_from_proto(stated)).accountant_tolerance == 0.3
    # At q = 0.1 RDP is 10-16% looser than PRV: the run's recorded tolerance is what lets it be accounted.
    settings = run_privacy(convert.privacy_parameters_from_proto(stated))
    assert plan_privacy(settings, reads_data=True, blocks=8).epsilon is not None


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
    plan = plan_privacy(settings, reads_data=True, blocks=4)
    assert plan.epsilon is None and plan.releases == 4


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
    spend = run_plan(_run(first), blocks=BLOCKS).epsilon  # the site's own figure for target 6: at most 6
    assert spend is not None and 5.9 < spend <= 6.0
    assert seen == [spend]

    # The same run again (a restarted participant resuming it): accepted, not charged twice.
    again, _ = _participant(config, first)
    again.join()
    again._commit_budget()
    assert _budget(config).spent().runs == 1

    # Another run of 6 would make 12 > 10: refused at join, with the figures, before any data is read.
    second, client = _participant(config, _reply(config, run_id=b"\x02" * 16, target_epsilon=6.0))
    with pytest.raises(
        RunRefusedError, match=rf"lifetime_epsilon of dataset 'notes-2024' is 10.*needs {spend:g}"
    ):
        second.run()
    assert client.calls == ["Join"]
    assert _budget(config).spent().epsilon == spend


def test_a_second_participant_on_a_state_directory_in_use_is_refused_before_it_joins(
    site: Callable[..., ParticipantConfig],
) -> None:
    from privacy.durable import DirectoryInUseError, DirectoryLock

    config = site()
    config.runtime.state.mkdir(parents=True, exist_ok=True)
    held = DirectoryLock(config.runtime.state, what="runtime.state")  # the first daemon's lock
    participant, client = _participant(config, _reply(config), [pb.Task(run_complete=pb.RunComplete())])
    with pytest.raises(DirectoryInUseError, match="runtime.state .* is in use by another process"):
        participant.run()
    assert client.calls == []
    held.release()
    participant.run()  # once the first is gone, the run goes on and releases the directory at its end
    assert client.calls[0] == "Join"
    DirectoryLock(config.runtime.state, what="runtime.state").release()


@pytest.mark.parametrize(
    ("field", "value", "needs"),
    [("mode", pb.MODE_ITERATIVE, "mode one-shot"), ("weight_scaling", True, "no weight scaling")],
)
def test_a_recipe_announced_with_settings_it_does_not_allow_is_refused_before_anything_is_charged(
    site: Callable[..., ParticipantConfig], field: str, value: Any, needs: str
) -> None:
    from privacy.secagg.fixed_point import VoteValueCodec

    # FedSpaLLM averages SparseGPT's weights once per block; announced otherwise, the run is refused at
    # join, before the lifetime budget is charged for a run this site never takes part in.
    config = site(privacy={"lifetime_epsilon": 10.0}, data={"dataset": "notes"})
    reply = _reply(config, method=pb.METHOD_SPARSEGPT)
    reply.run.method = pb.METHOD_SPARSEGPT
    reply.run.recipe = pb.RECIPE_FEDSPALLM
    reply.run.max_input = VoteValueCodec(participants=3).max_input
    setattr(reply.run, field, value)
    participant, client = _participant(config, reply)
    with pytest.raises(RunRefusedError, match=f"recipe is fedspallm, which needs {needs}"):
        participant.run()
    assert client.calls == ["Join"] and participant.plan is None
    assert _budget(config).spent().runs == 0


def test_a_lifetime_budget_refuses_exact_statistics_but_not_magnitude_pruning(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site(privacy={"lifetime_epsilon": 10.0, "require_record_level_dp": False})
    exact = _reply(config, record_level_dp=False, target_epsilon=None)
    exact.run.privacy.ClearField("target_epsilon")
    participant, _ = _participant(config, exact)
    with pytest.raises(RunRefusedError, match="no record-level DP .* unbounded epsilon"):
        participant.join()

    magnitude = _reply(config, run_id=b"\x03" * 16, record_level_dp=False, target_epsilon=None)
    magnitude.run.privacy.ClearField("target_epsilon")
    magnitude.run.method = pb.METHOD_MAGNITUDE
    plan = run_plan(_run(magnitude), blocks=BLOCKS)
    assert (plan.epsilon, plan.delta, plan.releases) == (0.0, 0.0, 0)  # magnitude pruning reads no data
    participant, _ = _participant(config, magnitude)
    participant.join()
    participant._commit_budget()
    assert _budget(config).spent().epsilon == 0.0


# ---------------------------------------------------------------------- the site's own privacy bill
@pytest.fixture
def four_blocks(site: Callable[..., ParticipantConfig], model_dir: Callable[..., Path]) -> ParticipantConfig:
    """Return a site config (no [privacy] section) whose local model has four decoder blocks."""
    return site(model={"directory": str(model_dir("llama", layers=4, name="four-blocks"))})


@pytest.mark.parametrize("announced", [1, 3, 5])
def test_a_run_that_miscounts_the_models_decoder_blocks_is_refused_at_join(
    four_blocks: ParticipantConfig, announced: int
) -> None:
    # Announcing 1 block for a 4-block model would plan the noise for one release and charge one, while
    # the site releases one statistic per block it has: 4 releases, epsilon 18.8 for a charge of 8.
    reply = _reply(four_blocks, target_epsilon=8.0)
    reply.run.blocks = announced
    participant, client = _participant(four_blocks, reply)
    with pytest.raises(RunRefusedError, match=rf"announces {announced} decoder blocks, but .* has 4"):
        participant.join()
    assert participant.plan is None and client.calls == ["Join"]
    reply.run.blocks = 4
    participant, _ = _participant(four_blocks, reply)
    participant.join()
    assert (participant.plan.blocks, participant.plan.releases) == (4, 4) and participant.plan.epsilon <= 8.0


def test_the_statistics_aggregator_refuses_a_release_past_the_planned_count(
    site: Callable[..., ParticipantConfig],
) -> None:
    import dataclasses

    import torch

    from participant.privacy import ParticipantPrivacy
    from participant.voting import one_shot_votes
    from privacy.errors import PrivacyError
    from pruning.masks import SparsityPattern
    from tests.tiny import random_ids

    config = site()
    reply = _reply(config)
    plan = run_plan(_run(reply), blocks=BLOCKS)
    # Even a plan that somehow counted fewer releases than the model has blocks stops the extra release.
    short = dataclasses.replace(plan, releases=1)
    privacy = ParticipantPrivacy(
        name="site-a", run_id="r", settings=run_privacy(_run(reply).privacy), blocks=BLOCKS, plan=short
    )
    aggregator = privacy.statistic_aggregator()
    assert aggregator is not None and aggregator.noise_multiplier == plan.noise_multiplier
    from pruning.data import CalibrationSet

    windows = tuple(random_ids(4, 8, seed=1))
    samples = CalibrationSet(windows=windows, record_of_window=(0, 1, 2, 3), documents=4)
    with pytest.raises(PrivacyError, match="would be release 2 of this data, but only 1 were planned"):
        one_shot_votes(
            load_model(config.model.directory),
            samples,
            method=_method_wanda(),
            pattern=SparsityPattern(sparsity=0.5),
            device=torch.device("cpu"),
            aggregator=aggregator,
            on_votes=lambda name, votes: None,
        )
    assert len(aggregator.releases) == 1


def _method_wanda() -> Any:
    from pruning.methods import Method

    return Method.WANDA


def test_delta_is_bounded_by_the_site_and_by_its_document_count(
    site: Callable[..., ParticipantConfig],
) -> None:
    participant, _ = _participant(site(), _reply(site(), delta=0.5))
    with pytest.raises(
        RunRefusedError, match=r"\[privacy\] max_delta = 1e-05 \(the default\): the run's delta 0.5 is larger"
    ):
        participant.join()
    # A site that allows a large delta still never takes one above 1 / its document count.
    loose = site(privacy={"max_delta": 0.9})
    participant, _ = _participant(loose, _reply(loose, delta=0.5))
    with pytest.raises(
        RunRefusedError,
        match=rf"holds {DOCUMENTS} documents: the run's delta 0.5 is larger than 1/{DOCUMENTS}",
    ):
        participant.join()
    participant, _ = _participant(loose, _reply(loose, delta=0.2, accountant_tolerance=0.9))
    participant.join()
    assert participant.plan.documents == DOCUMENTS and participant.plan.delta == 0.2


def test_three_runs_cannot_leave_a_ledger_whose_deltas_sum_past_one(
    site: Callable[..., ParticipantConfig], tmp_path: Path
) -> None:
    one_document = tmp_path / "one.jsonl"
    one_document.write_text(f'{{"text": "{random_text(24)}"}}\n', encoding="utf-8")
    config = site(
        data={"calibration": str(one_document)},
        privacy={"max_delta": 0.6, "lifetime_epsilon": 1000.0},
    )
    charged = []
    for run in range(3):
        participant, _ = _participant(
            config, _reply(config, run_id=bytes([run + 1]) * 16, delta=0.5, accountant_tolerance=0.9)
        )
        try:
            participant.join()
            participant._commit_budget()
            charged.append(run)
        except RunRefusedError as error:
            assert "a summed delta of 1 or more bounds nothing" in str(error)
    assert charged == [0]
    assert _budget(config).spent().delta == 0.5


def test_the_summed_delta_is_held_to_one_over_the_document_count(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site(privacy={"max_delta": 0.3, "lifetime_epsilon": 1000.0})
    first = _reply(config, run_id=b"\x01" * 16, delta=0.3, accountant_tolerance=0.9)
    participant, _ = _participant(config, first)
    participant.join()
    participant._commit_budget()
    # Each run alone is within 1/3 for the site's 3 documents; two together are not.
    second, _ = _participant(config, _reply(config, run_id=b"\x02" * 16, delta=0.3, accountant_tolerance=0.9))
    with pytest.raises(
        RunRefusedError,
        match=rf"holds {DOCUMENTS} records: 1 runs have spent delta 0.3, .* above 1/{DOCUMENTS}",
    ):
        second.join()
    assert _budget(config).spent().delta == 0.3


def test_a_site_without_a_privacy_section_refuses_weak_runs_naming_the_default(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site()
    assert "privacy" not in config.model_fields_set
    exact = _reply(config, record_level_dp=False, target_epsilon=None)
    exact.run.privacy.ClearField("target_epsilon")
    participant, _ = _participant(config, exact)
    with pytest.raises(
        RunRefusedError, match=r"\[privacy\] require_record_level_dp = true \(the default\): the run has no"
    ):
        participant.join()

    noisy = _reply(config, target_epsilon=None, noise_multiplier=0.05)
    noisy.run.privacy.ClearField("target_epsilon")
    participant, _ = _participant(config, noisy)
    with pytest.raises(
        RunRefusedError,
        match=r"\[privacy\] max_target_epsilon = 8 \(the default\): the run's record-level epsilon on this "
        r"site's data is \d{3,}",
    ):
        participant.join()

    # The coordinator's default run (target 8 at delta 1e-5) is what the defaults accept.
    participant, _ = _participant(config, _reply(config, target_epsilon=8.0))
    participant.join()
    assert participant.plan.epsilon <= 8.0 and participant.plan.releases == BLOCKS


def test_a_noise_multiplier_whose_epsilon_cannot_be_computed_fails_the_default_bound_by_name(
    four_blocks: ParticipantConfig,
) -> None:
    # Over 4 blocks sigma 0.05 sends PRV to infinity (RDP gives 991): no finite figure to compare.
    noisy = _reply(four_blocks, target_epsilon=None, noise_multiplier=0.05)
    noisy.run.privacy.ClearField("target_epsilon")
    noisy.run.blocks = 4
    participant, _ = _participant(four_blocks, noisy)
    with pytest.raises(
        RunRefusedError,
        match=r"\[privacy\] max_target_epsilon = 8 \(the default\): the run's record-level epsilon on this "
        r"site's data cannot be computed",
    ):
        participant.join()


def test_two_state_directories_over_one_budget_file_are_each_charged_for_their_release(
    site: Callable[..., ParticipantConfig], tmp_path: Path
) -> None:
    shared = tmp_path / "shared" / "budget.json"
    configs = [
        site(
            privacy={"lifetime_epsilon": 10.0},
            data={"dataset": "notes"},
            runtime={"state": str(tmp_path / name), "budget": str(shared)},
        )
        for name in ("state-a", "state-b", "state-c")
    ]
    reply = _reply(configs[0], target_epsilon=4.0)  # one run id for all three
    spend = run_plan(_run(reply), blocks=BLOCKS).epsilon
    for config in configs[:2]:
        participant, _ = _participant(config, reply)
        participant.join()
        participant._commit_budget()
    assert _budget(configs[0]).spent().runs == 2
    assert _budget(configs[0]).spent().epsilon == pytest.approx(2 * spend)
    # A restart of the first state directory resumes its own release: not charged again.
    again, _ = _participant(configs[0], reply)
    again.join()
    again._commit_budget()
    assert _budget(configs[0]).spent().runs == 2
    # A third release under the same run id would pass 10: refused, though the run id was charged.
    third, _ = _participant(configs[2], reply)
    with pytest.raises(RunRefusedError, match="lifetime_epsilon of dataset 'notes' is 10"):
        third.join()


class _StatementCatcher(FakeCoordinator):
    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        self.calls.append("SubmitStatement")
        self.statement = request.statement


def test_the_signed_statement_states_no_size_of_the_data(
    site: Callable[..., ParticipantConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    config = site()
    reply = _reply(config)
    client = _StatementCatcher(reply)
    participant = ParticipantRun(config, WireClient(cast(Any, client)))
    participant._prepare(participant.join())
    monkeypatch.setattr(participant, "_packed_mask", lambda block: None)  # the masks are not the point here
    participant._statement()()
    statement = json.loads(client.statement.statement)
    assert statement["data_size_class"] is None
    assert str(DOCUMENTS) not in json.dumps([e.get("count") for e in statement["events"]])
    assert {e["mechanism"] for e in statement["events"]} == {"gaussian"}


# ---------------------------------------------------------------------- pinned identity keys
def _members(config: ParticipantConfig, participant: Any, peers: dict[str, bytes]) -> list[Member]:
    own = Member(participant_id=1, name="site-a", identity_key=raw_public_key(participant.identity_key))
    return [own] + [
        Member(participant_id=i + 2, name=name, identity_key=key)
        for i, (name, key) in enumerate(peers.items())
    ]


def _joined(config: ParticipantConfig) -> Any:
    reply = _reply(config)
    participant, _ = _participant(config, reply)
    participant.participant_id, participant.name, participant.params = 1, "site-a", _run(reply)
    participant.history = SessionHistory()
    return participant


def _check(participant: Any, members: list[Member]) -> None:
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
    participant.participant_id, participant.name, participant.params = 1, "site-a", _run(_reply(config))
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
    members[0] = dataclasses.replace(members[0], identity_key=raw_public_key(Ed25519PrivateKey.generate()))
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


def test_statements_with_and_without_the_old_size_class_both_verify() -> None:
    from participant.privacy import ParticipantPrivacy
    from privacy.signing import ParticipantStatement, sign_participant_statement, verify_statement_signature

    key = Ed25519PrivateKey.generate()
    settings = RunPrivacy(
        randomized_response=True,
        epsilon0=1.0,
        record_level_dp=False,
        noise_multiplier=None,
        target_epsilon=None,
        delta=1e-5,
        sample_rate=1.0,
    )
    privacy = ParticipantPrivacy(name="site-a", run_id="r", settings=settings, blocks=1)
    privacy.randomize_block(0, np.ones(8, dtype=bool))
    new = privacy.statement(key)
    # A statement of an earlier version carried a coarse class; it is still a valid statement.
    old = sign_participant_statement(
        participant="site-a", run_id="r", events=privacy.events(), private_key=key, data_size_class="small"
    )
    for statement in (new, old):
        verify_statement_signature(ParticipantStatement.model_validate_json(statement.model_dump_json()))
    assert new.data_size_class is None and old.data_size_class == "small"


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


def test_a_run_whose_parameters_cannot_be_read_whole_is_refused_at_join(
    site: Callable[..., ParticipantConfig],
) -> None:
    # An enum naming no value could only be read as a guess (an unspecified mode used to run iterative);
    # the site binds itself to the run it read, so it refuses one it cannot read whole.
    config = site()
    reply = _reply(config)
    reply.run.mode = pb.MODE_UNSPECIFIED
    participant, client = _participant(config, reply)
    with pytest.raises(RunRefusedError, match=r"RunParameters\.mode must be one of"):
        participant.join()
    assert participant.plan is None and client.calls == ["Join"]


@pytest.mark.parametrize("extra", [b"", b"\x00"], ids=["exact", "trailing-byte"])
def test_a_global_mask_with_trailing_bytes_is_refused(
    site: Callable[..., ParticipantConfig], extra: bytes
) -> None:
    config = site()
    reply = _reply(config)
    participant, client = _participant(config, reply)
    participant.params = _run(reply)
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
    own = Member(participant_id=1, name="site-a", identity_key=raw_public_key(participant.identity_key))
    seen: dict[str, tuple[int, bytes]] = {}
    for roster in rosters:
        members = [own] + [Member(participant_id=i, name=n, identity_key=_KEYS[k]) for n, i, k in roster]
        try:
            _check(participant, members)
        except ContradictoryViewError:
            continue
        for member in members[1:]:
            seen.setdefault(member.name, (member.participant_id, member.identity_key))
            assert seen[member.name] == (member.participant_id, member.identity_key)
        ids = [pid for pid, _ in seen.values()]
        keys = [key for _, key in seen.values()]
        assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys)


# ---------------------------------------------------------------------- votes and masks held bit-packed
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 13, 1001, 4099])
def test_packed_bits_round_trip_exactly_for_any_length(count: int) -> None:
    bits = np.frombuffer(secrets.token_bytes(count), dtype=np.uint8) & 1 == 1
    packed = PackedBits.of(bits)
    assert packed.packed.nbytes == -(-count // 8)  # an eighth of a byte a bit
    unpacked = packed.unpack()
    assert unpacked.dtype == np.bool_ and np.array_equal(unpacked, bits)
    # Pad bits of the last byte (as a coordinator may send them) never become coordinates.
    padded = packed.packed.copy()
    if count % 8:
        padded[-1] |= np.uint8(0xFF << (count % 8) & 0xFF)
    assert np.array_equal(PackedBits(padded, count).unpack(), bits)
    with pytest.raises(ValueError, match="uint8 bytes"):
        PackedBits(np.zeros(-(-count // 8) + 1, dtype=np.uint8), count)


def test_one_shot_keep_votes_are_stored_packed_and_unpack_to_the_local_votes(
    site: Callable[..., ParticipantConfig],
) -> None:
    config = site(privacy={"require_record_level_dp": False})
    reply = _reply(config, record_level_dp=False, target_epsilon=None)
    reply.run.privacy.ClearField("target_epsilon")
    reply.run.method = pb.METHOD_MAGNITUDE  # deterministic: no data, no noise
    participant, _ = _participant(config, reply)
    joined = participant.join()
    participant._commit_budget()
    participant._prepare(joined)

    model = load_model(config.model.directory)
    votes: dict[str, Any] = {}
    one_shot_votes(
        model,
        None,
        method=Method.MAGNITUDE,
        pattern=SparsityPattern(sparsity=0.5),
        device=torch.device("cpu"),
        on_votes=votes.__setitem__,
    )
    for block in range(BLOCKS):
        layout = VoteLayout.for_block(participant.model, block)
        assert block not in participant._vectors  # scored only when a session asks for the block
        vector = participant._vector(block)
        stored = participant._vectors[block]
        assert isinstance(stored, PackedBits) and stored.packed.nbytes == -(-layout.dimension // 8)
        expected = layout.flatten({n: votes[n] for n in layout.names}, dtype=torch.bool).numpy()
        assert vector.dtype == np.bool_ and np.array_equal(vector, expected)
        assert participant._vector(block) is vector  # a repeated session sends the very same vector
    # The model was pruned in place: a second run from this instance would start from pruned weights.
    with pytest.raises(RuntimeError, match="already pruned its model in place"):
        participant._prepare(joined)
