"""participant.recipes: one plug-in per recipe and mode, chosen in one place, with the frame of its sessions."""

from __future__ import annotations

import dataclasses

import pytest

from participant.errors import RunRefusedError
from participant.recipes import FedPrLLMIterative, FedPrLLMOneShot, FedSpaLLM, plugin_for, recipe_max_input
from privacy.secagg.fixed_point import VoteValueCodec
from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH
from proto import domain
from pruning.masks import ComparisonGroup, SparsityPattern
from pruning.methods import Method
from pruning.recipes import Mode, Recipe

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
