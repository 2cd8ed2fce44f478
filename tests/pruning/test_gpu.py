"""The CUDA path gives the same masks as the CPU path (skipped where no CUDA device is present)."""

from __future__ import annotations

import pytest
import torch

from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from tests.tiny import build_tiny_model, random_ids

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_cuda_masks_equal_cpu_masks_and_model_returns_to_cpu(architecture: str) -> None:
    samples = random_ids(4, 16)
    masks: dict[str, dict[str, torch.Tensor]] = {"cpu": {}, "cuda": {}}
    for device in ("cpu", "cuda"):
        model = build_tiny_model(architecture, dtype=torch.float64)
        prune_model(
            model,
            samples,
            method=Method.WANDA,
            pattern=parse_pattern("unstructured", 0.5),
            device=torch.device(device),
            progress=False,
            on_decision=lambda name, d, device=device: masks[device].__setitem__(name, d.pruned.cpu()),
        )
        assert all(p.device.type == "cpu" for p in model.parameters())
    for name, mask in masks["cpu"].items():
        assert torch.equal(mask, masks["cuda"][name]), name
