"""Before any release, a site learns what the DP noise will leave of its statistics."""

from __future__ import annotations

import pytest

from participant.privacy import RunPrivacy, planned_noise_multiplier, released_dimension
from privacy.accounting import noise_multiplier_for_epsilon
from privacy.calibration_dp import signal_outlook
from pruning.adapters import decoder_blocks
from tests.tiny import build_tiny_model


def _settings(**overrides: object) -> RunPrivacy:
    values: dict[str, object] = {
        "randomized_response": True,
        "epsilon0": 4.0,
        "record_level_dp": True,
        "noise_multiplier": None,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "sample_rate": 1.0,
    }
    values.update(overrides)
    return RunPrivacy(**values)  # type: ignore[arg-type]


def test_the_released_dimension_counts_shared_inputs_once() -> None:
    block = decoder_blocks(build_tiny_model("llama", hidden=32, intermediate=64))[0]
    # q/k/v read one 32-wide input, o_proj 32, gate/up one 32-wide input, down_proj 64.
    assert released_dimension(block, gram=False) == 32 + 32 + 32 + 64
    assert released_dimension(block, gram=True) == 3 * (32 * 33 // 2) + 64 * 65 // 2


def test_the_planned_noise_is_what_the_aggregator_will_use() -> None:
    sigma = planned_noise_multiplier(_settings(), blocks=4)
    assert sigma == pytest.approx(
        noise_multiplier_for_epsilon(target_epsilon=8.0, delta=1e-5, releases=4, sample_rate=1.0)
    )
    assert planned_noise_multiplier(_settings(target_epsilon=None, noise_multiplier=2.5), blocks=4) == 2.5
    assert planned_noise_multiplier(_settings(record_level_dp=False, target_epsilon=None), blocks=4) is None


def test_few_documents_are_called_close_to_magnitude_and_many_are_not() -> None:
    sigma = planned_noise_multiplier(_settings(), blocks=4)
    assert sigma is not None
    few = signal_outlook(records=32, noise_multiplier=sigma, sample_rate=1.0, dimension=1456)
    many = signal_outlook(records=20_000, noise_multiplier=sigma, sample_rate=1.0, dimension=1456)
    assert "near magnitude pruning or worse" in few.verdict
    assert "most of their signal" in many.verdict
