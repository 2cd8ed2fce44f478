"""What a site computes and sends for a block, one object per recipe and mode (the participant's plug-ins).

The run loop (``participant.run``) asks its recipe for a block's input vector, the ring its sessions may
use, the chunking they must have and whether a session is within the site's budget; it never asks which
recipe it runs. ``plugin_for`` chooses the class, in this one place, from the run's parameters:

- ``FedPrLLMOneShot``: the site prunes its own copy block by block with its own masks; a block is scored
  when its session (or a later block's) first asks for it, so block 0's session starts once block 0 alone
  is scored; each block's keep-votes are randomized once, right after that block's calibration release,
  and held bit-packed.
- ``FedPrLLMIterative``: block l+1 is scored only after block l's global mask is applied (fetched from the
  coordinator through the ``global_mask`` callback it is given).
- ``StatisticsIterative``: the site's calibration column statistics of each block, computed after the
  previous block's global mask is applied, as 64-bit fixed point in two 32-bit lanes per value
  (``StatisticCodec``); the coordinator chooses the mask from their sum.
- ``OwlAllocationStatistics`` (no recipe of its own: an OWL run's allocation phase, before block 0, under
  any recipe that allows OWL): each block's column statistics of the dense model, one calibration pass, in
  the statistics recipe's encoding.
- ``FedSpaLLM``: SparseGPT on the blocks whose sessions the coordinator starts with this site
  (``AssignedBlockPruner``), at most ``runtime.max_blocks`` of them; each vector packs the randomized
  keep-vote and the fixed-point weight update of every weight (``VoteValueCodec`` for the run's n), so one
  wide-ring session sums both.

Which settings a recipe allows is ``pruning.recipes.recipe_conflicts``, never a copy of it here.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from participant.errors import RunRefusedError
from participant.privacy import ParticipantPrivacy, encode_votes_and_updates
from participant.voting import (
    AssignedBlockPruner,
    KeepVotes,
    PackedBits,
    iterative_votes,
    one_shot_block_votes,
)
from privacy.calibration_dp import DPStatisticAggregator
from privacy.errors import PrivacyError
from privacy.secagg import ring_bit_width
from privacy.secagg.fixed_point import StatisticCodec, VoteValueCodec
from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH
from proto.convert import session_chunk_coordinates
from proto.domain import OWL_ALLOCATION_ROUND, RunParameters
from pruning.adapters import iter_prunable, qualified_name
from pruning.calibration import BlockRunner
from pruning.distributed import exact_aggregator
from pruning.layout import VoteLayout
from pruning.local import check_pattern_fits, scored_blocks
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method
from pruning.recipes import Mode, Recipe, recipe_conflicts
from pruning.statistics import (
    StatisticAggregator,
    StatisticKind,
    block_statistics_dimension,
    encode_block_statistics,
)
from pruning.updates import UPDATE_RANGE_FACTOR

logger = logging.getLogger(__name__)

GlobalMask = Callable[[int], dict[str, torch.Tensor]]
"""Block -> its global mask (True = pruned), as the coordinator published it and the site checked it."""
PublishedWeights = Callable[[int], dict[str, torch.Tensor]]
"""Block -> its final weights (by qualified name), as the coordinator published them and the site checked
them (only a recipe whose coordinator reconstructs weights publishes them)."""


@dataclasses.dataclass(frozen=True)
class Published:
    """What the coordinator publishes per finished block that a recipe reads back, each fetched and checked
    by the site's run."""

    mask: GlobalMask
    weights: PublishedWeights


BlockPattern = Callable[[int], SparsityPattern]
"""Block -> the pattern its local masks are chosen at (an OWL run's per-block sparsity, else the run's)."""


class SessionFrame(Protocol):
    """What a session's frame is checked against: the ring, the chunking and a block's vector size."""

    @property
    def max_bit_width(self) -> int:
        """Return the widest ring the sessions may use (the site's own limit)."""
        ...

    def chunk_coordinates(self, *, participants: int, max_input: int) -> int:
        """Return the chunking a session of ``participants`` must have."""
        ...

    def dimension(self, block: int) -> int:
        """Return the coordinates of block ``block``'s input vector."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteInputs:
    """What a recipe computes a site's vectors from: its model (pruned in place), data and privacy."""

    model: nn.Module
    samples: Any
    """Calibration windows or records; None for magnitude pruning, which reads no data."""
    aggregator: StatisticAggregator | None
    method: Method
    pattern: SparsityPattern
    device: torch.device
    privacy: ParticipantPrivacy
    on_scored: Callable[[int], None] = lambda block: None
    """Told each block whose vector is computed and randomized (the run's ``BlockScored`` event)."""
    block_pattern: BlockPattern | None = None
    """Each block's pattern for the site's own masks (an OWL run's allocation); None: ``pattern``."""

    def pattern_of(self, block: int) -> SparsityPattern:
        """Return the pattern block ``block``'s local masks are chosen at."""
        return self.pattern if self.block_pattern is None else self.block_pattern(block)


class ParticipantRecipe(abc.ABC):
    """One recipe and mode for the participant role: a block's input vector and the frame of its sessions."""

    recipe: ClassVar[Recipe]
    max_bit_width: ClassVar[int] = MAX_BIT_WIDTH
    """The widest ring this recipe's sessions may use: the site's own acceptance limit, never read from
    the wire."""

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        self.run = run
        self.inputs = inputs
        self.published = published
        self.vectors: dict[int, np.ndarray | PackedBits] = {}
        """Block -> its vector as it will be (or was) sent; blocks a site never sends again are freed."""
        self.clipped_updates = 0
        """Weight updates clipped to the public fixed-point bound so far (FedSpaLLM; 0 in a healthy run)."""

    @property
    def reads_weights(self) -> bool:
        """Return whether the next block's vector is computed on the weights the coordinator publishes for
        a finished block (``BlockWeights``), which then belong to the view a session binds."""
        return False

    @staticmethod
    def max_input(participants: int) -> int:
        """Return the largest value one site adds per coordinate for ``participants`` sites."""
        return 1

    @classmethod
    def admission_problems(cls, run: RunParameters, *, max_blocks: int | None) -> list[str]:
        """Return why a site with ``runtime.max_blocks`` cannot take ``run`` under this recipe (empty: it can)."""
        return []

    def chunk_coordinates(self, *, participants: int, max_input: int) -> int:
        """Return the chunking a session of ``participants`` must have: the run's announced one."""
        return self.run.chunk_coordinates

    def check_assignment(self, block: int, *, max_blocks: int | None) -> None:
        """Raise PrivacyError when a session for ``block`` is beyond what this site takes (default: never)."""
        return None

    def dimension(self, block: int) -> int:
        """Return the coordinates of block ``block``'s input vector (default: one per weight)."""
        return VoteLayout.for_block(self.inputs.model, block).dimension

    @abc.abstractmethod
    def vector(self, block: int) -> np.ndarray:
        """Return block ``block``'s input vector (the same object again for a repeated session)."""

    def finish(self) -> None:
        """Do what must happen before the site attests (default: nothing; every block is computed)."""
        return None

    def drop(self) -> None:
        """Forget every vector (the site leaves the run)."""
        self.vectors.clear()


class _PackedVotes(ParticipantRecipe):
    """FedPrLLM's storage: randomized keep-votes bit-packed per block, only the block in session unpacked."""

    recipe = Recipe.FEDPRLLM

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        super().__init__(run, inputs, published=published)
        self._unpacked: tuple[int, np.ndarray] | None = None

    @classmethod
    def admission_problems(cls, run: RunParameters, *, max_blocks: int | None) -> list[str]:
        if max_blocks is not None and max_blocks < run.blocks:
            return [
                f"the run's recipe (fedprllm) prunes all {run.blocks} decoder blocks at every site, over this "
                f"site's runtime.max_blocks = {max_blocks}"
            ]
        return []

    def _store(self, block: int, keep_votes: np.ndarray) -> None:
        self.vectors[block] = PackedBits.of(self.inputs.privacy.randomize_block(block, keep_votes))
        self.inputs.on_scored(block)

    def _compute(self, block: int) -> None:
        raise PrivacyError(f"block {block} has no keep-votes at this site")

    def vector(self, block: int) -> np.ndarray:
        if self._unpacked is not None and self._unpacked[0] != block:
            self._unpacked = None  # the former block's session is over: not held while this one is scored
        if block not in self.vectors:
            self._compute(block)
        stored = self.vectors[block]
        assert isinstance(stored, PackedBits)
        if self._unpacked is None or self._unpacked[0] != block:
            self._unpacked = (block, stored.unpack())  # only the block in session is held unpacked
        return self._unpacked[1]

    def drop(self) -> None:
        super().drop()
        self._unpacked = None


class FedPrLLMOneShot(_PackedVotes):
    """Every block's keep-votes from the site's own pruned copy, scored in order as far as a session asks.

    The site's own masks, not the coordinator's, shape its later blocks, so scoring needs nothing from the
    run; it is lazy only so that no session waits for the whole model's calibration, and only one block's
    votes are ever held a byte a weight.
    """

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        super().__init__(run, inputs, published=published)
        self._scoring: Iterator[KeepVotes] | None = one_shot_block_votes(
            inputs.model,
            inputs.samples,
            method=inputs.method,
            pattern=inputs.pattern,
            device=inputs.device,
            aggregator=inputs.aggregator,
            block_pattern=inputs.pattern_of,
        )
        self._scored = 0

    def _compute(self, block: int) -> None:
        if not 0 <= block < self.run.blocks:
            raise PrivacyError(f"block {block} is outside the run's {self.run.blocks} blocks")
        if block < self._scored:
            raise PrivacyError(f"block {block}'s keep-votes were dropped; a block is never scored twice")
        # Blocks are scored in order, each randomized right after its own calibration release (the
        # ledger interleaves them as the iterative recipe's does: the statement lists the events in the
        # order they happened, and the report checks it against the ledger event by event).
        while self._scored <= block:
            assert self._scoring is not None
            votes = next(self._scoring, None)
            if votes is None:  # pragma: no cover - the block count was checked at join
                raise PrivacyError(f"the model ended before block {self._scored}")
            scored = self._scored
            self._scored += 1
            layout = VoteLayout.for_block(self.inputs.model, scored)
            self._store(scored, layout.flatten(votes, dtype=torch.bool).numpy())
        if self._scored == self.run.blocks and self._scoring is not None:
            # Free the calibration activations the scoring held between blocks.
            self._scoring = None

    def finish(self) -> None:
        # Score every block (and so record every DP release and randomization) before attesting: a block
        # whose session this site missed, or that no session asked for yet, is scored now.
        if self._scored < self.run.blocks:
            self._compute(self.run.blocks - 1)


class FedPrLLMIterative(_PackedVotes):
    """Keep-votes block by block, each block scored on the global masks of the blocks before it."""

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        super().__init__(run, inputs, published=published)
        self._scoring: Generator[KeepVotes, dict[str, torch.Tensor], None] = iterative_votes(
            inputs.model,
            inputs.samples,
            method=inputs.method,
            pattern=inputs.pattern,
            device=inputs.device,
            aggregator=inputs.aggregator,
            block_pattern=inputs.pattern_of,
        )

    def _compute(self, block: int) -> None:
        while block not in self.vectors:
            scored = len(self.vectors)
            # The first block needs no mask; every later one is scored on its predecessor's global mask.
            votes = (
                next(self._scoring) if scored == 0 else self._scoring.send(self.published.mask(scored - 1))
            )
            layout = VoteLayout.for_block(self.inputs.model, scored)
            self._store(scored, layout.flatten(votes, dtype=torch.bool).numpy())

    def finish(self) -> None:
        # Score every block (and so record every DP release) before attesting; a block whose session
        # this participant missed is still scored with the global mask.
        self.vector(self.run.blocks - 1)


class FedSpaLLM(ParticipantRecipe):
    """SparseGPT on the assigned blocks; each vector packs a keep-vote and a weight update per weight."""

    recipe = Recipe.FEDSPALLM
    max_bit_width = WIDE_MAX_BIT_WIDTH

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        super().__init__(run, inputs, published=published)
        self.codec = VoteValueCodec(participants=run.participants)
        self.pruner = AssignedBlockPruner(
            inputs.model,
            inputs.samples,
            pattern=inputs.pattern,
            device=inputs.device,
            aggregator=inputs.aggregator,
        )

    @staticmethod
    def max_input(participants: int) -> int:
        return VoteValueCodec(participants=participants).max_input

    def chunk_coordinates(self, *, participants: int, max_input: int) -> int:
        # The wide ring takes the most coordinates that fit one chunk's payload at the session's bit width.
        return session_chunk_coordinates(
            ring_bit_width(participants, max_input), limit=self.run.chunk_coordinates
        )

    def check_assignment(self, block: int, *, max_blocks: int | None) -> None:
        """Refuse (PrivacyError) a session past ``runtime.max_blocks``."""
        pruned = len(self.pruner.pruned)
        if max_blocks is not None and block not in self.vectors and pruned >= max_blocks:
            raise PrivacyError(
                f"block {block} would be block {pruned + 1} this participant prunes, over "
                f"runtime.max_blocks = {max_blocks}"
            )

    def vector(self, block: int) -> np.ndarray:
        if block not in self.vectors:
            base = self._base_weights(block)  # before prune() overwrites them in place
            self.vectors[block] = self._encode(block, self.pruner.prune(block), base)
            self.inputs.on_scored(block)
            # Blocks run in order and a later block's session starts only once the earlier ones are final,
            # so their vectors (8 bytes a weight here) are never sent again: free them.
            for done in [b for b in self.vectors if b < block]:
                del self.vectors[done]
        stored = self.vectors[block]
        assert isinstance(stored, np.ndarray)
        return stored

    def _base_weights(self, block: int) -> dict[str, torch.Tensor]:
        """Return a CPU copy of block ``block``'s prunable weights as they are now (base until it is pruned)."""
        return {
            qualified_name(i, name): sub.weight().detach().to("cpu", copy=True)
            for i, name, sub in iter_prunable(self.inputs.model)
            if i == block
        }

    def _encode(
        self, block: int, decisions: dict[str, LocalDecision], base: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """Return block ``block``'s vote-and-update inputs: each randomized keep bit with its weight update."""
        layout = VoteLayout.for_block(self.inputs.model, block)
        keep = layout.flatten({name: d.keep_votes for name, d in decisions.items()}, dtype=torch.bool)
        bits = self.inputs.privacy.randomize_block(block, keep.numpy())
        inputs, clipped = encode_votes_and_updates(self.codec, layout, bits, decisions, base)
        self.clipped_updates += clipped
        if clipped:
            logger.warning(
                "block %d: %d weight updates exceeded the public bound (%g x max |W0| of their matrix) and "
                "were clipped to it",
                block,
                clipped,
                UPDATE_RANGE_FACTOR,
            )
        return inputs


class StatisticsIterative(ParticipantRecipe):
    """Each block's calibration statistics, computed on the global model of the blocks before it.

    The vector of a block is, matrix after matrix in the block's layout order, the site's released
    statistic as :class:`privacy.secagg.fixed_point.StatisticCodec` lanes: for Wanda and RIA the sum of
    x_j^2 per input column, for SparseGPT the upper triangle of X^T X (signed); exact, or the record-level
    DP release when the run has it. Before the next block's statistics the site applies the block's global
    mask, and under SparseGPT first sets the block's weights to the ones the coordinator reconstructed
    (fetched and checked by the caller's ``block_weights``). Nothing is randomized: the statistics recipe
    sends no keep-votes.
    """

    recipe = Recipe.STATISTICS
    max_bit_width = WIDE_MAX_BIT_WIDTH

    def __init__(self, run: RunParameters, inputs: SiteInputs, *, published: Published) -> None:
        super().__init__(run, inputs, published=published)
        self.kind = inputs.method.statistic
        self.reconstructs = self.kind is StatisticKind.GRAM
        """Whether the coordinator reconstructs each block's weights (SparseGPT), which the site then sets."""
        self.codec = StatisticCodec(signed=self.reconstructs)
        self._scoring = self._statistics()

    @property
    def reads_weights(self) -> bool:
        return self.reconstructs

    @staticmethod
    def max_input(participants: int) -> int:
        return StatisticCodec().max_input

    @classmethod
    def admission_problems(cls, run: RunParameters, *, max_blocks: int | None) -> list[str]:
        if max_blocks is not None and max_blocks < run.blocks:
            return [
                f"the run's recipe (stats) computes statistics of all {run.blocks} decoder blocks at every "
                f"site, over this site's runtime.max_blocks = {max_blocks}"
            ]
        return []

    def chunk_coordinates(self, *, participants: int, max_input: int) -> int:
        return session_chunk_coordinates(
            ring_bit_width(participants, max_input), limit=self.run.chunk_coordinates
        )

    def dimension(self, block: int) -> int:
        layout = VoteLayout.for_block(self.inputs.model, block)
        return block_statistics_dimension(layout, self.kind, lanes=self.codec.lanes)

    def _statistics(
        self,
    ) -> Generator[
        dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None], None
    ]:
        """Yield one block's statistics at a time; ``send`` the block's global mask (True = pruned) and,
        under SparseGPT, its final weights back."""
        inputs = self.inputs
        check_pattern_fits(inputs.model, inputs.pattern)
        for index, sublayers, statistics in scored_blocks(
            inputs.model,
            inputs.samples,
            method=inputs.method,
            device=inputs.device,
            aggregator=inputs.aggregator,
        ):
            released = {}
            for name in sublayers:
                statistic = statistics[name]
                assert statistic is not None  # wanda, ria and sparsegpt read data (recipe_conflicts)
                released[qualified_name(index, name)] = statistic.detach().to("cpu", torch.float64)
            global_masks, weights = yield released
            for name, sublayer in sublayers.items():
                key = qualified_name(index, name)
                if weights is not None:
                    sublayer.set_weight(weights[key])
                sublayer.apply_pruned(global_masks[key])

    def vector(self, block: int) -> np.ndarray:
        while block not in self.vectors:
            computed = len(self.vectors)
            # The first block needs no mask; every later one is computed on its predecessor's global model.
            if computed == 0:
                statistics = next(self._scoring)
            else:
                previous = computed - 1
                masks = self.published.mask(previous)
                weights = self.published.weights(previous) if self.reconstructs else None
                statistics = self._scoring.send((masks, weights))
            layout = VoteLayout.for_block(self.inputs.model, computed)
            self.vectors[computed] = encode_block_statistics(self.codec, self.kind, layout, statistics)
            self.inputs.on_scored(computed)
        stored = self.vectors[block]
        assert isinstance(stored, np.ndarray)
        return stored

    def finish(self) -> None:
        # Compute every block (and so record every DP release) before attesting.
        self.vector(self.run.blocks - 1)


class OwlAllocationStatistics:
    """An OWL run's allocation phase at a site: each block's column statistics of the dense model.

    One calibration pass through the model as loaded (the allocation phase ends before any block is
    pruned), a block at a time as its allocation session asks; each block's statistic (sum of x_j^2 per
    input column of every matrix) is released exactly as the statistics recipe releases it: the run's
    record-level DP aggregator (the same object as the block's own releases, so its cap counts both; its
    ledger events carry round ``OWL_ALLOCATION_ROUND``) or exact sums without it, in ``StatisticCodec``
    lanes. Once the block sessions begin (``close``) no allocation session is taken any more.
    """

    max_bit_width: int = WIDE_MAX_BIT_WIDTH

    def __init__(
        self,
        run: RunParameters,
        *,
        model: nn.Module,
        samples: Any,
        device: torch.device,
        aggregator: StatisticAggregator | None,
    ) -> None:
        if samples is None:
            raise PrivacyError("the OWL allocation needs calibration data")
        self.run = run
        self.model = model
        self.codec = StatisticCodec()
        self.vectors: dict[int, np.ndarray] = {}
        self._aggregator = aggregator
        self._pass: Iterator[dict[str, torch.Tensor]] | None = self._statistics(samples, device)
        self._computed = 0
        self.closed = False

    def max_input(self) -> int:
        """Return a statistic lane's largest value."""
        return self.codec.max_input

    def chunk_coordinates(self, *, participants: int, max_input: int) -> int:
        return session_chunk_coordinates(
            ring_bit_width(participants, max_input), limit=self.run.chunk_coordinates
        )

    def dimension(self, block: int) -> int:
        layout = VoteLayout.for_block(self.model, block)
        return block_statistics_dimension(layout, StatisticKind.COLUMN_SQUARES, lanes=self.codec.lanes)

    def _statistics(self, samples: Any, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        aggregator = self._aggregator or exact_aggregator()
        for step in BlockRunner(self.model, samples, device=device):
            release = (
                aggregator.releasing_round(OWL_ALLOCATION_ROUND)
                if isinstance(aggregator, DPStatisticAggregator)
                else contextlib.nullcontext()
            )
            with release:
                statistics = step.collect(StatisticKind.COLUMN_SQUARES, aggregator)
            yield {
                qualified_name(step.index, name): statistic.detach().to("cpu", torch.float64)
                for name, statistic in statistics.items()
            }

    def vector(self, block: int) -> np.ndarray:
        """Return block ``block``'s allocation vector (the same object again for a repeated session)."""
        if self.closed:
            raise PrivacyError("the allocation phase is over: the site's model is being pruned")
        if not 0 <= block < self.run.blocks:
            raise PrivacyError(f"block {block} is outside the run's {self.run.blocks} blocks")
        while block not in self.vectors:
            if block < self._computed:
                raise PrivacyError(
                    f"block {block}'s allocation statistics were dropped; never computed twice"
                )
            assert self._pass is not None
            statistics = next(self._pass, None)
            if statistics is None:  # pragma: no cover - the block count was checked at join
                raise PrivacyError(f"the model ended before block {self._computed}")
            layout = VoteLayout.for_block(self.model, self._computed)
            self.vectors[self._computed] = encode_block_statistics(
                self.codec, StatisticKind.COLUMN_SQUARES, layout, statistics
            )
            # A block's allocation session is over once a later one starts: its vector is never sent again.
            for done in [b for b in self.vectors if b < self._computed]:
                del self.vectors[done]
            self._computed += 1
        return self.vectors[block]

    def close(self) -> None:
        """End the allocation phase here: free the calibration pass and the vectors, take no more sessions."""
        self.closed = True
        self._pass = None
        self.vectors.clear()


_PLUGINS: dict[tuple[Recipe, Mode], type[ParticipantRecipe]] = {
    (Recipe.FEDPRLLM, Mode.ONE_SHOT): FedPrLLMOneShot,
    (Recipe.FEDPRLLM, Mode.ITERATIVE): FedPrLLMIterative,
    (Recipe.FEDSPALLM, Mode.ONE_SHOT): FedSpaLLM,
    (Recipe.STATISTICS, Mode.ITERATIVE): StatisticsIterative,
}


def plugin_for(run: RunParameters) -> type[ParticipantRecipe]:
    """Return the participant's recipe class of ``run``; RunRefusedError when its settings do not fit it."""
    problems = recipe_conflicts(
        run.recipe, method=run.method, mode=run.mode, weight_scaling=run.weight_scaling
    )
    if run.recipe is Recipe.STATISTICS and run.privacy.randomized_response:
        problems.append("no randomized response (it sends no keep-votes to randomize)")
    if problems:
        raise RunRefusedError(
            f"the run's recipe is {run.recipe.value}, which needs {', '.join(problems)}; the coordinator "
            "announced otherwise"
        )
    try:
        return _PLUGINS[(run.recipe, run.mode)]
    except KeyError:  # pragma: no cover - recipe_conflicts refuses every pair missing here
        raise RunRefusedError(
            f"no participant recipe for {run.recipe.value} in mode {run.mode.value}"
        ) from None


def recipe_max_input(run: RunParameters) -> int:
    """Return the largest value one participant adds per coordinate under the run's recipe and n."""
    return plugin_for(run).max_input(run.participants)


__all__ = [
    "FedPrLLMIterative",
    "FedPrLLMOneShot",
    "FedSpaLLM",
    "BlockPattern",
    "Published",
    "PublishedWeights",
    "GlobalMask",
    "OwlAllocationStatistics",
    "ParticipantRecipe",
    "SessionFrame",
    "SiteInputs",
    "StatisticsIterative",
    "plugin_for",
    "recipe_max_input",
]
