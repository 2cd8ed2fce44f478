"""What the coordinator does differently per recipe: one object per recipe, chosen in one place.

A recipe decides what a block's secure sum carries (the session's ``max_input``, ring and chunking), what
the summed vector means in the ledger, how a block's sums are decoded into keep-votes and global masks,
what is kept durably for the output (the counts under weight scaling, the averaged weights under
FedSpaLLM), how a block's weights are set when the model is written, and which participants prune each
block. ``coordinator.run.CoordinatorRun`` asks its recipe and never which recipe it runs: another recipe
is another class here and one entry in :func:`coordinator_recipe`.

- :class:`FedPrLLM`: keep-votes only, one per weight, each in {0, 1}; the global model is the base weights
  under the voted mask. :class:`ScaledFedPrLLM` also keeps the counts and scales each kept weight by
  ``keep_votes / n`` (``run.weight_scaling``).
- :class:`Statistics`: each participant's calibration column statistics (sum of x_j^2 per input column of
  every matrix) as 64-bit fixed point in two 32-bit lanes (``privacy.secagg.fixed_point.StatisticCodec``);
  the coordinator scores the block's base weights from the summed statistics with Wanda or RIA and selects
  per output row, as a centralized run does. :class:`SparseGPTStatistics` sums each matrix's X^T X (its
  upper triangle, signed fixed point) instead, runs SparseGPT on the base weights with the summed Hessian
  and keeps the reconstructed weights, which the sites fetch before the next block.
- :class:`FedSpaLLM`: each participant's keep-vote and fixed-point SparseGPT weight update packed together
  in one wide ring (``privacy.secagg.fixed_point.VoteValueCodec``); the kept weights are the l0-norm
  average of the keep-voters' weights (with the randomized-response correction of the divisor), and each
  block is pruned by the participants assigned to it within their declared ``max_blocks``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import ClassVar, Protocol

import numpy as np
import torch

from coordinator.aggregation import (
    ComparisonGroup,
    averaged_weight,
    check_counts,
    decode_votes_and_updates,
    global_mask,
    scaled_weight,
)
from coordinator.assignment import AssignmentError, assign_blocks
from coordinator.config import PrivacySection, RunSection
from coordinator.errors import RunClosedError
from coordinator.state import RunState
from privacy.randomized_response import RandomizedResponse
from privacy.report import SummedInputs
from privacy.secagg.fixed_point import StatisticCodec, VoteValueCodec
from privacy.secagg.parameters import MAX_BIT_WIDTH, WIDE_MAX_BIT_WIDTH, ring_bit_width
from proto.convert import session_chunk_coordinates
from pruning.adapters import LinearSublayer
from pruning.errors import PruningInputError
from pruning.layout import VoteLayout
from pruning.masks import SparsityPattern, select_per_row
from pruning.methods import Method, method_scores
from pruning.recipes import Recipe
from pruning.sparsegpt import sparsegpt_prune
from pruning.statistics import (
    StatisticKind,
    block_statistics_dimension,
    decode_block_statistics,
    iter_block_statistics,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SessionShape:
    """What a block's secure-aggregation session takes from the recipe: its input range and its ring."""

    dimension: int
    """Coordinates of the block's summed vector."""
    max_input: int
    """The largest value one participant's coordinate may hold."""
    chunk_coordinates: int
    """Coordinates per masked-input chunk."""
    max_bit_width: int
    """The widest ring the session may use."""


@dataclasses.dataclass(frozen=True)
class AggregatedBlock:
    """A block's decoded sums and what the coordinator selected from them."""

    keep_votes: dict[str, torch.Tensor]
    """Summed keep-votes per matrix (int32, by qualified name): what the masks were selected from (under the
    statistics recipe, which sums no votes, each weight's keep bit under its mask)."""
    masks: dict[str, torch.Tensor]
    """Global masks per matrix (True = pruned)."""
    weights: bytes | None = None
    """The block's final weights (safetensors) to keep durably with its mask; None when the output
    derives them from the base weights."""


class CoordinatorRecipe(Protocol):
    """The coordinator's side of a recipe (see the module docstring)."""

    @property
    def recipe(self) -> Recipe:
        """Return which recipe this is (the report names it)."""
        ...

    @property
    def summed(self) -> SummedInputs:
        """Return what a block's summed vector holds, as the block's ledger event says."""
        ...

    @property
    def max_input(self) -> int:
        """Return the largest value a participant's coordinate may hold (announced at Join)."""
        ...

    @property
    def publishes_weights(self) -> bool:
        """Return whether sites fetch each finished block's final weights (``BlockWeights``): only when
        they compute the next block's inputs on weights the coordinator reconstructed."""
        ...

    def dimension(self, layout: VoteLayout) -> int:
        """Return the coordinates of a block's summed vector (the block's weights, or its statistics)."""
        ...

    def session_shape(self, members: int, layout: VoteLayout, *, chunk_coordinates: int) -> SessionShape:
        """Return the size, input range and ring of a session of ``members`` on the block of ``layout``
        (``chunk_coordinates``: the run's)."""
        ...

    def event_participants(self, *, session: int, run: int) -> int:
        """Return the participant count a block's ledger event records (its session's or the run's)."""
        ...

    def assign_blocks(
        self, state: RunState, budgets: Mapping[str, int | None], *, blocks: int, threshold: int
    ) -> dict[int, tuple[str, ...]] | None:
        """Return who prunes each block, fixed durably in ``state`` once; None: every participant, every block.

        ``budgets`` are the active participants' declared ``max_blocks`` (None: no limit), sorted by name.
        """
        ...

    def aggregate(
        self,
        layout: VoteLayout,
        sums: np.ndarray,
        base_weights: Mapping[str, torch.Tensor],
        *,
        contributors: int,
        pattern: SparsityPattern,
    ) -> AggregatedBlock:
        """Return a block's keep-votes and global masks (and final weights) decoded from its sums.

        ``pattern`` is the block's own (its OWL sparsity in an OWL run, else the run's). Raises ValueError
        naming the matrix when a sum is not one that ``contributors`` inputs make.
        """
        ...

    def keep_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Make durable what the output needs of ``sums`` (before the block is recorded complete)."""
        ...

    def release_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Remove what is no longer needed of ``sums`` (after the block is recorded complete)."""
        ...

    def set_block_weights(
        self,
        state: RunState,
        block: int,
        layout: VoteLayout,
        sublayers: Mapping[str, LinearSublayer],
        *,
        contributors: int,
    ) -> None:
        """Set the weights of a finished block's matrices before its global mask is applied to them."""
        ...


class _MaskOnlyOutput:
    """Keep no sums past a block (its mask, and FedSpaLLM's final weights, are kept with the block) and
    leave the base weights at output time; a recipe that needs more overrides these."""

    publishes_weights: ClassVar[bool] = False

    def keep_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Keep nothing: the mask is all the output needs."""

    def release_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Delete the block's sums file."""
        state.counts_file(block, sums.dtype).unlink(missing_ok=True)

    def set_block_weights(
        self,
        state: RunState,
        block: int,
        layout: VoteLayout,
        sublayers: Mapping[str, LinearSublayer],
        *,
        contributors: int,
    ) -> None:
        """Leave the base weights."""


class _StoredWeightsOutput:
    """The block's final weights are kept with it (``AggregatedBlock.weights``) and set at output time."""

    def set_block_weights(
        self,
        state: RunState,
        block: int,
        layout: VoteLayout,
        sublayers: Mapping[str, LinearSublayer],
        *,
        contributors: int,
    ) -> None:
        """Set the final weights kept with the block (checked against their recorded digest)."""
        from safetensors.torch import load as load_safetensors

        final = load_safetensors(state.block_weights(block))
        for key, sublayer in sublayers.items():
            sublayer.set_weight(final[key].to(device=sublayer.weight().device))


class _EveryoneEveryBlock:
    """Every participant takes part in every block: no assignment, and a block's event counts the run."""

    def event_participants(self, *, session: int, run: int) -> int:
        """Return the run's participants: every block is everyone's."""
        return run

    def assign_blocks(
        self, state: RunState, budgets: Mapping[str, int | None], *, blocks: int, threshold: int
    ) -> dict[int, tuple[str, ...]] | None:
        """Return None: every participant takes part in every block."""
        return None


@dataclasses.dataclass(frozen=True)
class FedPrLLM(_EveryoneEveryBlock, _MaskOnlyOutput):
    """Keep-votes only; the global model is the base weights under the voted mask."""

    pattern: SparsityPattern
    group: ComparisonGroup
    recipe: Recipe = dataclasses.field(default=Recipe.FEDPRLLM, init=False)
    summed: SummedInputs = dataclasses.field(default=SummedInputs.KEEP_VOTES, init=False)

    @property
    def max_input(self) -> int:
        """Return 1: a keep-vote is a bit."""
        return 1

    def dimension(self, layout: VoteLayout) -> int:
        """Return one keep-vote per weight."""
        return layout.dimension

    def session_shape(self, members: int, layout: VoteLayout, *, chunk_coordinates: int) -> SessionShape:
        """Return bits summed in the narrow ring, in the run's chunks."""
        return SessionShape(
            dimension=layout.dimension,
            max_input=1,
            chunk_coordinates=chunk_coordinates,
            max_bit_width=MAX_BIT_WIDTH,
        )

    def aggregate(
        self,
        layout: VoteLayout,
        sums: np.ndarray,
        base_weights: Mapping[str, torch.Tensor],
        *,
        contributors: int,
        pattern: SparsityPattern,
    ) -> AggregatedBlock:
        """Return the counts as keep-votes and the masks selected from them."""
        votes = layout.unflatten(torch.from_numpy(np.asarray(sums[: layout.dimension], dtype=np.int32)))
        masks = {}
        for name, keep_votes in votes.items():
            check_counts(keep_votes, contributors, name=name)
            masks[name] = global_mask(keep_votes, base_weights[name], pattern=pattern, group=self.group)
        return AggregatedBlock(keep_votes=votes, masks=masks)


@dataclasses.dataclass(frozen=True)
class ScaledFedPrLLM(FedPrLLM):
    """FedPrLLM whose kept weights are scaled by ``keep_votes / n`` (the counts are kept for the output)."""

    def keep_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Flush and fsync the counts: they are read back when the model is written, possibly after a restart."""
        if isinstance(sums, np.memmap):
            sums.flush()
            with open(state.counts_file(block), "rb+") as handle:
                os.fsync(handle.fileno())

    def release_sums(self, state: RunState, block: int, sums: np.ndarray) -> None:
        """Keep the counts file (read by :meth:`set_block_weights`)."""

    def set_block_weights(
        self,
        state: RunState,
        block: int,
        layout: VoteLayout,
        sublayers: Mapping[str, LinearSublayer],
        *,
        contributors: int,
    ) -> None:
        """Scale each weight by its keep-votes over the block's contributors."""
        raw = np.fromfile(state.counts_file(block), dtype=np.uint16)[: layout.dimension]
        counts = layout.unflatten(torch.from_numpy(raw.astype(np.int32)))
        for key, sublayer in sublayers.items():
            sublayer.set_weight(scaled_weight(sublayer.weight(), counts[key], contributors))


@dataclasses.dataclass(frozen=True)
class FedSpaLLM(_StoredWeightsOutput, _MaskOnlyOutput):
    """SparseGPT keep-votes and weight updates summed together; l0-norm averaged kept weights."""

    pattern: SparsityPattern
    group: ComparisonGroup
    codec: VoteValueCodec
    flip_probability: float
    """Randomized response's flip probability of a keep-vote (0: none), which the divisor corrects for."""
    recipe: Recipe = dataclasses.field(default=Recipe.FEDSPALLM, init=False)
    summed: SummedInputs = dataclasses.field(default=SummedInputs.KEEP_VOTES_AND_WEIGHT_UPDATES, init=False)

    @property
    def max_input(self) -> int:
        """Return the packed vote-and-update's largest value."""
        return self.codec.max_input

    def dimension(self, layout: VoteLayout) -> int:
        """Return one packed vote and update per weight."""
        return layout.dimension

    def session_shape(self, members: int, layout: VoteLayout, *, chunk_coordinates: int) -> SessionShape:
        """Return the wide ring of ``members`` packed inputs, in chunks that fit a message at its width."""
        width = ring_bit_width(members, self.codec.max_input)
        return SessionShape(
            dimension=layout.dimension,
            max_input=self.codec.max_input,
            chunk_coordinates=session_chunk_coordinates(width, limit=chunk_coordinates),
            max_bit_width=WIDE_MAX_BIT_WIDTH,
        )

    def event_participants(self, *, session: int, run: int) -> int:
        """Return the block's own subset: the event names its survivors, so the report can list every site
        whose input was summed, statement or not."""
        return session

    def assign_blocks(
        self, state: RunState, budgets: Mapping[str, int | None], *, blocks: int, threshold: int
    ) -> dict[int, tuple[str, ...]] | None:
        """Return the assignment stored in ``state``, or make it from ``budgets`` and store it first."""
        stored = state.assignment()
        if stored is None:
            # By name, not by join order: the same budgets always give the same assignment.
            names = list(budgets)
            try:
                assignment = assign_blocks(
                    [budgets[name] or blocks for name in names],  # None: no limit
                    blocks=blocks,
                    threshold=threshold,
                )
            except AssignmentError as error:
                raise RunClosedError(
                    f"no block assignment fits the participants' max_blocks ({dict(budgets)}): {error}"
                ) from None
            stored = {
                "budgets": dict(budgets),
                "blocks": [[names[i] for i in block] for block in assignment.blocks],
            }
            state.save_assignment(stored)
        assigned = stored["blocks"]
        assert isinstance(assigned, list)
        result = {index: tuple(names) for index, names in enumerate(assigned)}
        coverage = sorted({len(names) for names in result.values()})
        logger.info(
            "block assignment: %d blocks, %s participants per block (max_blocks %s)",
            blocks,
            "/".join(str(c) for c in coverage),
            stored["budgets"],
        )
        return result

    def aggregate(
        self,
        layout: VoteLayout,
        sums: np.ndarray,
        base_weights: Mapping[str, torch.Tensor],
        *,
        contributors: int,
        pattern: SparsityPattern,
    ) -> AggregatedBlock:
        """Return the decoded keep-votes, the masks selected from them and the averaged kept weights."""
        from safetensors.torch import save as save_safetensors

        decoded = decode_votes_and_updates(
            self.codec,
            layout,
            sums,
            base_weights,
            contributors=contributors,
            flip_probability=self.flip_probability,
        )
        keep_votes, masks, final = {}, {}, {}
        for name, matrix in decoded.items():
            base = base_weights[name]
            keep_votes[name] = matrix.keep_votes
            masks[name] = global_mask(matrix.keep_votes, base, pattern=pattern, group=self.group)
            final[name] = averaged_weight(base, masks[name], matrix.update_sums, matrix.divisor).contiguous()
        return AggregatedBlock(keep_votes=keep_votes, masks=masks, weights=save_safetensors(final))


def score_and_select(
    method: Method, weight: torch.Tensor, statistic: torch.Tensor, pattern: SparsityPattern
) -> torch.Tensor:
    """Return the mask (True = pruned) a centralized run of ``method`` selects from ``statistic``."""
    return select_per_row(method_scores(method, weight, statistic), pattern)


@dataclasses.dataclass(frozen=True)
class Statistics(_EveryoneEveryBlock, _MaskOnlyOutput):
    """Calibration statistics summed over the sites; each block pruned from the sums with Wanda or RIA
    (column statistics) or SparseGPT (Gram matrices, see :class:`SparseGPTStatistics`)."""

    pattern: SparsityPattern
    method: Method
    recipe: Recipe = dataclasses.field(default=Recipe.STATISTICS, init=False)
    summed: SummedInputs = dataclasses.field(default=SummedInputs.COLUMN_STATISTICS, init=False)

    @property
    def kind(self) -> StatisticKind:
        """Return the statistic the method prunes from."""
        return self.method.statistic

    @property
    def codec(self) -> StatisticCodec:
        """Return the fixed-point encoding of the statistic (signed for a Gram matrix)."""
        return StatisticCodec(signed=self.kind is StatisticKind.GRAM)

    @property
    def max_input(self) -> int:
        """Return a 32-bit lane's largest value."""
        return self.codec.max_input

    def dimension(self, layout: VoteLayout) -> int:
        """Return two 32-bit lanes per number of each of the block's matrices' statistics."""
        return block_statistics_dimension(layout, self.kind, lanes=self.codec.lanes)

    def session_shape(self, members: int, layout: VoteLayout, *, chunk_coordinates: int) -> SessionShape:
        """Return the wide ring of ``members`` lanes, in chunks that fit a message at its width."""
        width = ring_bit_width(members, self.codec.max_input)
        return SessionShape(
            dimension=self.dimension(layout),
            max_input=self.codec.max_input,
            chunk_coordinates=session_chunk_coordinates(width, limit=chunk_coordinates),
            max_bit_width=WIDE_MAX_BIT_WIDTH,
        )

    def statistics(
        self, layout: VoteLayout, sums: np.ndarray, *, contributors: int
    ) -> dict[str, torch.Tensor]:
        """Return each matrix's summed statistic (float64, by qualified name) decoded from ``sums``."""
        return decode_block_statistics(self.codec, self.kind, layout, sums, contributors=contributors)

    def aggregate(
        self,
        layout: VoteLayout,
        sums: np.ndarray,
        base_weights: Mapping[str, torch.Tensor],
        *,
        contributors: int,
        pattern: SparsityPattern,
    ) -> AggregatedBlock:
        """Return the masks selected, per output row as in a centralized run, from the summed statistics.

        ``keep_votes`` holds each weight's keep bit (1 = kept) under the selected mask: the sums themselves
        are statistics, not votes.
        """
        masks, keep = {}, {}
        for name, statistic in self.statistics(layout, sums, contributors=contributors).items():
            try:
                decision = score_and_select(self.method, base_weights[name], statistic, pattern)
            except PruningInputError as error:
                raise ValueError(f"{name}: {error}") from None
            masks[name] = decision
            keep[name] = (~decision).to(torch.int32)
        return AggregatedBlock(keep_votes=keep, masks=masks)


@dataclasses.dataclass(frozen=True)
class SparseGPTStatistics(_StoredWeightsOutput, Statistics):
    """The statistics recipe with SparseGPT: the sites' X^T X summed per matrix (its upper triangle, signed
    fixed point); the coordinator runs SparseGPT on each base matrix with the summed Hessian, as a
    centralized run does on the pooled data, and keeps the reconstructed weights with the block. Sites fetch
    them (``BlockWeights``) and compute the next block's statistics on them, so every block's Hessian comes
    from the globally pruned and reconstructed model."""

    summed: SummedInputs = dataclasses.field(default=SummedInputs.GRAM_STATISTICS, init=False)
    publishes_weights: ClassVar[bool] = True

    def aggregate(
        self,
        layout: VoteLayout,
        sums: np.ndarray,
        base_weights: Mapping[str, torch.Tensor],
        *,
        contributors: int,
        pattern: SparsityPattern,
    ) -> AggregatedBlock:
        """Return SparseGPT's masks from the summed Hessians and the reconstructed weights (in the base
        weights' dtype, as the output model holds them)."""
        from safetensors.torch import save as save_safetensors

        masks, keep, final = {}, {}, {}
        hessians = iter_block_statistics(self.codec, self.kind, layout, sums, contributors=contributors)
        for name, hessian in hessians:  # one matrix's Hessian at a time
            base = base_weights[name]
            try:
                decision, weight = sparsegpt_prune(base, hessian, pattern, name=name)
            except PruningInputError as error:
                raise ValueError(f"{name}: {error}") from None
            masks[name] = decision
            keep[name] = (~decision).to(torch.int32)
            final[name] = weight.to(device="cpu", dtype=base.dtype).contiguous()
        return AggregatedBlock(keep_votes=keep, masks=masks, weights=save_safetensors(final))


def coordinator_recipe(run: RunSection, privacy: PrivacySection) -> CoordinatorRecipe:
    """Return the coordinator's side of ``run.recipe`` for this run (the one place a recipe is chosen).

    The FedSpaLLM codec is sized for every listed participant; its divisor's correction needs the
    randomized response of ``privacy``.
    """
    pattern, group = run.sparsity_pattern, run.group
    if run.recipe is Recipe.STATISTICS:
        if run.method is Method.SPARSEGPT:
            return SparseGPTStatistics(pattern=pattern, method=run.method)
        return Statistics(pattern=pattern, method=run.method)
    if run.recipe is Recipe.FEDSPALLM:
        return FedSpaLLM(
            pattern=pattern,
            group=group,
            codec=VoteValueCodec(participants=len(run.participants)),
            flip_probability=(
                RandomizedResponse(epsilon0=privacy.epsilon0).flip_probability
                if privacy.randomized_response
                else 0.0
            ),
        )
    if run.weight_scaling:
        return ScaledFedPrLLM(pattern=pattern, group=group)
    return FedPrLLM(pattern=pattern, group=group)


__all__ = [
    "AggregatedBlock",
    "CoordinatorRecipe",
    "FedPrLLM",
    "FedSpaLLM",
    "ScaledFedPrLLM",
    "SessionShape",
    "SparseGPTStatistics",
    "Statistics",
    "coordinator_recipe",
]
