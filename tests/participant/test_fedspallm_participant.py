"""A FedSpaLLM participant: declares its budget, refuses sessions past it or with another encoding; restarts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.config import parse_config as parse_coordinator_config
from coordinator.run import CoordinatorRun
from participant.client import WireClient
from participant.config import parse_config as parse_participant_config
from participant.privacy import encode_votes_and_updates
from participant.run import ParticipantRun, RunRefusedError
from participant.voting import sparsegpt_local_results
from privacy.errors import PrivacyError
from privacy.secagg import ContradictoryViewError, SessionContext, SessionParameters, ring_bit_width
from privacy.secagg.fixed_point import COUNT_SHIFT, VoteValueCodec
from privacy.secagg.parameters import WIDE_MAX_BIT_WIDTH
from proto.convert import run_parameters_to_proto, session_chunk_coordinates
from proto.domain import SessionTerms
from proto.fedprune.v1 import service_pb2 as pb
from pruning.adapters import iter_prunable, qualified_name
from pruning.layout import VoteLayout
from pruning.masks import SparsityPattern
from pruning.model_io import load_model
from pruning.recipes import Recipe
from tests.tiny import random_ids


class _JoinOnly:
    """A coordinator that only answers Join (with the real coordinator's run parameters)."""

    def __init__(self, reply: pb.JoinReply) -> None:
        self.reply = reply
        self.requests: list[pb.JoinRequest] = []

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        self.requests.append(request)
        return self.reply


@pytest.fixture
def setup(tmp_path: Path, model_dir) -> dict[str, Any]:
    model = model_dir("llama", layers=2)
    unused = {key: str(tmp_path / f"unused.{key}") for key in ("ca", "certificate", "private_key")}
    coordinator = CoordinatorRun(
        parse_coordinator_config(
            {
                "server": {"address": "127.0.0.1:1"},
                "tls": unused,
                "run": {
                    "model": str(model),
                    "participants": ["a", "b", "c"],
                    "method": "sparsegpt",
                    "recipe": "fedspallm",
                    "sparsity": 0.5,
                    "seqlen": 16,
                    "threshold": 2,
                },
                "privacy": {"randomized_response": False, "record_level_dp": False},
                "output": {
                    "directory": str(tmp_path / "out"),
                    "state": str(tmp_path / "coordinator"),
                    "signing_key": str(tmp_path / "report.key"),
                },
            }
        )
    )
    reply = pb.JoinReply(
        run=run_parameters_to_proto(coordinator.run_parameters()), participant_id=1, name="a"
    )
    coordinator.close()
    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"text": "unused here"}) + "\n", encoding="utf-8")

    def participant(max_blocks: int | None) -> tuple[ParticipantRun, _JoinOnly]:
        config = parse_participant_config(
            {
                "coordinator": {"address": "127.0.0.1:1"},
                "tls": unused,
                "model": {"directory": str(model)},
                "data": {"calibration": str(data)},
                "runtime": {"device": "cpu", "state": str(tmp_path / "site-a"), "max_blocks": max_blocks},
                "privacy": {"require_record_level_dp": False},  # the run above keeps exact statistics
            }
        )
        client = _JoinOnly(reply)
        return ParticipantRun(config, WireClient(client), samples=random_ids(4, 16, seed=3)), client  # type: ignore[arg-type]

    return {"participant": participant, "reply": reply}


def test_the_budget_is_declared_and_a_session_past_it_or_with_another_encoding_is_refused(
    setup: dict[str, Any],
) -> None:
    site, client = setup["participant"](1)
    reply = site.join()
    assert client.requests[0].capabilities.max_blocks == 1
    assert reply.run.recipe is Recipe.FEDSPALLM
    site._prepare(reply)
    codec = VoteValueCodec(participants=3)
    run = reply.run
    assert run.max_input == codec.max_input

    def session(max_input: int) -> SessionParameters:
        return SessionParameters(
            participant_ids=(1, 2, 3),
            threshold=run.threshold,
            colluders=run.colluders,
            dimension=VoteLayout.for_block(site.model, 0).dimension,
            context=SessionContext.fresh(run_id=run.run_id.hex(), round=0, block=0).encode(),
            chunk_coordinates=session_chunk_coordinates(
                ring_bit_width(3, max_input), limit=run.chunk_coordinates
            ),
            max_input=max_input,
            max_bit_width=WIDE_MAX_BIT_WIDTH,
        )

    with pytest.raises(ContradictoryViewError, match="session-encoding"):
        site._check_session_frame(0, SessionTerms.of(session(codec.max_input + 2)))
    site._check_session_frame(0, SessionTerms.of(session(codec.max_input)))
    site._check_assignment(0)
    vector = site._vector(0)
    layout = VoteLayout.for_block(site.model, 0)
    assert vector.dtype == np.uint64 and vector.size == layout.dimension
    votes = vector >> np.uint64(COUNT_SHIFT)
    assert set(np.unique(votes).tolist()) <= {0, 1}
    # Half of each matrix is kept (50%, row-wise SparseGPT), and a prune vote sends nothing at all.
    assert int(votes.sum()) == layout.dimension // 2
    assert not vector[votes == 0].any()
    site._check_assignment(0)  # the same block again (a retried session) is fine
    with pytest.raises(PrivacyError, match="over runtime.max_blocks = 1"):
        site._check_assignment(1)


def test_the_lazy_pruner_matches_whole_model_sparsegpt(setup: dict[str, Any]) -> None:
    site, _ = setup["participant"](None)
    site._prepare(site.join())
    lazy = {**site.recipe.pruner.prune(0), **site.recipe.pruner.prune(1)}
    reference: dict[str, Any] = {}
    sparsegpt_local_results(
        load_model(site.config.model.directory),  # the base model: the site pruned its own in place
        random_ids(4, 16, seed=3),
        pattern=SparsityPattern(sparsity=0.5),
        device=torch.device("cpu"),
        on_decision=reference.__setitem__,
    )
    assert lazy.keys() == reference.keys()
    for name, decision in reference.items():
        assert torch.equal(lazy[name].pruned, decision.pruned.cpu()), name
        assert torch.equal(lazy[name].weight, decision.weight.cpu()), name
    with pytest.raises(ValueError, match="already pruned"):
        site.recipe.pruner.prune(0)


def test_a_later_blocks_vector_frees_the_earlier_ones_which_are_never_sent_again(
    setup: dict[str, Any],
) -> None:
    site, _ = setup["participant"](None)
    site._prepare(site.join())
    first = site._vector(0)
    assert site._vector(0) is first  # a retried session of the same block sends the same vector
    site._vector(1)
    assert list(site._vectors) == [1]
    with pytest.raises(ValueError, match="already pruned"):
        site._vector(0)  # an earlier block asked for again is refused, never recomputed


def test_a_fedprllm_run_over_the_sites_block_budget_is_refused(setup: dict[str, Any]) -> None:
    site, client = setup["participant"](1)
    client.reply.run.recipe = pb.RECIPE_FEDPRLLM
    client.reply.run.method = pb.METHOD_WANDA
    with pytest.raises(RunRefusedError, match="prunes all 2 decoder blocks.*max_blocks = 1"):
        site.join()


def test_a_site_restarted_after_sending_masked_votes_stays_out_of_the_run(setup: dict[str, Any]) -> None:
    site, _ = setup["participant"](None)
    site._prepare(site.join())
    site._mark_released()
    restarted, _ = setup["participant"](None)
    with pytest.raises(RunRefusedError, match="already sent masked votes"):
        restarted.join()


def test_weight_updates_are_taken_against_the_base_weights_though_the_site_prunes_its_model_in_place(
    setup: dict[str, Any],
) -> None:
    site, _ = setup["participant"](None)
    site._prepare(site.join())
    base_model = load_model(site.config.model.directory)
    for block in (0, 1):
        vector = site._vector(block)
        decisions: dict[str, Any] = {}
        sparsegpt_local_results(
            load_model(site.config.model.directory),
            random_ids(4, 16, seed=3),
            pattern=SparsityPattern(sparsity=0.5),
            device=torch.device("cpu"),
            on_decision=decisions.__setitem__,
        )
        layout = VoteLayout.for_block(base_model, block)
        ours = {name: decisions[name] for name in layout.names}
        keep = layout.flatten({name: d.keep_votes for name, d in ours.items()}, dtype=torch.bool).numpy()
        base = {qualified_name(i, n): sub.weight() for i, n, sub in iter_prunable(base_model) if i == block}
        expected, _ = encode_votes_and_updates(VoteValueCodec(participants=3), layout, keep, ours, base)
        assert np.array_equal(vector, expected)
        pruned = {qualified_name(i, n): sub.weight() for i, n, sub in iter_prunable(site.model) if i == block}
        assert all(torch.equal(pruned[name], ours[name].weight) for name in layout.names)  # no second copy
