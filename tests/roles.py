"""Run a federation of in-memory sites through the service's own roles, for tests that build tiny models.

``fedprune.simulate.simulate_service`` needs a model directory (each role loads the model itself); this
saves the test's model once per directory and hands every site's samples over directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from coordinator.config import PrivacySection
from coordinator.events import EventSink
from fedprune.simulate import ServiceSimulationResult, SimulationSettings, privacy_off, simulate_service
from pruning.data import CalibrationSet

_runs = itertools.count()


def run_roles(
    base: nn.Module,
    samples: Sequence[torch.Tensor | CalibrationSet | None],
    *,
    settings: SimulationSettings,
    directory: Path,
    privacy: PrivacySection | None = None,
    threshold: int | None = None,
    keep_local_models: bool = False,
    on_event: EventSink | None = None,
) -> ServiceSimulationResult:
    """Return the roles' run over ``samples`` (one site each), privacy off unless ``privacy`` is given."""
    model_dir = directory / "base-model"
    if not model_dir.exists():
        base.save_pretrained(model_dir)  # type: ignore[operator]
    run = next(_runs)
    return simulate_service(
        model_dir,
        None,
        settings=settings,
        privacy=privacy or privacy_off(),
        threshold=threshold,
        out=directory / f"out-{run}",
        signing_key=directory / "report.key",
        device="cpu",
        participant_samples=samples,
        progress=False,
        state_dir=directory / f"state-{run}",
        keep_local_models=keep_local_models,
        on_event=on_event,
    )
