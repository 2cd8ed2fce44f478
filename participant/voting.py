"""A participant's keep-votes, one-shot or block by block (iterative), from its own calibration data.

One-shot: the participant prunes its own copy of the model block by block with its own masks (its inputs
to block l come from its own pruned blocks 0..l-1) and votes on every block; :func:`one_shot_block_votes`
does it one block at a time, as far as the caller asks, and :func:`one_shot_votes` for the whole model. Iterative: after voting on
block l the participant receives the global mask of block l, applies it, and only then scores block l+1.
FedSpaLLM (:func:`sparsegpt_local_results`): one-shot SparseGPT on the blocks assigned to the participant,
handing on both the mask and the reconstructed weights of every matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterator

import numpy as np
import torch
from torch import nn

from pruning.adapters import LinearSublayer, decoder_blocks, qualified_name
from pruning.calibration import BlockRunner
from pruning.data import CalibrationSet
from pruning.distributed import exact_aggregator
from pruning.errors import PruningInputError
from pruning.local import check_pattern_fits, prune_model, scored_blocks
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method, apply_decision, decide
from pruning.statistics import StatisticAggregator

KeepVotes = dict[str, torch.Tensor]
"""Qualified matrix name -> bool tensor ``[out, in]``, True = keep."""


class PackedBits:
    """A 1-D bool vector held bit-packed (little bit order, as masks travel): an eighth of a byte a bit.

    A participant keeps every block's keep-votes and global mask for the whole run; as bools they would
    cost a byte a weight, about half the fp16 model again.
    """

    __slots__ = ("count", "packed")

    def __init__(self, packed: np.ndarray, count: int) -> None:
        if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != -(-count // 8):
            raise ValueError(f"packed must be {-(-count // 8)} uint8 bytes for {count} bits")
        self.packed = packed
        self.count = count

    @classmethod
    def of(cls, bits: np.ndarray) -> PackedBits:
        """Pack a bool vector (any shape, read flat)."""
        flat = np.ascontiguousarray(bits, dtype=np.bool_).reshape(-1)
        return cls(np.packbits(flat, bitorder="little"), int(flat.size))

    def unpack(self) -> np.ndarray:
        """Return the bits as a fresh 1-D bool array (pad bits of the last byte ignored)."""
        return np.unpackbits(self.packed, bitorder="little", count=self.count).view(np.bool_)


def one_shot_votes(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
    on_votes: Callable[[str, torch.Tensor], None],
    progress: bool = False,
) -> None:
    """Prune ``model`` locally in place and hand each matrix's keep-votes (on the CPU) to ``on_votes``."""
    prune_model(
        model,
        samples,
        method=method,
        pattern=pattern,
        device=device,
        aggregator=aggregator,
        progress=progress,
        on_decision=lambda name, decision: on_votes(name, decision.keep_votes.cpu()),
    )


def one_shot_block_votes(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
    block_pattern: Callable[[int], SparsityPattern] | None = None,
) -> Iterator[KeepVotes]:
    """Yield one block's keep-votes (on the CPU) at a time, pruning the block with them before the next.

    The same decisions, in the same order, as :func:`one_shot_votes` (``pruning.local.prune_model``): a
    block's statistics are collected only when the caller asks for the block, so a site can start a
    block's session once that block alone is scored. ``block_pattern`` gives each block its own pattern
    (an OWL allocation; asked when the block is scored); None: ``pattern`` for every block.
    """
    check_pattern_fits(model, pattern)  # here, not at the first block: a misfit is refused at once
    return _one_shot_blocks(
        model,
        samples,
        method=method,
        pattern_of=block_pattern or (lambda block: pattern),
        device=device,
        aggregator=aggregator,
    )


@torch.no_grad()
def _one_shot_blocks(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern_of: Callable[[int], SparsityPattern],
    device: torch.device,
    aggregator: StatisticAggregator | None,
) -> Iterator[KeepVotes]:
    for index, sublayers, statistics in scored_blocks(
        model, samples, method=method, device=device, aggregator=aggregator
    ):
        # Decided in a function of its own: this frame stays suspended through the block's session, and
        # must not keep the block's votes and last decision (bytes a weight) alive beside it.
        yield _prune_block_with_own_votes(
            index, sublayers, statistics, method=method, pattern=pattern_of(index)
        )


def _prune_block_with_own_votes(
    index: int,
    sublayers: dict[str, LinearSublayer],
    statistics: dict[str, torch.Tensor | None],
    *,
    method: Method,
    pattern: SparsityPattern,
) -> KeepVotes:
    """Prune one block's sublayers with their own decisions; return the keep-votes (on the CPU)."""
    votes: KeepVotes = {}
    for name, sublayer in sublayers.items():
        decision = decide(method, sublayer, pattern, statistics[name])
        apply_decision(sublayer, decision)
        votes[qualified_name(index, name)] = decision.keep_votes.cpu()
    return votes


def iterative_votes(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet | None,
    *,
    method: Method,
    pattern: SparsityPattern,
    device: torch.device,
    aggregator: StatisticAggregator | None = None,
    block_pattern: Callable[[int], SparsityPattern] | None = None,
) -> Generator[KeepVotes, dict[str, torch.Tensor], None]:
    """Yield one block's keep-votes at a time; ``send`` the block's global mask (True = pruned) back.

    The global mask is applied to the participant's copy before its outputs feed the next block.
    ``block_pattern`` gives each block its own pattern (an OWL allocation); None: ``pattern``.
    """
    check_pattern_fits(model, pattern)
    for index, sublayers, statistics in scored_blocks(
        model, samples, method=method, device=device, aggregator=aggregator
    ):
        own = pattern if block_pattern is None else block_pattern(index)
        votes = {
            qualified_name(index, name): decide(method, sublayer, own, statistics[name]).keep_votes.cpu()
            for name, sublayer in sublayers.items()
        }
        global_masks = yield votes
        for name, sublayer in sublayers.items():
            sublayer.apply_pruned(global_masks[qualified_name(index, name)])


@torch.no_grad()
def sparsegpt_local_results(
    model: nn.Module,
    samples: torch.Tensor | CalibrationSet,
    *,
    pattern: SparsityPattern,
    device: torch.device,
    blocks: Collection[int] | None = None,
    aggregator: StatisticAggregator | None = None,
    on_decision: Callable[[str, LocalDecision], None],
) -> None:
    """Prune ``model`` in place with SparseGPT on ``blocks`` (all by default), handing on each decision.

    A block outside ``blocks`` (not assigned to this participant) stays dense and only carries the
    calibration inputs on to the next block: no statistic of it is collected, so nothing of it is
    released. With every block assigned this is exactly ``pruning.local.prune_model`` with
    ``Method.SPARSEGPT`` (what ``fedprune prune --method sparsegpt`` runs): the same statistics, masks and
    reconstructed weights.
    """
    check_pattern_fits(model, pattern)
    count = len(decoder_blocks(model))
    assigned = set(range(count)) if blocks is None else set(blocks)
    if not assigned <= set(range(count)):
        raise PruningInputError(f"blocks must lie in [0, {count}), got {sorted(assigned)}")
    aggregator = aggregator or exact_aggregator()
    for step in BlockRunner(model, samples, device=device):
        if step.index not in assigned:
            continue
        statistics = step.collect(Method.SPARSEGPT.statistic, aggregator)
        for name, sublayer in step.sublayers.items():
            decision = decide(Method.SPARSEGPT, sublayer, pattern, statistics[name])
            apply_decision(sublayer, decision)
            on_decision(qualified_name(step.index, name), decision)


class AssignedBlockPruner:
    """FedSpaLLM at a participant: SparseGPT on the blocks the coordinator assigns, one block on request.

    The coordinator assigns blocks in increasing order and tells a participant only by starting a block's
    session with it, so the pruner walks the model forward lazily: :meth:`prune` of block l passes every
    block before l it was not asked for (dense, carrying the calibration inputs only: no statistic of it
    is collected, so nothing of it is released) and prunes l with SparseGPT, applying the mask and the
    reconstructed weights to this participant's copy before l's outputs feed the next block. With every
    block asked for in order this is exactly :func:`sparsegpt_local_results` with all blocks, and so
    ``fedprune prune --method sparsegpt``.
    """

    def __init__(
        self,
        model: nn.Module,
        samples: torch.Tensor | CalibrationSet,
        *,
        pattern: SparsityPattern,
        device: torch.device,
        aggregator: StatisticAggregator | None = None,
    ) -> None:
        check_pattern_fits(model, pattern)
        self.pattern = pattern
        self.blocks = len(decoder_blocks(model))
        self._aggregator = aggregator or exact_aggregator()
        self._steps = iter(BlockRunner(model, samples, device=device))
        self._next = 0
        self.pruned: list[int] = []

    def prune(self, block: int) -> dict[str, LocalDecision]:
        """Return block ``block``'s decisions (mask and reconstructed weight on the CPU) by qualified name.

        Raises PruningInputError for a block already passed (blocks only go forward) or out of range.
        """
        if not 0 <= block < self.blocks:
            raise PruningInputError(f"block must lie in [0, {self.blocks}), got {block}")
        if block < self._next:
            raise PruningInputError(
                f"block {block} was already {'pruned' if block in self.pruned else 'passed unpruned'}; "
                "blocks are pruned in increasing order, once"
            )
        while True:
            step = next(self._steps)
            self._next = step.index + 1
            if step.index == block:
                break
        statistics = step.collect(Method.SPARSEGPT.statistic, self._aggregator)
        decisions = {}
        for name, sublayer in step.sublayers.items():
            decision = decide(Method.SPARSEGPT, sublayer, self.pattern, statistics[name])
            apply_decision(sublayer, decision)
            weight = decision.weight.cpu() if decision.weight is not None else None
            decisions[qualified_name(block, name)] = LocalDecision(decision.pruned.cpu(), weight)
        self.pruned.append(block)
        return decisions
