"""pruning.distributed: one site's calibration over two gloo ranks decides what one process decides."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pruning import distributed
from pruning.local import prune_model
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method
from tests.tiny import build_tiny_model, random_ids

RANKS = 2
SAMPLES = 5  # odd: the ranks hold 3 and 2 records


class _SeededNormal:
    """A test double of ``KeystreamRandom``'s Gaussian draws, reproducible across processes."""

    def __init__(self, seed: int) -> None:
        self._generator = np.random.default_rng(seed)

    def standard_normal(self, size: int) -> np.ndarray:
        return self._generator.standard_normal(size)

    def bernoulli(self, size: int, p: float) -> np.ndarray:  # pragma: no cover - sample rate 1 draws none
        raise AssertionError("no coin is drawn at sample rate 1")


def _prune(method: Method, samples: Any, aggregator: Any = None) -> dict[str, LocalDecision]:
    decisions: dict[str, LocalDecision] = {}
    prune_model(
        build_tiny_model("llama", layers=2),
        samples,
        method=method,
        pattern=SparsityPattern(sparsity=0.5),
        device=torch.device("cpu"),
        aggregator=aggregator,
        progress=False,
        on_decision=lambda name, d: decisions.__setitem__(
            name, LocalDecision(d.pruned.clone(), None if d.weight is None else d.weight.clone())
        ),
    )
    return decisions


def _dp_aggregator(ranks: Any, seed: int) -> Any:
    from privacy.calibration_dp import DPStatisticAggregator

    return DPStatisticAggregator(noise_multiplier=0.5, rng=_SeededNormal(seed), ranks=ranks)  # type: ignore[arg-type]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(RANKS), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    assert distributed.init_from_environment(torch.device("cpu"))
    try:
        samples = distributed.shard_samples(random_ids(SAMPLES, 8, seed=4))
        results = {method.value: _prune(method, samples) for method in (Method.WANDA, Method.SPARSEGPT)}
        # Record-level DP: each rank's noise source differs; only rank 0's may reach the statistic.
        aggregator = _dp_aggregator(distributed.ranks_reduction(), seed=7 + rank)
        results["dp"] = _prune(Method.WANDA, samples, aggregator)
        torch.save(
            {
                "results": results,
                "records": list(samples.record_of_window),
                "events": len(aggregator.ledger.events()),
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _equal(one: dict[str, LocalDecision], other: dict[str, LocalDecision]) -> None:
    assert one.keys() == other.keys()
    for name in one:
        assert torch.equal(one[name].pruned, other[name].pruned), name
        if one[name].weight is not None:
            assert other[name].weight is not None
            torch.testing.assert_close(one[name].weight, other[name].weight, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_gloo_ranks_prune_as_one_process_for_wanda_sparsegpt_and_dp_statistics(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=RANKS, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]
    # Whole records, r on rank r mod 2, with their own ids.
    assert [r["records"] for r in ranks] == [[0, 2, 4], [1, 3]]
    samples = random_ids(SAMPLES, 8, seed=4)
    for method in (Method.WANDA, Method.SPARSEGPT):
        alone = _prune(method, samples)
        for rank in ranks:
            _equal(rank["results"][method.value], alone)
    # The DP statistic: the ranks' clipped sums added, rank 0's noise added once (same seed here), so one
    # process with rank 0's noise source decides the same masks, and so does rank 1 (seeded otherwise).
    alone = _prune(Method.WANDA, samples, _dp_aggregator(None, seed=7))
    for rank in ranks:
        _equal(rank["results"]["dp"], alone)
    assert ranks[0]["events"] == ranks[1]["events"] > 0


def test_one_process_is_one_rank() -> None:
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_leader()
    samples = random_ids(3, 8)
    assert distributed.shard_samples(samples) is samples
    assert distributed.ranks_reduction() is None
    assert not distributed.init_from_environment(torch.device("cpu"))  # WORLD_SIZE unset
    total = torch.arange(4.0)
    assert distributed.sum_over_ranks(total) is total


def test_the_participant_daemon_refuses_to_run_as_several_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedprune.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["participant", "--config", str(tmp_path / "absent.toml")]) != 0
    assert "WORLD_SIZE is 2: the participant daemon runs as one process" in capsys.readouterr().err
