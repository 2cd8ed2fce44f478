"""OWL's per-block sparsity: the published allocation, the model's average kept, and the prune command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedprune.cli import main
from pruning.adapters import iter_prunable
from pruning.errors import PruningInputError
from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from pruning.owl import OwlSettings, allocate, block_outlier_ratio, block_weight_counts, owl_allocation
from tests.reference import as_out_in, blocks_of
from tests.tiny import build_tiny_model, random_ids, random_text

CPU = torch.device("cpu")


def reference_allocation(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """The authors' code (luuyin/OWL, prune_wanda_outlier), written out for equal-sized blocks."""
    low, high = min(ratios), max(ratios)
    scaled = [(r - low) * (1 / (high - low) * lam * 2) for r in ratios]
    mean = sum(scaled) / len(scaled)
    keep = [v - mean + (1 - sparsity) for v in scaled]
    return [1 - k for k in keep]


def test_equal_blocks_get_the_published_allocation() -> None:
    ratios = [0.011, 0.004, 0.02, 0.007, 0.013]
    got = allocate(ratios, [100] * 5, target=0.7, settings=OwlSettings()).sparsities
    assert got == pytest.approx(reference_allocation(ratios, 0.7, 0.08), abs=1e-12)
    # More outliers, less pruning; the range is 2 * lambda.
    assert got.index(min(got)) == ratios.index(max(ratios))
    assert max(got) - min(got) == pytest.approx(0.16)


def test_unequal_blocks_keep_the_weighted_average_exact() -> None:
    ratios, weights = [0.03, 0.01, 0.02], [1000, 50, 300]
    allocation = allocate(ratios, weights, target=0.5, settings=OwlSettings(lam=0.1))
    pruned = sum(s * w for s, w in zip(allocation.sparsities, weights, strict=True))
    assert pruned == pytest.approx(0.5 * sum(weights), abs=1e-9)
    # The plain (unweighted) mean would miss the target for these sizes: the weighting is not a no-op.
    plain = reference_allocation(ratios, 0.5, 0.1)
    assert abs(sum(s * w for s, w in zip(plain, weights, strict=True)) - 0.5 * sum(weights)) > 1


def test_a_70b_sized_allocation_passes_its_own_check_and_a_shift_of_one_weight_does_not() -> None:
    # 80 blocks of 0.86 B prunable weights (Llama-2-70B): float64 rounding of the weighted mean is far above
    # 1e-6 weights there, and far below one weight.
    ratios = [(i * 0.6180339887) % 1 * 0.05 for i in range(80)]
    weights = [855_638_016] * 80
    allocation = allocate(ratios, weights, target=0.7, settings=OwlSettings())
    from pruning.owl import check_announced_sparsities

    check_announced_sparsities(allocation.sparsities, weights, target=0.7, settings=OwlSettings())
    shifted = list(allocation.sparsities)
    shifted[0] += 1.5 / weights[0]  # one and a half weights more pruned in block 0
    with pytest.raises(PruningInputError, match="not the target"):
        check_announced_sparsities(shifted, weights, target=0.7, settings=OwlSettings())


def test_equal_ratios_give_uniform_sparsity_and_bad_settings_are_refused() -> None:
    assert allocate([0.02, 0.02], [10, 10], target=0.6, settings=OwlSettings()).sparsities == (0.6, 0.6)
    with pytest.raises(PruningInputError, match="block 1 sparsity"):
        allocate([0.0, 1.0, 0.0, 0.0], [1, 1, 1, 1], target=0.05, settings=OwlSettings(lam=0.2))
    with pytest.raises(PruningInputError, match="lambda"):
        OwlSettings(lam=0.7)
    with pytest.raises(PruningInputError, match="multiple"):
        OwlSettings(multiple=0)


def test_block_outlier_ratio_counts_scores_above_m_times_the_mean() -> None:
    scores = [torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 100.0]])]
    # mean = 106 / 6 ~ 17.7; only 100 exceeds 5x the mean... 88.3 > 100? no: 5 * 17.67 = 88.3 < 100.
    assert block_outlier_ratio(scores, multiple=5.0) == pytest.approx(1 / 6)
    assert block_outlier_ratio(scores, multiple=6.0) == 0.0


def _reference_outlier_ratios(model: nn.Module, samples: torch.Tensor, multiple: float) -> list[float]:
    """One dense pass with hooks on every block; Wanda's metric per block, concatenated; share above M x mean."""
    sums: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for index, block in enumerate(blocks_of(model)):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":

                def hook(mod, inputs, output, key=(index, name)):
                    x = inputs[0].detach().to(torch.float64)
                    sums[key] = sums.get(key, 0) + (x.reshape(-1, x.shape[-1]) ** 2).sum(0)

                handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=samples, use_cache=False)
    for handle in handles:
        handle.remove()
    ratios = []
    for index, block in enumerate(blocks_of(model)):
        modules = dict(block.named_modules())
        flat = torch.cat(
            [
                (as_out_in(modules[name]).abs().to(torch.float64) * sums[(index, name)].sqrt()).reshape(-1)
                for (i, name) in sums
                if i == index
            ]
        )
        ratios.append(float((flat > multiple * flat.mean()).sum()) / flat.numel())
    return ratios


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_outlier_ratios_equal_a_dense_reference_pass(architecture: str) -> None:
    model = build_tiny_model(architecture, dtype=torch.float64, layers=4)
    samples = random_ids(4, 24)
    before = [p.clone() for p in model.parameters()]
    allocation = owl_allocation(model, samples, target=0.7, device=CPU, settings=OwlSettings(multiple=3.0))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # left dense
    assert list(allocation.outlier_ratios) == _reference_outlier_ratios(model, samples, 3.0)
    assert len(set(allocation.sparsities)) > 1


def test_pruning_with_the_allocation_keeps_the_model_average(tmp_path: Path) -> None:
    model = build_tiny_model("llama", layers=4)
    samples = random_ids(4, 24)
    allocation = owl_allocation(model, samples, target=0.7, device=CPU, settings=OwlSettings(multiple=3.0))
    prune_model(
        model,
        samples,
        method=Method.WANDA,
        pattern=parse_pattern("unstructured", 0.7),
        device=CPU,
        progress=False,
        block_sparsities=allocation.sparsities,
    )
    zeros = total = rows = 0
    for block, _, sublayer in iter_prunable(model):
        weight = sublayer.weight()
        per_row = int(sublayer.in_features * allocation.sparsities[block])
        assert torch.equal((weight == 0).sum(dim=1), torch.full((sublayer.out_features,), per_row))
        zeros += int((weight == 0).sum())
        total += weight.numel()
        rows += sublayer.out_features
    assert total == sum(block_weight_counts(model))
    # Each row prunes int(in * s_l): the model's average is the target to within one weight per row.
    assert 0 <= 0.7 * total - zeros < rows


def test_prune_cli_owl_records_the_allocation_in_sparsity_json(model_dir, tmp_path: Path, capsys) -> None:
    data = tmp_path / "calibration.txt"
    data.write_text(random_text(2000), encoding="utf-8")
    out = tmp_path / "out"
    args = ["prune", "--model", str(model_dir("llama")), "--data", str(data), "--sparsity", "0.7"]
    args += ["--nsamples", "4", "--seqlen", "32", "--no-progress", "--device", "cpu", "--owl", "--owl-m", "3"]
    assert main([*args, "--out", str(out)]) == 0
    assert "OWL per-block sparsity" in capsys.readouterr().out
    table = json.loads((out / "sparsity.json").read_text())
    allocated = [b["sparsity"] for b in table["allocation"]["blocks"]]
    assert table["allocation"]["lambda"] == 0.08 and table["allocation"]["outlier_multiple"] == 3.0
    assert len(table["blocks"]) == len(allocated) and len(set(allocated)) > 1
    # Every matrix of block l prunes int(in * s_l) weights per row; the total is 0.7 of the weights to within
    # one weight per row (tiny rows make that visible: 0.675 here).
    expected = sum(
        row["shape"][0] * int(row["shape"][1] * allocated[int(row["name"].split(".")[1])])
        for row in table["matrices"]
    )
    assert table["total"]["zeros"] == expected
    rows = sum(row["shape"][0] for row in table["matrices"])
    assert 0 <= 0.7 * table["total"]["weights"] - expected < rows
    nm = ["prune", "--model", str(model_dir("llama")), "--data", str(data), "--pattern", "2:4", "--owl"]
    capsys.readouterr()
    assert main([*nm, "--out", str(tmp_path / "nm")]) != 0
    assert "--owl" in capsys.readouterr().err
