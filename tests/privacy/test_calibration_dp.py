"""Record-level DP calibration statistics: unit-norm records, noise, shrinkage, ledger, never worse than magnitude."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privacy.calibration_dp import (
    DPStatisticAggregator,
    Shrinkage,
    hellinger_embedding,
    normalized_gram,
    shared_input_group,
    shrink_toward_prior,
)
from privacy.errors import PrivacyError
from privacy.ledger import Mechanism, PrivacyLedger
from pruning.statistics import ExactSum, StatisticKind

WIDTH, OUTPUTS, RECORDS, SPARSITY = 128, 96, 64, 0.7


def _feature_scales(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0.0, 0.7, WIDTH))
    scales[:3] *= 20.0  # a few outlier features, as LLM activations have
    return scales


def _records(seed: int = 1) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    scales = _feature_scales()
    return [
        torch.tensor(
            (scales * np.exp(rng.normal(0, 0.3, WIDTH))) ** 2 * rng.uniform(50, 150), dtype=torch.float32
        )
        for _ in range(RECORDS)
    ]


def _mask(weight: np.ndarray, column_squares: np.ndarray) -> np.ndarray:
    """Wanda's per-row selection: True where pruned."""
    scores = np.abs(weight) * np.sqrt(column_squares)[None, :]
    pruned = np.zeros_like(weight, dtype=bool)
    order = np.argsort(scores, axis=1, kind="stable")[:, : int(WIDTH * SPARSITY)]
    np.put_along_axis(pruned, order, True, axis=1)
    return pruned


def _lost_energy(weight: np.ndarray, pruned: np.ndarray, column_squares: np.ndarray) -> float:
    """Wanda's objective: the output energy the pruned weights carried on the calibration data."""
    return float((weight**2 * column_squares[None, :])[pruned].sum())


def _release(aggregator: DPStatisticAggregator, records: list[torch.Tensor], block: int = 0) -> np.ndarray:
    aggregator.begin_block(block_index=block, kind=StatisticKind.COLUMN_SQUARES, sublayers={"mlp.fc": WIDTH})
    for record in records:
        aggregator.add("mlp.fc", record)
    return aggregator.result("mlp.fc").numpy().astype(np.float64)


def test_each_record_contributes_a_unit_vector() -> None:
    for record in _records()[:5]:
        assert float(torch.linalg.vector_norm(hellinger_embedding(record))) == pytest.approx(1.0, abs=1e-12)
    assert float(torch.linalg.vector_norm(hellinger_embedding(torch.zeros(7)))) == pytest.approx(1.0)
    assert float(torch.linalg.vector_norm(hellinger_embedding(torch.full((7,), math.nan)))) == pytest.approx(
        1.0
    )
    x = torch.randn(20, 16)
    assert float(torch.linalg.matrix_norm(normalized_gram(x.t() @ x))) <= 1.0 + 1e-12


def test_shared_inputs_are_one_statistic() -> None:
    assert (
        shared_input_group("self_attn.q_proj")
        == shared_input_group("self_attn.v_proj")
        == "self_attn.qkv_proj"
    )
    assert shared_input_group("mlp.gate_proj") == shared_input_group("mlp.up_proj")
    assert shared_input_group("mlp.down_proj") == "mlp.down_proj"
    assert shared_input_group("attn.c_attn") == "attn.c_attn"


def test_almost_no_noise_reproduces_wanda() -> None:
    weight = np.random.default_rng(2).normal(size=(OUTPUTS, WIDTH))
    records = _records()
    exact = ExactSum()
    exact.begin_block(block_index=0, kind=StatisticKind.COLUMN_SQUARES, sublayers={"mlp.fc": WIDTH})
    for record in records:
        exact.add("mlp.fc", record)
    truth = exact.result("mlp.fc").numpy().astype(np.float64)
    private = _release(DPStatisticAggregator(noise_multiplier=1e-3), records)
    optimum = _lost_energy(weight, _mask(weight, truth), truth)
    assert _lost_energy(weight, _mask(weight, private), truth) <= 1.01 * optimum


def test_huge_noise_gives_exactly_magnitude_pruning() -> None:
    # The universal threshold lets pure noise keep a coordinate in about one release in 3,000 (by design,
    # under 1%): two of three independent releases must be exactly the prior, which fails about once in
    # 3 million runs, while a mechanism that leaked noise would fail every time.
    weight = np.random.default_rng(3).normal(size=(OUTPUTS, WIDTH))
    magnitude = _mask(weight, np.ones(WIDTH))
    exact = 0
    for _ in range(3):
        released = _release(DPStatisticAggregator(noise_multiplier=1e4), _records())
        exact += int(
            np.allclose(released, released[0]) and np.array_equal(_mask(weight, released), magnitude)
        )
    assert exact >= 2


@pytest.mark.parametrize("sigma", [0.5, 2.0, 4.0, 8.0, 32.0])
def test_no_noise_level_is_worse_than_magnitude(sigma: float) -> None:
    weight = np.random.default_rng(4).normal(size=(OUTPUTS, WIDTH))
    records = _records()
    truth = sum(r.numpy().astype(np.float64) for r in records)
    magnitude = _lost_energy(weight, _mask(weight, np.ones(WIDTH)), truth)
    losses = [
        _lost_energy(
            weight, _mask(weight, _release(DPStatisticAggregator(noise_multiplier=sigma), records)), truth
        )
        for _ in range(3)
    ]
    assert np.mean(losses) <= magnitude * 1.05  # CSPRNG noise: no seed, so a small margin


def test_at_high_noise_shrinkage_stays_at_magnitude_where_the_raw_statistic_is_worse() -> None:
    weight = np.random.default_rng(5).normal(size=(OUTPUTS, WIDTH))
    records = _records()
    truth = sum(r.numpy().astype(np.float64) for r in records)

    def loss(shrinkage: Shrinkage) -> float:
        # Noise far above the signal: the raw statistic is a random re-weighting of the features, which in
        # expectation loses more than magnitude (about 1.5x, but single draws range from 0.3x to 3.6x: the noise
        # sometimes happens to up-weight the outlier features). The mean of 64 draws has a standard deviation
        # near 0.1x, so the raw statistic falls below magnitude by chance with probability well under 1e-4.
        aggregator = DPStatisticAggregator(noise_multiplier=1000.0, shrinkage=shrinkage)
        return float(
            np.mean(
                [_lost_energy(weight, _mask(weight, _release(aggregator, records)), truth) for _ in range(64)]
            )
        )

    magnitude = _lost_energy(weight, _mask(weight, np.ones(WIDTH)), truth)
    assert loss(Shrinkage.SURE) <= 1.01 * magnitude < loss(Shrinkage.NONE)


def test_pure_noise_is_shrunk_to_the_prior() -> None:
    rng = np.random.default_rng(6)
    prior = np.ones(500)
    result = shrink_toward_prior(3.0 * prior + rng.normal(0, 1.0, 500), prior, 1.0, Shrinkage.SURE)
    assert result.rule == "prior" and np.allclose(result.estimate, result.estimate[0])


def test_each_block_is_one_release_with_ledger_events_per_statistic() -> None:
    ledger = PrivacyLedger()
    aggregator = DPStatisticAggregator(noise_multiplier=1.5, ledger=ledger, participant="site-a")
    sublayers = {"self_attn.q_proj": 16, "self_attn.k_proj": 16, "self_attn.v_proj": 16, "mlp.down_proj": 48}
    for block in range(2):
        aggregator.begin_block(block_index=block, kind=StatisticKind.COLUMN_SQUARES, sublayers=sublayers)
        for _ in range(5):
            shared = torch.rand(16)
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                aggregator.add(name, shared)
            aggregator.add("mlp.down_proj", torch.rand(48))
        outputs = {name: aggregator.result(name) for name in sublayers}
        assert torch.equal(outputs["self_attn.q_proj"], outputs["self_attn.v_proj"])
        assert (outputs["mlp.down_proj"] > 0).all()
    assert len(aggregator.releases) == 2
    events = ledger.events(Mechanism.GAUSSIAN)
    assert len(events) == 4
    shares = [e.parameters["clip_share"] for e in events[:2]]
    assert sum(s**2 for s in shares) == pytest.approx(1.0)  # a record's joint norm is 1
    assert shares[1] > shares[0]  # the wider statistic gets more of it
    assert events[0].parameters["noise_multiplier"] == pytest.approx(1.5 / shares[0])
    assert aggregator.epsilon(delta=1e-5).epsilon > 0


def test_wrongly_declared_shared_inputs_are_caught() -> None:
    aggregator = DPStatisticAggregator(noise_multiplier=1.0)
    aggregator.begin_block(
        block_index=0, kind=StatisticKind.COLUMN_SQUARES, sublayers={"attn.q_proj": 8, "attn.k_proj": 8}
    )
    aggregator.add("attn.q_proj", torch.rand(8))
    aggregator.add("attn.k_proj", torch.rand(8))
    with pytest.raises(PrivacyError, match="different inputs"):
        aggregator.result("attn.q_proj")


def test_poisson_sampling_keeps_about_q_of_the_records() -> None:
    aggregator = DPStatisticAggregator(noise_multiplier=1.0, sample_rate=0.25)
    aggregator.begin_block(block_index=0, kind=StatisticKind.COLUMN_SQUARES, sublayers={"fc": 4})
    for _ in range(4000):
        aggregator.add("fc", torch.rand(4))
    kept = sum(aggregator._included[:4000])
    assert abs(kept - 1000) < 4 * math.sqrt(4000 * 0.25 * 0.75)


def test_gram_release_is_symmetric_positive_definite() -> None:
    aggregator = DPStatisticAggregator(noise_multiplier=2.0)
    aggregator.begin_block(block_index=0, kind=StatisticKind.GRAM, sublayers={"fc": 12})
    for _ in range(20):
        x = torch.randn(30, 12)
        aggregator.add("fc", x.t() @ x)
    released = aggregator.result("fc").double()
    assert torch.allclose(released, released.t())
    assert torch.linalg.eigvalsh(released).min() > 0


def test_target_epsilon_sets_the_noise() -> None:
    aggregator = DPStatisticAggregator.for_target(target_epsilon=8.0, delta=1e-5, blocks=4)
    for block in range(4):
        _release(aggregator, _records()[:4], block=block)
    assert aggregator.epsilon(delta=1e-5).epsilon <= 8.0


def test_magnitude_has_no_private_statistic() -> None:
    with pytest.raises(PrivacyError):
        DPStatisticAggregator(noise_multiplier=1.0).begin_block(
            block_index=0, kind=StatisticKind.NONE, sublayers={}
        )


def test_releases_in_another_round_are_told_apart_and_count_against_the_same_cap() -> None:
    from privacy.calibration_dp import DPStatisticAggregator
    from privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger()
    aggregator = DPStatisticAggregator(noise_multiplier=1.0, ledger=ledger, participant="a", max_releases=2)

    def release(block: int) -> None:
        aggregator.begin_block(block_index=block, kind="column_squares", sublayers={"q": 4})
        aggregator.add("q", torch.ones(1, 4), record=0)
        aggregator.result("q")

    with aggregator.releasing_round(4294967295):
        release(0)
    release(0)
    ids = [event.parameters["release"] for event in ledger.events()]
    assert ids == ["a/round4294967295/block0", "a/round0/block0"]
    assert [event.round for event in ledger.events()] == [4294967295, 0]
    with pytest.raises(PrivacyError, match="only 2 were planned"):
        release(1)
