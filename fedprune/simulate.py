"""One-process federated pruning: the service's own coordinator and participants, no network.

``simulate_service`` runs one ``coordinator.run.CoordinatorRun`` and one ``participant.run.ParticipantRun``
per site over the in-memory transport of ``fedprune.inprocess``: the same per-block secure-aggregation
sessions, randomized response, DP statistics, signed statements and signed report as the service, for both
recipes and both modes. There is no second engine: ``fedprune simulate``, with privacy on or off, and every
benchmark run through it. The privacy of a simulation is the coordinator's own ``[privacy]`` section
(``coordinator.config.PrivacySection``); :func:`privacy_off` is the research setting (no randomized
response, no record-level DP, secure aggregation still on, a report that states no DP guarantee).

A host that re-selects from the recorded sums (another comparison group, weight scaling) reads them from
the coordinator's ``BlockAggregated`` events (``on_event``, or ``ServiceSimulationResult.keep_votes``) and
calls the coordinator's own selection functions (``coordinator.aggregation``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coordinator.aggregation import ComparisonGroup
from coordinator.assignment import BlockAssignment
from coordinator.config import CoordinatorConfig, PrivacySection, parse_config
from coordinator.events import BlockAggregated, EventSink, RunEvent
from pruning.data import CalibrationSet, calibration_records, calibration_samples
from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern
from pruning.methods import Method
from pruning.owl import OwlSettings
from pruning.recipes import Mode, Recipe, check_recipe, owl_conflicts

logger = logging.getLogger(__name__)

IN_PROCESS_ROUND_TIMEOUT_S = 7 * 24 * 3600.0
"""How long the coordinator waits for one round in one process: nobody drops out here, and one-shot
participants score every block before they answer the first session. A participant that fails aborts the
run at once instead."""

_UNUSED_ADDRESS = "127.0.0.1:1"
"""In one process no address is bound or dialled; the configs still need one."""


def site_name(index: int) -> str:
    """Return the name (certificate name, ledger name) of simulated site ``index``: ``participant-000``, ..."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return f"participant-{index:03d}"


def privacy_off() -> PrivacySection:
    """Return the research setting: no randomized response, no record-level DP.

    Secure aggregation still sums the votes (exactly: without randomized response the sums are the plain
    ones), and the signed report states that the run carries no DP guarantee.
    """
    return PrivacySection.model_validate({"randomized_response": False, "record_level_dp": False})


@dataclasses.dataclass(frozen=True)
class SimulationSettings:
    """What to prune and how (the coordinator's ``[run]`` section of a simulation, less the participants)."""

    method: Method = Method.WANDA
    pattern: SparsityPattern = SparsityPattern(sparsity=0.5)
    group: ComparisonGroup = ComparisonGroup.LAYER
    mode: Mode = Mode.ONE_SHOT
    weight_scaling: bool = False
    nsamples: int = 128
    seqlen: int | None = None
    """Tokens per calibration window; None: 2048 capped at the model's context (the coordinator's default)."""
    seed: int = 0
    recipe: Recipe = Recipe.FEDPRLLM
    budgets: tuple[int, ...] | None = None
    """FedSpaLLM: the number of blocks each participant can prune (None: every participant, every block)."""
    owl: OwlSettings | None = None
    """OWL's settings: per-block sparsities allocated from the sites' summed dense statistics (an
    allocation phase before block 0); None: every block at ``pattern``'s sparsity."""

    def __post_init__(self) -> None:
        check_recipe(self.recipe, method=self.method, mode=self.mode, weight_scaling=self.weight_scaling)
        if self.owl is not None:
            problems = owl_conflicts(self.recipe, method=self.method, n_m=self.pattern.is_n_m)
            if problems:
                raise PruningInputError("OWL needs " + ", ".join(problems))
        if self.budgets is not None and self.recipe is not Recipe.FEDSPALLM:
            raise ValueError("budgets need the fedspallm recipe")


@dataclasses.dataclass
class ServiceSimulationResult:
    """What the service's roles produced in one process (the outputs are already written)."""

    model: nn.Module
    """The global model, as written to ``output``."""
    output: Path
    report: Path
    """The signed ``privacy_report.json``, carrying each site's signed statement."""
    participants: tuple[str, ...]
    """The sites' names, as the ledger and the statements name them."""
    threshold: int
    """t, the secure-aggregation threshold of every session."""
    keep_votes: dict[str, torch.Tensor]
    """The summed keep-votes per matrix, as the coordinator learned them (``BlockAggregated``)."""
    global_masks: dict[str, torch.Tensor]
    """The global mask per matrix (True = pruned)."""
    contributors: dict[int, tuple[str, ...]]
    """The sites whose input each block's sum holds."""
    assignment: BlockAssignment | None = None
    """FedSpaLLM: which sites (positions in ``participants``) pruned each block."""
    local_models: list[nn.Module] | None = None
    """With ``keep_local_models`` in one-shot mode: each site's own model, pruned alone with its own data
    (and its own statistics, DP or exact) before any global mask; None otherwise."""
    clipped_updates: int = 0
    """FedSpaLLM: weight updates the sites clipped to the public fixed-point bound (0 in a healthy run)."""

    @property
    def participants_per_block(self) -> list[int] | None:
        """Return how many sites the coordinator assigned to each block (FedSpaLLM), else None."""
        return None if self.assignment is None else [len(members) for members in self.assignment.blocks]


def load_participant_samples(
    files: Sequence[str | Path],
    tokenizer: object,
    *,
    settings: SimulationSettings,
    vocab_size: int,
    disjoint: bool = False,
) -> list[torch.Tensor]:
    """Return each participant's ``nsamples`` calibration windows, drawn from its own file (exact statistics).

    ``disjoint`` draws non-overlapping windows.
    """
    if settings.seqlen is None:
        raise ValueError("settings.seqlen must be set to cut calibration windows")
    return [
        calibration_samples(
            path,
            tokenizer,  # type: ignore[arg-type]
            nsamples=settings.nsamples,
            seqlen=settings.seqlen,
            seed=settings.seed,
            vocab_size=vocab_size,
            disjoint=disjoint,
        )
        for path in files
    ]


def load_participant_records(
    files: Sequence[str | Path],
    tokenizer: object,
    *,
    seqlen: int,
    vocab_size: int,
    max_windows_per_record: int | None = None,
) -> list[CalibrationSet]:
    """Return every document of each participant's file as windows tagged by document (record-level DP)."""
    return [
        calibration_records(
            path,
            tokenizer,  # type: ignore[arg-type]
            seqlen=seqlen,
            vocab_size=vocab_size,
            max_windows_per_record=max_windows_per_record,
        )
        for path in files
    ]


def simulation_config(
    model_dir: str | Path,
    *,
    participants: int,
    settings: SimulationSettings,
    privacy: PrivacySection,
    out: str | Path,
    signing_key: str | Path,
    state: str | Path,
    threshold: int | None = None,
    overwrite: bool = False,
) -> CoordinatorConfig:
    """Return the coordinator's validated config for a simulation of ``participants`` sites.

    Nothing is read or written: a bad combination (a threshold that is not above (n + c)/2, a recipe's
    conflict, a privacy parameter out of range) raises ``coordinator.config.ConfigError`` naming the field,
    before any work.
    """
    pattern = settings.pattern
    return parse_config(
        {
            "server": {"address": _UNUSED_ADDRESS, "round_timeout_s": IN_PROCESS_ROUND_TIMEOUT_S},
            "tls": {name: str(Path(state) / f"unused-in-process.{name}") for name in _TLS_FILES},
            "run": {
                "model": str(model_dir),
                "participants": [site_name(i) for i in range(participants)],
                "min_participants": participants,
                "threshold": threshold,
                "method": settings.method.value,
                "pattern": f"{pattern.n}:{pattern.m}" if pattern.is_n_m else "unstructured",
                "sparsity": None if pattern.is_n_m else pattern.sparsity,
                "group": settings.group.value,
                "mode": settings.mode.value,
                "nsamples": settings.nsamples,
                "seqlen": settings.seqlen,
                "weight_scaling": settings.weight_scaling,
                "recipe": settings.recipe.value,
                **(
                    {}
                    if settings.owl is None
                    else {
                        "owl": True,
                        "owl_lambda": settings.owl.lam,
                        "owl_outlier_multiple": settings.owl.multiple,
                    }
                ),
            },
            "privacy": privacy.model_dump(mode="json", exclude_none=True),
            "output": {
                "directory": str(out),
                "state": str(Path(state) / "coordinator"),
                "signing_key": str(signing_key),
                "overwrite": overwrite,
            },
        },
        source="simulation",
    )


_TLS_FILES = ("ca", "certificate", "private_key")


def _site_privacy(privacy: PrivacySection) -> dict[str, object]:
    """Return the weakest run each simulated site joins: exactly the simulation's own parameters.

    Whoever runs the simulation chooses both sides, where the sites' protective defaults would refuse a
    weaker research setting such as ``--record-dp off``.
    """
    minimums: dict[str, object] = {
        "require_record_level_dp": privacy.record_level_dp,
        "require_randomized_response": privacy.randomized_response,
        "max_target_epsilon": privacy.target_epsilon if privacy.record_level_dp else None,
        "max_delta": privacy.delta,
    }
    if privacy.randomized_response:
        minimums["max_epsilon0"] = privacy.epsilon0
    return minimums


def simulate_service(
    model_dir: str | Path,
    calibration_files: Sequence[str | Path] | None,
    *,
    settings: SimulationSettings,
    privacy: PrivacySection,
    out: str | Path,
    signing_key: str | Path,
    threshold: int | None = None,
    device: str = "auto",
    participant_samples: Sequence[torch.Tensor | CalibrationSet | None] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    state_dir: str | Path | None = None,
    on_event: EventSink | None = None,
    keep_local_models: bool = False,
) -> ServiceSimulationResult:
    """Return the run of the service's own roles in this process, its outputs written to ``out``.

    One ``coordinator.run.CoordinatorRun`` and one ``participant.run.ParticipantRun`` per site talk over
    ``fedprune.inprocess`` (no network): per-block secure-aggregation sessions at threshold ``threshold``
    (default floor(2n/3) + 1), randomized response and DP statistics at each site as ``privacy`` says,
    each site's signed statement, and the coordinator's report signed with ``signing_key`` (built and
    checked before the model is written). Sites are named by :func:`site_name`; their identity keys are
    made in ``state_dir`` (a temporary directory by default) and pinned by every peer.
    ``participant_samples[i]``, when given, is site i's calibration data already read (records when
    ``privacy.record_level_dp``); otherwise each site reads ``calibration_files[i]`` (which may be None
    when every site's samples are given). Under FedSpaLLM ``settings.budgets[i]`` is site i's
    ``runtime.max_blocks``. ``on_event`` receives the coordinator's typed run events.
    """
    from fedprune.inprocess import Site, quiet_roles, run_federation
    from participant.config import parse_config as parse_participant_config
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    if calibration_files is None:
        if participant_samples is None:
            raise ValueError("give calibration_files, participant_samples, or both")
        calibration_files = [
            Path(state_dir or ".") / f"{site_name(i)}.unused" for i in range(len(participant_samples))
        ]
    if not calibration_files:
        raise ValueError("calibration_files must name at least one participant's file")
    n = len(calibration_files)
    if participant_samples is not None and len(participant_samples) != n:
        raise ValueError(f"participant_samples has {len(participant_samples)} entries for {n} files")
    budgets = settings.budgets
    if budgets is not None and len(budgets) != n:
        raise ValueError(f"settings.budgets has {len(budgets)} entries for {n} participants")
    names = tuple(site_name(i) for i in range(n))
    keep_votes: dict[str, torch.Tensor] = {}
    global_masks: dict[str, torch.Tensor] = {}
    contributors: dict[int, tuple[str, ...]] = {}

    def observe(event: RunEvent) -> None:
        if isinstance(event, BlockAggregated):
            keep_votes.update(event.keep_votes)
            global_masks.update(event.global_masks)
            contributors[event.block] = event.contributors
        if on_event is not None:
            on_event(event)

    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedprune-simulate-"))
        root = Path(state_dir)
        config = simulation_config(
            model_dir,
            participants=n,
            settings=settings,
            privacy=privacy,
            out=out,
            signing_key=signing_key,
            state=root,
            threshold=threshold,
            overwrite=overwrite,
        )
        fingerprints = {}
        with quiet_roles("privacy.signing"):  # the sites' identity keys live and die with this run
            for name in names:
                fingerprints[name] = key_fingerprint(
                    load_or_create_signing_key(root / name / "identity_key.pem")
                )
        sites = []
        for i, (name, path) in enumerate(zip(names, calibration_files, strict=True)):
            site_config = parse_participant_config(
                {
                    "coordinator": {"address": _UNUSED_ADDRESS},
                    "tls": {key: str(root / f"unused-in-process.{key}") for key in _TLS_FILES},
                    "model": {"directory": str(model_dir)},
                    "data": {"calibration": str(path), "seed": settings.seed},
                    "runtime": {
                        "device": device,
                        "state": str(root / name),
                        "identity_key": str(root / name / "identity_key.pem"),
                        "progress": False,
                        "max_blocks": budgets[i] if budgets is not None else None,
                    },
                    "peers": {peer: fingerprints[peer] for peer in names if peer != name},
                    "privacy": _site_privacy(privacy),
                },
                source=f"in-process {name}",
            )
            samples = participant_samples[i] if participant_samples is not None else None
            sites.append(Site(name=name, config=site_config, samples=samples))
        local = keep_local_models and settings.mode is Mode.ONE_SHOT
        with quiet_roles():
            # Every site's run is kept to the end (they all run at once, so this adds nothing to the peak):
            # the host reads their local models and clipping counts.
            result = run_federation(
                config, sites, progress=progress, on_event=observe, keep_participants=True
            )
    assignment = None
    if result.run.assignment is not None:
        position = {name: i for i, name in enumerate(names)}
        blocks = result.run.assignment
        assignment = BlockAssignment(
            blocks=tuple(tuple(sorted(position[name] for name in blocks[b])) for b in sorted(blocks)),
            participants=n,
        )
    sites_done = result.participants
    # A site's own model is its local-only model when it pruned every block alone (one-shot, full assignment).
    full = assignment is None or assignment.is_full
    return ServiceSimulationResult(
        model=result.run.model,
        output=result.summary.output,
        report=result.summary.report,
        participants=names,
        threshold=config.threshold,
        keep_votes=keep_votes,
        global_masks=global_masks,
        contributors=contributors,
        assignment=assignment,
        local_models=[site.model for site in sites_done] if local and full else None,
        clipped_updates=sum(site.clipped_updates for site in sites_done),
    )


def describe_privacy(privacy: PrivacySection) -> dict[str, Any]:
    """Return the layers of a simulation's privacy in words and numbers (for ``simulation.json``)."""
    return {
        "record_level_dp": (
            {
                "unit": "one document of a participant's calibration file (add/remove)",
                "target_epsilon": privacy.target_epsilon,
                "noise_multiplier": privacy.noise_multiplier,
                "delta": privacy.delta,
                "sample_rate": privacy.sample_rate,
            }
            if privacy.record_level_dp
            else "off: calibration statistics are exact, no record-level guarantee"
        ),
        "randomized_response": (
            {
                "epsilon0": privacy.epsilon0,
                "note": "limits what one vote reveals; not a record-level guarantee",
            }
            if privacy.randomized_response
            else "off: true keep-votes enter the secure sum"
        ),
        "secure_aggregation": "on: the coordinator learns each block's summed keep-votes only",
    }


__all__ = [
    "ServiceSimulationResult",
    "SimulationSettings",
    "describe_privacy",
    "load_participant_records",
    "load_participant_samples",
    "privacy_off",
    "simulate_service",
    "simulation_config",
    "site_name",
]
