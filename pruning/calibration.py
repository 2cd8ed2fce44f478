"""Block-by-block calibration: what enters each decoder block, and what its linear sublayers see.

The model stays where it was loaded (normally the CPU); one decoder block at a time is moved to the compute
device together with the calibration hidden states, so peak accelerator memory is about one block plus the
activations of the calibration samples. The life cycle of one block, as Wanda and SparseGPT define it:

1. :meth:`CalibratedBlock.collect` runs every window through the block once, with hooks that hand each
   window's contribution to the statistics of *all* its linear sublayers to an aggregator, tagged with the
   record (document) the window belongs to;
2. the caller prunes the block (all sublayers from those statistics);
3. when the caller moves on, the pruned block is run again to produce the next block's inputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pruning.adapters import LinearSublayer, decoder_blocks, linear_sublayers, move_outside_blocks
from pruning.data import CalibrationSet, as_windows
from pruning.statistics import StatisticAggregator, StatisticKind, record_contribution

logger = logging.getLogger(__name__)


class _BlockInputsCaptured(Exception):
    """Raised by the pre-hook on the first block once its inputs are recorded."""


def _hidden_states(output: Any) -> torch.Tensor:
    """Return the hidden states from a decoder block's output (a tensor, or a tuple starting with one)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the compute device for ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        from pruning.errors import PruningInputError

        raise PruningInputError("--device cuda was asked for but no CUDA device is available")
    return resolved


class CalibratedBlock:
    """One decoder block on the compute device, with the hidden states that enter it."""

    def __init__(self, runner: BlockRunner, index: int, block: nn.Module) -> None:
        self._runner = runner
        self.index = index
        self.block = block
        self.sublayers: dict[str, LinearSublayer] = linear_sublayers(block)

    def collect(self, kind: StatisticKind, aggregator: StatisticAggregator) -> dict[str, torch.Tensor]:
        """Return each sublayer's statistic after one pass of all records through the (unpruned) block."""
        aggregator.begin_block(
            block_index=self.index,
            kind=kind,
            sublayers={name: sub.in_features for name, sub in self.sublayers.items()},
        )

        runner = self._runner

        def hook_for(name: str, in_features: int) -> Any:
            def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
                flat = inputs[0].detach().reshape(-1, in_features).to(torch.float32)
                aggregator.add(name, record_contribution(kind, flat), record=runner.current_record)

            return hook

        handles = [
            sub.module.register_forward_hook(hook_for(name, sub.in_features))
            for name, sub in self.sublayers.items()
        ]
        try:
            self._runner.run_block(self.block)
        finally:
            for handle in handles:
                handle.remove()
        return {name: aggregator.result(name) for name in self.sublayers}


class BlockRunner:
    """Feeds calibration windows through a model's decoder blocks, one block on the device at a time.

    ``samples`` is either a ``[nsamples, seqlen]`` tensor (every row its own record) or a
    :class:`pruning.data.CalibrationSet`, whose windows may differ in length and carry the id of the record
    (document) each belongs to. Windows run one at a time, so they need no padding.
    """

    def __init__(
        self, model: nn.Module, samples: torch.Tensor | CalibrationSet, *, device: torch.device
    ) -> None:
        windows, records = as_windows(samples)
        self.model = model
        self.device = device
        self.blocks = decoder_blocks(model)
        self.record_of_window = records
        self.current_record: int | None = None
        self._home = next(model.parameters()).device
        # The block's other inputs (rotary embeddings, causal mask, position ids) depend only on the
        # window's length: kept once per length.
        self._extra_args: dict[int, tuple[Any, ...]] = {}
        self._kwargs: dict[int, dict[str, Any]] = {}
        self.hidden = self._capture_first_block_inputs(windows)

    @torch.no_grad()
    def _capture_first_block_inputs(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the hidden states entering block 0, one ``[1, length, hidden]`` tensor per window."""
        captured: list[torch.Tensor] = []
        first = self.blocks[0]

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            captured.append(hidden.detach())
            length = hidden.shape[1]
            if length not in self._kwargs:
                self._extra_args[length] = tuple(args[1:])
                self._kwargs[length] = {
                    **{k: v for k, v in kwargs.items() if k != "hidden_states"},
                    "use_cache": False,
                }
            raise _BlockInputsCaptured

        move_outside_blocks(self.model, self.device)
        handle = first.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            for window in windows:
                with contextlib.suppress(_BlockInputsCaptured):
                    self.model(input_ids=window.unsqueeze(0).to(self.device), use_cache=False)
        finally:
            handle.remove()
            move_outside_blocks(self.model, self._home)
        return captured

    @torch.no_grad()
    def run_block(self, block: nn.Module) -> list[torch.Tensor]:
        """Return the block's outputs for every window, running one window at a time."""
        outputs = []
        try:
            for hidden, record in zip(self.hidden, self.record_of_window, strict=True):
                self.current_record = record
                length = hidden.shape[1]
                result = block(hidden, *self._extra_args[length], **self._kwargs[length])
                outputs.append(_hidden_states(result))
        finally:
            self.current_record = None
        return outputs

    def __iter__(self) -> Iterator[CalibratedBlock]:
        """Yield each block on the device; after the caller is done with it, propagate its outputs."""
        for index, block in enumerate(self.blocks):
            block.to(self.device)
            try:
                yield CalibratedBlock(self, index, block)
                self.hidden = self.run_block(block)
            finally:
                block.to(self._home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
