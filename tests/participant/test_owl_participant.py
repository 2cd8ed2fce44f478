"""A site in an OWL run: it takes an allocation session only while its model is dense, checks the allocation
against its own model before it prunes at it, and refuses a run whose allocation privacy could not cover.

The coordinator is the scripted hostile one (``tests.participant.hostile``); the site is a real
``ParticipantRun``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from participant.admission import owl_settings
from participant.client import WireClient
from participant.config import parse_config
from participant.errors import RunRefusedError
from participant.run import CoordinatorLiedError, ParticipantRun
from privacy.secagg import published_view
from proto import convert
from proto.domain import OWL_ALLOCATION_ROUND, OwlTerms
from proto.fedprune.v1 import service_pb2 as pb
from pruning.adapters import iter_prunable
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.model_io import load_model
from pruning.owl import block_weight_counts
from pruning.recipes import Recipe
from tests.participant.hostile import HostileCoordinator, Session, members
from tests.participant.test_recipes import RUN

FIVE = ("site-a", "site-b", "site-c", "site-d", "site-e")
OWL = pb.OwlParameters(outlier_multiple=5.0, **{"lambda": 0.08})


@pytest.fixture
def owl_site(
    tmp_path: Path, model_dir: Callable[..., Path]
) -> Callable[..., tuple[ParticipantRun, HostileCoordinator]]:
    """Return a factory: (a real site without privacy minimums, a hostile coordinator announcing OWL)."""
    model_path = model_dir("llama", layers=2)
    model = load_model(model_path)
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(f'{{"text": "{" ".join(f"w{(i * 7 + j) % 50}" for j in range(80))}"}}\n' for i in range(8)),
        encoding="utf-8",
    )

    def make(sessions: list[Session], *, owl: bool = True) -> tuple[ParticipantRun, HostileCoordinator]:
        config = parse_config(
            {
                "coordinator": {"address": "127.0.0.1:1"},
                "tls": {"ca": "ca.pem", "certificate": "a.pem", "private_key": "a.key"},
                "model": {"directory": str(model_path)},
                "data": {"calibration": str(data)},
                "runtime": {"device": "cpu", "state": str(tmp_path / "state"), "progress": False},
                "privacy": {"require_record_level_dp": False},
            },
            base_dir=tmp_path,
        )
        coordinator = HostileCoordinator(model, names=FIVE, threshold=4, sessions=sessions)
        if owl:
            coordinator.run.method = pb.METHOD_WANDA
            coordinator.run.owl.CopyFrom(OWL)
        return ParticipantRun(config, WireClient(coordinator)), coordinator

    return make


def _honest(model: Any, target: float = 0.5) -> list[float]:
    counts = block_weight_counts(model)
    # Block 0 pruned less, block 1 more, the weighted mean exactly the target.
    low = target - 0.05
    high = target + 0.05 * counts[0] / counts[1]
    return [low, high]


BLOCKS = [Session(block=0, members=members(*FIVE)), Session(block=1, members=members(*FIVE))]


def test_the_site_prunes_at_the_checked_allocation_and_keeps_it(owl_site: Any) -> None:
    participant, coordinator = owl_site(BLOCKS)
    coordinator.allocation = _honest(participant.model)
    participant.run()
    assert coordinator.sent("Unmask") == [0, 1]
    assert coordinator.sent("OwlAllocation") == [0]  # fetched once, before block 0 is scored
    assert participant.records.owl_allocation(participant.run_id) == tuple(coordinator.allocation)
    # One-shot: the site pruned its own copy with its own masks, each row of block b at s_b.
    for block, name, sublayer in iter_prunable(participant.model):
        pruned_per_row = (sublayer.weight() == 0).sum(dim=1)
        expected = int(sublayer.in_features * coordinator.allocation[block])
        assert bool((pruned_per_row == expected).all()), (block, name)


@pytest.mark.parametrize(
    "lie,why",
    [
        (lambda honest: honest[:1], "1 sparsities for a model of 2 blocks"),
        (lambda honest: [0.5 - 0.17, 0.5 + 0.17], "more than 2 \\* lambda"),
        (lambda honest: [honest[0], honest[1] + 0.01], "not the target"),
        (lambda honest: [1.2, -0.2], "outside \\(0, 1\\)"),
    ],
)
def test_a_lying_allocation_is_refused_before_anything_is_pruned_at_it(
    owl_site: Any, lie: Callable[[list[float]], list[float]], why: str
) -> None:
    participant, coordinator = owl_site(BLOCKS)
    coordinator.allocation = lie(_honest(participant.model))
    with pytest.raises(CoordinatorLiedError, match=why) as caught:
        participant.run()
    assert caught.value.check == "owl-allocation"
    assert coordinator.sent("AdvertiseKeys") == []  # nothing of block 0 left the site
    assert participant.records.owl_allocation(participant.run_id) is None


def test_a_session_binding_another_allocation_than_the_site_was_served_is_refused(owl_site: Any) -> None:
    # Each site checks the allocation it is served, but a coordinator could serve sites different valid
    # ones; the block's session binds the allocation, so this site refuses one bound to the others'.
    others = Session(
        block=0, members=members(*FIVE), published=published_view(allocation=[0.47, 0.53], blocks=[])
    )
    participant, coordinator = owl_site([others])
    coordinator.allocation = _honest(participant.model)
    assert coordinator.allocation != [0.47, 0.53]
    with pytest.raises(CoordinatorLiedError) as caught:
        participant.run()
    assert caught.value.check == "published-view"
    assert coordinator.sent("AdvertiseKeys") == []  # nothing of block 0 left the site


def test_an_allocation_session_after_pruning_began_is_refused(owl_site: Any) -> None:
    late = Session(block=1, members=members(*FIVE), context_round=OWL_ALLOCATION_ROUND)
    participant, coordinator = owl_site([BLOCKS[0], late])
    coordinator.allocation = _honest(participant.model)
    with pytest.raises(CoordinatorLiedError) as caught:
        participant.run()
    assert caught.value.check == "owl-allocation-session"
    assert coordinator.sent("AdvertiseKeys") == [0]


def test_an_allocation_session_in_a_run_without_owl_is_refused(owl_site: Any) -> None:
    stray = Session(block=0, members=members(*FIVE), context_round=OWL_ALLOCATION_ROUND)
    participant, coordinator = owl_site([stray], owl=False)
    with pytest.raises(CoordinatorLiedError) as caught:
        participant.run()
    assert caught.value.check == "owl-allocation-session"
    assert coordinator.sent("AdvertiseKeys") == []


def test_a_site_refuses_owl_with_randomized_response_and_exact_statistics() -> None:
    run = dataclasses.replace(
        RUN,
        method=Method.WANDA,
        pattern=SparsityPattern(sparsity=0.5),
        owl=OwlTerms(outlier_multiple=5.0, lam=0.08),
        privacy=dataclasses.replace(RUN.privacy, randomized_response=True, record_level_dp=False),
    )
    with pytest.raises(RunRefusedError, match="randomized response does not cover"):
        owl_settings(run)
    # Exact statistics without any claim of privacy, or DP statistics with randomized response, are fine.
    assert owl_settings(
        dataclasses.replace(run, privacy=dataclasses.replace(run.privacy, randomized_response=False))
    )
    assert owl_settings(
        dataclasses.replace(run, privacy=dataclasses.replace(run.privacy, record_level_dp=True))
    )
    for changes, problem in (
        ({"pattern": SparsityPattern(sparsity=0.5, n=2, m=4)}, "unstructured pattern"),
        ({"method": Method.MAGNITUDE}, "reads calibration data"),
        ({"recipe": Recipe.FEDSPALLM, "method": Method.SPARSEGPT}, "fedspallm has no OWL"),
        ({"owl": OwlTerms(outlier_multiple=5.0, lam=0.6)}, "lambda"),
    ):
        honest_privacy = dataclasses.replace(run.privacy, randomized_response=False)
        with pytest.raises(RunRefusedError, match=problem):
            owl_settings(dataclasses.replace(run, privacy=honest_privacy, **changes))


def test_a_site_refuses_a_lying_coordinator_that_announces_owl_with_rr_and_exact_statistics(
    owl_site: Any,
) -> None:
    participant, coordinator = owl_site(BLOCKS)
    coordinator.run.privacy.randomized_response = True
    coordinator.run.privacy.epsilon0 = 2.0
    with pytest.raises(RunRefusedError, match="randomized response does not cover"):
        participant.run()
    assert [call for call, _ in coordinator.calls] == ["Join"]
    assert convert.run_parameters_from_proto(coordinator.run).owl is not None


def test_a_site_plans_charges_and_caps_two_releases_per_block_under_owl() -> None:
    from participant.admission import run_plan

    private = dataclasses.replace(
        RUN.privacy, record_level_dp=True, target_epsilon=8.0, sample_rate=1.0, delta=1e-5
    )
    uniform = dataclasses.replace(RUN, privacy=private)
    owl = dataclasses.replace(uniform, owl=OwlTerms(outlier_multiple=5.0, lam=0.08))
    plain, doubled = run_plan(uniform, blocks=4, documents=100), run_plan(owl, blocks=4, documents=100)
    assert (plain.releases, doubled.releases) == (4, 8)
    assert doubled.noise_multiplier is not None and plain.noise_multiplier is not None
    assert doubled.noise_multiplier > plain.noise_multiplier  # the same epsilon over twice the releases
    assert doubled.epsilon is not None and doubled.epsilon <= 8.0 + 1e-9
    # Exact statistics: still no finite epsilon, and twice the releases said in the log.
    exact = run_plan(dataclasses.replace(owl, privacy=RUN.privacy), blocks=4)
    assert exact.epsilon is None and exact.releases == 8


def _allocation_session(model: Any, block: int) -> Session:
    from privacy.secagg import ring_bit_width
    from privacy.secagg.fixed_point import StatisticCodec
    from privacy.secagg.parameters import WIDE_MAX_BIT_WIDTH
    from proto.convert import session_chunk_coordinates
    from pruning.layout import VoteLayout
    from pruning.statistics import StatisticKind, block_statistics_dimension

    lanes = StatisticCodec().max_input
    return Session(
        block=block,
        members=members(*FIVE),
        context_round=OWL_ALLOCATION_ROUND,
        dimension=block_statistics_dimension(
            VoteLayout.for_block(model, block), StatisticKind.COLUMN_SQUARES, lanes=StatisticCodec().lanes
        ),
        max_input=lanes,
        chunk_coordinates=session_chunk_coordinates(ring_bit_width(len(FIVE), lanes), limit=1024),
        max_bit_width=WIDE_MAX_BIT_WIDTH,
    )


def test_allocation_sessions_send_the_dense_statistics_and_are_recorded_apart_from_the_blocks(
    owl_site: Any,
) -> None:
    participant, coordinator = owl_site([])
    model = participant.model
    allocation = [_allocation_session(model, 0), _allocation_session(model, 1)]
    # The coordinator runs block 0's allocation session twice (a retry with a fresh context): the site
    # sends the same vector again, never a second release.
    coordinator.script = [allocation[0], allocation[0], allocation[1], *BLOCKS]
    coordinator.allocation = _honest(model)
    participant.run()
    assert coordinator.sent("Unmask") == [0, 1, 2, 3, 4]
    assert coordinator.sent("OwlAllocation") == [3]  # after the allocation phase, before block 0
    history = participant.history
    for block in (0, 1):
        dense, own = history.released(block, allocation=True), history.released(block)
        assert dense is not None and own is not None and dense != own
    # What the allocation sums is statistics lanes (their width), not keep-votes.
    assert coordinator.sums[0].size == allocation[0].dimension > 0
    assert int(coordinator.sums[0].max()) > len(FIVE)  # a lane of a statistic, no 0/1 vote


def test_an_allocation_session_outside_the_statistics_frame_is_refused(owl_site: Any) -> None:
    participant, coordinator = owl_site([])
    narrow = dataclasses.replace(_allocation_session(participant.model, 0), max_input=1)
    coordinator.script = [narrow]
    with pytest.raises(CoordinatorLiedError) as caught:
        participant.run()
    assert caught.value.check == "session-encoding"
