"""A finished run's outputs: the signed report first, then the checkpoint and ``sparsity.json``.

The report's ledger holds the coordinator's secure-aggregation events (an OWL run's allocation sessions
first, then each block's) and the sites' signed statements; ``sparsity.json`` also records an OWL run's
allocation (``allocation``, as ``OwlAllocation.as_dict`` writes it).

The report is built and checked before the model exists, so no model is written without its report. A
stored statement the report cannot be built with is left out, with a warning; when none can be built alone
the run's own parameters are at fault and nothing is written. Each block's weights come from its recipe
(``coordinator.recipes``: the base weights, scaled ones, or the averaged ones kept with the block), then its
global mask, read back from the run's state and checked against its recorded digest, is applied.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator.config import OutputSection, PrivacySection
from coordinator.recipes import CoordinatorRecipe
from coordinator.report import build_run_report, write_run_report
from coordinator.state import RunState
from privacy.errors import PrivacyError
from privacy.report import PrivacyReport
from privacy.signing import ParticipantStatement
from pruning.adapters import iter_prunable, qualified_name
from pruning.layout import VoteLayout
from pruning.model_io import prepare_output_dir, save_model
from pruning.sparsity import sparsity_table, write_sparsity_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReportParameters:
    """What a run's report states besides its statements and events: fixed for the run."""

    run_id: str
    threshold: int
    colluders: int
    privacy: PrivacySection
    transport: str
    """What the threat model says the roles talked over."""


@dataclasses.dataclass(frozen=True)
class WrittenOutputs:
    """Where a run's outputs went."""

    output: Path
    report: Path


class OutputWriter:
    """Writes one run's outputs from its state: the report, the pruned checkpoint, ``sparsity.json``."""

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Any,
        blocks: int,
        state: RunState,
        recipe: CoordinatorRecipe,
        report: ReportParameters,
        output: OutputSection,
    ) -> None:
        """``model`` is the base model; writing prunes it in place (the run writes its outputs once)."""
        self.model = model
        self.tokenizer = tokenizer
        self.blocks = blocks
        self.state = state
        self.recipe = recipe
        self.parameters = report
        self.output = output

    def build_report(self, statements: Sequence[ParticipantStatement], *, participants: int) -> PrivacyReport:
        """Return the checked, unsigned report of the completed blocks with ``statements``."""
        completed = self.state.completed_blocks()
        allocated = self.state.allocation_blocks()
        parameters, privacy = self.parameters, self.parameters.privacy
        return build_run_report(
            run_id=parameters.run_id,
            participants=participants,
            threshold=parameters.threshold,
            colluders=parameters.colluders,
            delta=privacy.delta,
            accountant_tolerance=privacy.accountant_tolerance,
            record_level_dp=privacy.record_level_dp,
            statements=statements,
            coordinator_events=[
                *(allocated[b].event for b in sorted(allocated)),
                *(completed[b].event for b in sorted(completed)),
            ],
            transport=parameters.transport,
            recipe=self.recipe.recipe.value,
        )

    def final_report(self, statements: Sequence[ParticipantStatement], *, participants: int) -> PrivacyReport:
        """Return the run's report; a stored statement it cannot be built with is left out, with a warning.

        When no statement can be built alone, the run's own parameters are at fault (say, an accountant
        tolerance its planned noise does not meet): that error is raised and no model is written.
        """
        try:
            return self.build_report(statements, participants=participants)
        except (PrivacyError, ValueError, ArithmeticError) as error:
            failure = error
        kept: list[ParticipantStatement] = []
        left_out: list[tuple[str, Exception]] = []
        for statement in statements:
            try:
                self.build_report([statement], participants=participants)
            except (PrivacyError, ValueError, ArithmeticError) as alone:
                left_out.append((statement.participant, alone))
                continue
            kept.append(statement)
        if not kept or not left_out:
            raise failure
        for name, reason in left_out:
            logger.warning("the stored statement of %s is left out of the report: %s", name, reason)
        return self.build_report(kept, participants=participants)

    def write(self, statements: Sequence[ParticipantStatement], *, participants: int) -> WrittenOutputs:
        """Return where the outputs went after writing them and recording in the state that they are written."""
        out = prepare_output_dir(self.output.directory, overwrite=True)
        completed = self.state.completed_blocks()
        report = self.final_report(statements, participants=participants)
        # The report is built and checked before the model exists: no output without its report.
        report_path = write_run_report(report, signing_key=self.output.signing_key, directory=out)
        for block in range(self.blocks):
            self.apply_block(block, completed[block].contributors)
        save_model(self.model, self.tokenizer, out)
        table = sparsity_table(self.model)
        allocation = self.state.owl_allocation()
        if allocation is not None:
            table["allocation"] = allocation
        write_sparsity_json(table, out / "sparsity.json")
        self.state.mark_finished()
        return WrittenOutputs(output=out, report=report_path)

    def apply_block(self, block: int, contributors: int) -> None:
        """Set block ``block``'s weights as its recipe says, then apply its stored global mask."""
        layout = VoteLayout.for_block(self.model, block)
        bits = np.unpackbits(
            np.frombuffer(self.state.packed_mask(block), dtype=np.uint8),
            bitorder="little",
            count=layout.dimension,
        )
        masks = layout.unflatten(torch.from_numpy(bits.astype(np.bool_)))
        sublayers = {
            qualified_name(index, name): sublayer
            for index, name, sublayer in iter_prunable(self.model)
            if index == block
        }
        self.recipe.set_block_weights(self.state, block, layout, sublayers, contributors=contributors)
        for key, sublayer in sublayers.items():
            sublayer.apply_pruned(masks[key])


__all__ = ["OutputWriter", "ReportParameters", "WrittenOutputs"]
