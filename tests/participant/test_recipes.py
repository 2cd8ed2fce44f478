"""participant.recipes: one plug-in per recipe and mode, chosen in one place, with the frame of its sessions."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from participant.errors import RunRefusedError
from participant.privacy import ParticipantPrivacy, RunPrivacy
from participant.recipes import (
    FedPrLLMIterative,
    FedPrLLMOneShot,
    FedSpaLLM,
    Published,
    SiteInputs,
    plugin_for,
    recipe_max_input,
)
from participant.voting import one_shot_votes
from privacy.errors import PrivacyError
from privacy.secagg.fixed_point import VoteValueCodec
from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH
from proto import domain
from pruning.layout import VoteLayout
from pruning.masks import ComparisonGroup, SparsityPattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe
from tests.tiny import build_tiny_model, random_ids

RUN = domain.RunParameters(
    run_id=b"\x01" * 16,
    method=Method.WANDA,
    pattern=SparsityPattern(sparsity=0.5),
    group=ComparisonGroup.LAYER,
    mode=Mode.ONE_SHOT,
    recipe=Recipe.FEDPRLLM,
    nsamples=4,
    seqlen=8,
    privacy=domain.AnnouncedPrivacy(
        randomized_response=False, epsilon0=0.0, record_level_dp=False, delta=1e-5, sample_rate=1.0
    ),
    participants=3,
    min_participants=3,
    threshold=2,
    colluders=0,
    max_input=1,
    chunk_coordinates=1024,
    blocks=4,
    vote_layout_fingerprint=b"",
    base_model_fingerprint=b"",
    weight_scaling=False,
    protocol_version=2,
    participant_names=("a", "b", "c"),
)


@pytest.mark.parametrize(
    ("changes", "plugin"),
    [
        ({}, FedPrLLMOneShot),
        ({"mode": Mode.ITERATIVE}, FedPrLLMIterative),
        ({"mode": Mode.ITERATIVE, "weight_scaling": True, "method": Method.MAGNITUDE}, FedPrLLMIterative),
        ({"recipe": Recipe.FEDSPALLM, "method": Method.SPARSEGPT}, FedSpaLLM),
    ],
)
def test_each_recipe_and_mode_has_its_plugin(changes: dict[str, object], plugin: type) -> None:
    assert plugin_for(dataclasses.replace(RUN, **changes)) is plugin  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "needs"),
    [
        ({"method": Method.WANDA}, "method sparsegpt"),
        ({"mode": Mode.ITERATIVE}, "mode one-shot"),
        ({"weight_scaling": True}, "no weight scaling"),
    ],
)
def test_a_fedspallm_run_with_settings_it_does_not_allow_has_no_plugin(
    changes: dict[str, object], needs: str
) -> None:
    run = dataclasses.replace(RUN, recipe=Recipe.FEDSPALLM, method=Method.SPARSEGPT)
    with pytest.raises(RunRefusedError, match=f"recipe is fedspallm, which needs {needs}"):
        plugin_for(dataclasses.replace(run, **changes))  # type: ignore[arg-type]


def test_the_input_range_and_ring_are_the_recipe_s() -> None:
    assert recipe_max_input(RUN) == 1 and FedPrLLMOneShot.max_bit_width == MAX_BIT_WIDTH
    fedspallm = dataclasses.replace(RUN, recipe=Recipe.FEDSPALLM, method=Method.SPARSEGPT, participants=5)
    assert recipe_max_input(fedspallm) == VoteValueCodec(participants=5).max_input
    assert FedSpaLLM.max_bit_width == WIDE_MAX_BIT_WIDTH


def test_fedprllm_prunes_every_block_so_a_smaller_block_budget_is_a_problem_at_join() -> None:
    assert FedPrLLMOneShot.admission_problems(RUN, max_blocks=None) == []
    assert FedPrLLMOneShot.admission_problems(RUN, max_blocks=4) == []
    (problem,) = FedPrLLMIterative.admission_problems(RUN, max_blocks=3)
    assert "prunes all 4 decoder blocks" in problem and "max_blocks = 3" in problem
    assert FedSpaLLM.admission_problems(RUN, max_blocks=1) == []  # its sessions are checked one by one


def _one_shot_site(
    model: Any, samples: Any, privacy: Any, scored: list[int], **fields: Any
) -> FedPrLLMOneShot:
    inputs = SiteInputs(
        model=model,
        samples=samples,
        aggregator=privacy.statistic_aggregator(),
        method=Method.WANDA,
        pattern=SparsityPattern(sparsity=0.5),
        device=torch.device("cpu"),
        privacy=privacy,
        on_scored=scored.append,
    )
    return FedPrLLMOneShot(
        dataclasses.replace(RUN, **fields),
        inputs,
        published=Published(mask=_no_global_mask, weights=_no_global_mask),
    )


def _no_global_mask(block: int) -> dict[str, torch.Tensor]:
    raise AssertionError("a one-shot site never asks for a global mask")


def test_one_shot_scores_each_block_only_when_asked_and_its_votes_are_the_whole_model_ones() -> None:
    """Block 0's session needs block 0 alone; the streamed votes equal the whole-model votes bit for bit."""
    samples = random_ids(4, 8, seed=3)
    reference: dict[str, torch.Tensor] = {}
    one_shot_votes(
        build_tiny_model("llama", layers=4),
        samples,
        method=Method.WANDA,
        pattern=SparsityPattern(sparsity=0.5),
        device=torch.device("cpu"),
        on_votes=reference.__setitem__,
    )
    model = build_tiny_model("llama", layers=4)
    off = RunPrivacy(randomized_response=False, epsilon0=0.0, record_level_dp=False)
    privacy = ParticipantPrivacy(name="a", run_id="r", settings=off, blocks=4)
    scored: list[int] = []
    site = _one_shot_site(model, samples, privacy, scored)
    assert scored == []  # nothing is calibrated before a session asks
    first = site.vector(0)
    assert scored == [0]
    assert site.vector(2) is not None and scored == [0, 1, 2]
    site.finish()
    assert scored == [0, 1, 2, 3] and site._scoring is None  # the activations are freed
    site.finish()  # nothing left to score: no block is scored twice
    assert scored == [0, 1, 2, 3]
    for block in range(4):
        layout = VoteLayout.for_block(model, block)
        expected = layout.flatten({n: reference[n] for n in layout.names}, dtype=torch.bool).numpy()
        vector = first if block == 0 else site.vector(block)
        assert vector.dtype == np.bool_ and np.array_equal(vector, expected), block
    site.drop()
    with pytest.raises(PrivacyError, match="never scored twice"):
        site.vector(1)
    with pytest.raises(PrivacyError, match="outside the run's 4 blocks"):
        site.vector(4)


def test_one_shot_randomizes_each_block_after_its_own_release_and_its_statement_holds_every_block() -> None:
    """Each block's release is followed by its randomization; finish() records the blocks no session asked for."""
    from coordinator.report import StatementBounds, check_statement
    from privacy.ledger import Mechanism
    from privacy.signing import raw_public_key
    from pruning.data import CalibrationSet

    model = build_tiny_model("llama", layers=4)
    windows = tuple(random_ids(4, 8, seed=1))
    samples = CalibrationSet(windows=windows, record_of_window=(0, 1, 2, 3), documents=4)
    settings = RunPrivacy(epsilon0=4.0, noise_multiplier=1.0, sample_rate=0.5)
    privacy = ParticipantPrivacy(name="a", run_id="r", settings=settings, blocks=4)
    scored: list[int] = []
    site = _one_shot_site(model, samples, privacy, scored)
    site.vector(0)
    assert [(e.mechanism, e.block) for e in privacy.events()][-1] == (Mechanism.RANDOMIZED_RESPONSE, 0)
    assert {e.block for e in privacy.events()} == {0}  # nothing of blocks 1-3 released yet
    site.finish()
    blocks = [e.block for e in privacy.events()]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2, 3}
    for block in range(4):
        own = [e.mechanism for e in privacy.events() if e.block == block]
        assert own[-1] is Mechanism.RANDOMIZED_RESPONSE and own.count(Mechanism.RANDOMIZED_RESPONSE) == 1
        assert Mechanism.GAUSSIAN in own
    key = Ed25519PrivateKey.generate()
    statement = privacy.statement(key)
    dimensions = tuple(VoteLayout.for_block(model, block).dimension for block in range(4))
    bounds = StatementBounds(block_dimensions=dimensions, statistics_per_block=7, sample_rate=0.5)
    check_statement(statement, name="a", run_id="r", public_key=raw_public_key(key), bounds=bounds)
