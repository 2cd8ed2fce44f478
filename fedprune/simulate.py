"""One-process federated pruning: every participant and the coordinator, no network.

- ``simulate_service``: the FedPrLLM recipe with privacy, run by the service's own roles
  (``coordinator.run`` and one ``participant.run`` per site) over the in-memory transport of
  ``fedprune.inprocess``: the same sessions, mechanisms, statements and signed report as the service.
- ``simulate``: the research harness. The same participant code (``participant.voting``) computes
  keep-votes, a vote aggregator sums them (plainly for the ``--privacy off`` baseline, or through
  ``fedprune.private_votes`` for FedSpaLLM and the benchmarks), and the coordinator's pure aggregation
  functions (``coordinator.aggregation``) turn the sums into the global mask applied to the base weights.
- The baselines: centralized, magnitude, and the per-participant local-only models.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from coordinator.aggregation import (
    ComparisonGroup,
    VoteTally,
    averaged_weight,
    check_counts,
    global_mask,
    scaled_weight,
)
from coordinator.assignment import BlockAssignment, assign_blocks, full_assignment
from participant.voting import KeepVotes, iterative_votes, one_shot_votes, sparsegpt_local_results
from pruning.adapters import LinearSublayer, decoder_blocks, iter_prunable, qualified_name
from pruning.data import CalibrationSet, calibration_records, calibration_samples, pooled
from pruning.local import check_pattern_fits, prune_model
from pruning.masks import SparsityPattern
from pruning.methods import LocalDecision, Method
from pruning.perplexity import perplexity
from pruning.statistics import StatisticAggregator
from pruning.updates import local_updates

if TYPE_CHECKING:
    from fedprune.private_votes import PrivacySettings

logger = logging.getLogger(__name__)


class Mode(enum.Enum):
    """How often the coordinator aggregates."""

    ONE_SHOT = "one-shot"
    """Each participant prunes its own copy and votes on every block; one aggregation."""
    ITERATIVE = "iterative"
    """One aggregation per decoder block; block l's global mask is applied before block l+1 is scored."""


class Recipe(enum.Enum):
    """What participants send and how the coordinator builds the global model."""

    FEDPRLLM = "fedprllm"
    """Keep-votes only; the global model is the public base weights under the voted mask (the default)."""
    FEDSPALLM = "fedspallm"
    """SparseGPT masks and reconstructed weights; kept weights are l0-norm averaged over the participants
    that kept them; each block is pruned by its assigned participants (resource-aware block assignment)."""


class VoteAggregator(Protocol):
    """Turns every participant's keep-votes for some matrices into per-weight sums."""

    def aggregate(self, votes: Sequence[KeepVotes], *, round_index: int) -> dict[str, torch.Tensor]:
        """Return the summed keep-votes per matrix name."""


class PlainVoteSum:
    """The research baseline: the coordinator sees every participant's votes and sums them."""

    def aggregate(self, votes: Sequence[KeepVotes], *, round_index: int) -> dict[str, torch.Tensor]:
        names = list(votes[0])
        sums = {}
        for name in names:
            rows, columns = votes[0][name].shape
            tally = VoteTally((rows, columns))
            for participant_votes in votes:
                tally.add(participant_votes[name])
            sums[name] = tally.keep_votes
        return sums


@dataclasses.dataclass(frozen=True)
class SimulationSettings:
    """What to prune and how; every field is validated by the CLI or by :func:`simulate`."""

    method: Method = Method.WANDA
    pattern: SparsityPattern = SparsityPattern(sparsity=0.5)
    group: ComparisonGroup = ComparisonGroup.LAYER
    mode: Mode = Mode.ONE_SHOT
    weight_scaling: bool = False
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    recipe: Recipe = Recipe.FEDPRLLM
    budgets: tuple[int, ...] | None = None
    """FedSpaLLM: the number of blocks each participant can prune (None: every participant, every block)."""


@dataclasses.dataclass
class SimulationResult:
    """The global model and what produced it."""

    model: nn.Module
    global_masks: dict[str, torch.Tensor]
    keep_votes: dict[str, torch.Tensor]
    participants: int
    local_models: list[nn.Module] | None = None
    assignment: BlockAssignment | None = None
    """FedSpaLLM: which participants pruned each block."""
    clipped_updates: int = 0
    """FedSpaLLM: weight updates clipped to the public fixed-point bound (0 in a healthy run)."""


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


def _global_model(
    base: nn.Module,
    masks: dict[str, torch.Tensor],
    sums: dict[str, torch.Tensor],
    *,
    settings: SimulationSettings,
    participants: int,
) -> nn.Module:
    """Return a copy of ``base`` with the global masks applied (and the kept weights scaled if asked)."""
    model = copy.deepcopy(base)
    for block_index, name, sublayer in iter_prunable(model):
        key = qualified_name(block_index, name)
        if key not in masks:
            continue
        if settings.weight_scaling:
            sublayer.set_weight(scaled_weight(sublayer.weight(), sums[key], participants))
        sublayer.apply_pruned(masks[key])
    return model


def _select(
    base: nn.Module, sums: dict[str, torch.Tensor], settings: SimulationSettings, participants: int
) -> dict[str, torch.Tensor]:
    masks = {}
    for block_index, name, sublayer in iter_prunable(base):
        key = qualified_name(block_index, name)
        if key in sums:
            check_counts(sums[key], participants, name=key)
            masks[key] = global_mask(
                sums[key], sublayer.weight(), pattern=settings.pattern, group=settings.group
            )
    return masks


def simulate(
    base: nn.Module,
    participant_samples: Sequence[torch.Tensor | CalibrationSet | None],
    *,
    settings: SimulationSettings,
    device: torch.device,
    vote_aggregator: VoteAggregator | None = None,
    statistic_aggregators: Callable[[int], StatisticAggregator] | None = None,
    keep_local_models: bool = False,
    progress: bool = True,
    block_aggregator: BlockAggregator | None = None,
    assignment: BlockAssignment | None = None,
) -> SimulationResult:
    """Return the federated global model built from every participant's votes; ``base`` is not modified.

    ``statistic_aggregators(i)`` gives participant i's calibration-statistics aggregator (exact by default;
    a private one makes the statistics record-level DP). In one-shot mode ``keep_local_models`` also returns
    each participant's own locally pruned copy (the local-only baseline). The FedSpaLLM recipe sums through
    ``block_aggregator`` (plain by default) over ``assignment`` (by default from ``settings.budgets`` and the
    aggregator's coverage).
    """
    if not participant_samples:
        raise ValueError("simulation needs at least one participant")
    check_pattern_fits(base, settings.pattern)
    if settings.recipe is Recipe.FEDSPALLM:
        return _simulate_fedspallm(
            base,
            participant_samples,
            settings=settings,
            device=device,
            block_aggregator=block_aggregator,
            statistic_aggregators=statistic_aggregators,
            assignment=assignment,
            keep_local_models=keep_local_models,
            progress=progress,
        )
    vote_aggregator = vote_aggregator or PlainVoteSum()
    n = len(participant_samples)

    def aggregator_for(i: int) -> StatisticAggregator | None:
        return statistic_aggregators(i) if statistic_aggregators else None

    sums: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    local_models: list[nn.Module] | None = [] if keep_local_models else None
    if settings.mode is Mode.ONE_SHOT:
        all_votes: list[KeepVotes] = []
        for i, samples in enumerate(tqdm(participant_samples, desc="participants", disable=not progress)):
            votes: KeepVotes = {}
            own = copy.deepcopy(base)
            one_shot_votes(
                own,
                samples,
                method=settings.method,
                pattern=settings.pattern,
                device=device,
                aggregator=aggregator_for(i),
                on_votes=votes.__setitem__,
            )
            all_votes.append(votes)
            if local_models is not None:
                local_models.append(own)
        sums = vote_aggregator.aggregate(all_votes, round_index=0)
        masks = _select(base, sums, settings, n)
    else:
        copies = [copy.deepcopy(base) for _ in range(n)]
        runs = [
            iterative_votes(
                model,
                samples,
                method=settings.method,
                pattern=settings.pattern,
                device=device,
                aggregator=aggregator_for(i),
            )
            for i, (model, samples) in enumerate(zip(copies, participant_samples, strict=True))
        ]
        block_votes = [next(run) for run in runs]
        round_index = 0
        bar = tqdm(desc="aggregation rounds", unit="block", disable=not progress)
        while True:
            round_sums = vote_aggregator.aggregate(block_votes, round_index=round_index)
            round_masks = _select(base, round_sums, settings, n)
            sums.update(round_sums)
            masks.update(round_masks)
            bar.update()
            round_index += 1
            try:
                block_votes = [run.send(round_masks) for run in runs]
            except StopIteration:
                break
        bar.close()
        del copies
    model = _global_model(base, masks, sums, settings=settings, participants=n)
    return SimulationResult(
        model=model, global_masks=masks, keep_votes=sums, participants=n, local_models=local_models
    )


LocalResults = dict[str, LocalDecision]
"""One participant's SparseGPT decisions (mask and reconstructed weight, on the CPU) by matrix name."""


@dataclasses.dataclass
class BlockSums:
    """What the coordinator learns about one block under FedSpaLLM: sums only, per matrix."""

    keep_votes: dict[str, torch.Tensor]
    """Summed keep-votes (int32), as in the FedPrLLM recipe."""
    update_sums: dict[str, torch.Tensor]
    """Sum over the keep-voters of their weight update w_i - W0 (float64)."""
    contributors: dict[str, torch.Tensor]
    """The divisor of the l0-norm average: the keep-vote count, or its randomized-response correction."""
    clipped: int = 0


class BlockAggregator(Protocol):
    """Sums one block's FedSpaLLM contributions over the block's assigned participants."""

    @property
    def coverage(self) -> int:
        """Return how many participants every block needs (the secure-aggregation threshold t)."""

    def aggregate_block(
        self,
        block: int,
        members: Sequence[int],
        results: Sequence[LocalResults],
        base_weights: dict[str, torch.Tensor],
    ) -> BlockSums:
        """Return the block's sums; ``results[j]`` belongs to participant ``members[j]``."""


class PlainBlockSum:
    """The research baseline: the coordinator sees every participant's mask and weights and sums them."""

    def __init__(self, *, coverage: int = 1) -> None:
        if coverage < 1:
            raise ValueError(f"coverage must be >= 1, got {coverage}")
        self._coverage = coverage

    @property
    def coverage(self) -> int:
        return self._coverage

    def aggregate_block(
        self,
        block: int,
        members: Sequence[int],
        results: Sequence[LocalResults],
        base_weights: dict[str, torch.Tensor],
    ) -> BlockSums:
        keep_votes, update_sums = {}, {}
        for name in results[0]:
            rows, columns = results[0][name].pruned.shape
            tally = VoteTally((rows, columns))
            total = torch.zeros(tally.keep_votes.shape, dtype=torch.float64)
            for result in results:
                tally.add(result[name].keep_votes)
                total += local_updates({name: result[name]}, base_weights)[name]
            keep_votes[name], update_sums[name] = tally.keep_votes, total
        contributors = {name: votes.to(torch.float64) for name, votes in keep_votes.items()}
        return BlockSums(keep_votes=keep_votes, update_sums=update_sums, contributors=contributors)


def resolve_assignment(
    base: nn.Module, *, participants: int, budgets: Sequence[int] | None, coverage: int
) -> BlockAssignment:
    """Return the block assignment: every block to every participant without budgets, else :func:`assign_blocks`."""
    blocks = len(decoder_blocks(base))
    if budgets is None:
        return full_assignment(participants=participants, blocks=blocks)
    if len(budgets) != participants:
        raise ValueError(f"budgets has {len(budgets)} entries for {participants} participants")
    return assign_blocks(budgets, blocks=blocks, threshold=coverage)


def _simulate_fedspallm(
    base: nn.Module,
    participant_samples: Sequence[torch.Tensor | CalibrationSet | None],
    *,
    settings: SimulationSettings,
    device: torch.device,
    block_aggregator: BlockAggregator | None,
    statistic_aggregators: Callable[[int], StatisticAggregator] | None,
    assignment: BlockAssignment | None,
    keep_local_models: bool,
    progress: bool,
) -> SimulationResult:
    """Return the FedSpaLLM global model: voted masks, l0-norm averaged kept weights, per-block subsets."""
    if settings.method is not Method.SPARSEGPT:
        raise ValueError(f"the fedspallm recipe needs method sparsegpt, got {settings.method.value}")
    if settings.mode is not Mode.ONE_SHOT:
        raise ValueError("the fedspallm recipe runs one-shot (mode iterative is a FedPrLLM variant)")
    if settings.weight_scaling:
        raise ValueError("weight_scaling does not apply to the fedspallm recipe (kept weights are averaged)")
    n = len(participant_samples)
    block_aggregator = block_aggregator or PlainBlockSum(coverage=1)
    if assignment is None:
        assignment = resolve_assignment(
            base, participants=n, budgets=settings.budgets, coverage=block_aggregator.coverage
        )
    if assignment.participants != n or len(assignment.blocks) != len(decoder_blocks(base)):
        raise ValueError("assignment does not match the participants and the model's blocks")

    results: list[LocalResults] = []
    local_models: list[nn.Module] | None = [] if keep_local_models else None
    for i, samples in enumerate(tqdm(participant_samples, desc="participants", disable=not progress)):
        if samples is None:
            raise ValueError(f"participant {i} has no calibration data (sparsegpt needs it)")
        own = copy.deepcopy(base)
        decisions: LocalResults = {}

        def keep(name: str, decision: LocalDecision, into: LocalResults = decisions) -> None:
            weight = decision.weight.cpu() if decision.weight is not None else None
            into[name] = LocalDecision(decision.pruned.cpu(), weight)

        sparsegpt_local_results(
            own,
            samples,
            pattern=settings.pattern,
            device=device,
            blocks=assignment.blocks_of(i),
            aggregator=statistic_aggregators(i) if statistic_aggregators else None,
            on_decision=keep,
        )
        results.append(decisions)
        if local_models is not None:
            local_models.append(own)

    model = copy.deepcopy(base)
    masks: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    clipped = 0
    by_block: dict[int, dict[str, LinearSublayer]] = {}
    for block_index, name, sublayer in iter_prunable(model):
        by_block.setdefault(block_index, {})[qualified_name(block_index, name)] = sublayer
    for block_index, members in enumerate(assignment.blocks):
        sublayers = by_block.get(block_index, {})
        base_weights = {key: sub.weight().detach().cpu() for key, sub in sublayers.items()}
        member_results = [{key: results[i][key] for key in sublayers} for i in members]
        block_sums = block_aggregator.aggregate_block(block_index, members, member_results, base_weights)
        clipped += block_sums.clipped
        for key, sub in sublayers.items():
            check_counts(block_sums.keep_votes[key], len(members), name=key)
            mask = global_mask(
                block_sums.keep_votes[key], base_weights[key], pattern=settings.pattern, group=settings.group
            )
            weight = averaged_weight(
                base_weights[key], mask, block_sums.update_sums[key], block_sums.contributors[key]
            )
            sub.set_weight(weight)
            sub.apply_pruned(mask)
            masks[key], sums[key] = mask, block_sums.keep_votes[key]
    if clipped:
        logger.warning(
            "%d weight updates exceeded the public fixed-point bound and were clipped to it", clipped
        )
    return SimulationResult(
        model=model,
        global_masks=masks,
        keep_votes=sums,
        participants=n,
        local_models=local_models,
        assignment=assignment,
        clipped_updates=clipped,
    )


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
    participants_per_block: list[int] | None = None
    """FedSpaLLM: how many participants the coordinator assigned to each block."""


IN_PROCESS_ROUND_TIMEOUT_S = 7 * 24 * 3600.0
"""How long the coordinator waits for one round in one process: nobody drops out here, and one-shot
participants score every block before they answer the first session. A participant that fails aborts the
run at once instead."""

_UNUSED_ADDRESS = "127.0.0.1:1"
"""In one process no address is bound or dialled; the configs still need one."""


def simulate_service(
    model_dir: str | Path,
    calibration_files: Sequence[str | Path],
    *,
    settings: SimulationSettings,
    privacy: PrivacySettings,
    out: str | Path,
    signing_key: str | Path,
    device: str = "auto",
    participant_samples: Sequence[torch.Tensor | CalibrationSet | None] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    state_dir: str | Path | None = None,
) -> ServiceSimulationResult:
    """Return the run of the service's own roles in this process, its outputs written to ``out``.

    One ``coordinator.run.CoordinatorRun`` and one ``participant.run.ParticipantRun`` per calibration file
    talk over ``fedprune.inprocess`` (no network): per-block secure-aggregation sessions, randomized
    response and DP statistics at each site, each site's signed statement, and the coordinator's report
    signed with ``signing_key`` (built and checked before the model is written). Sites are named
    ``participant-000``, ``participant-001``, ...; their identity keys are made in ``state_dir`` (a temporary
    directory by default) and pinned by every peer. ``participant_samples[i]``, when given, is site i's
    calibration data already read (records when ``privacy.record_level_dp``); otherwise each site reads
    its file. ``settings.recipe`` picks FedPrLLM or FedSpaLLM; under FedSpaLLM ``settings.budgets[i]`` is
    site i's ``runtime.max_blocks``.
    """
    import tempfile

    from coordinator.config import parse_config
    from fedprune.inprocess import Site, quiet_roles, run_federation
    from fedprune.private_votes import participant_name, threshold_and_colluders
    from participant.config import parse_config as parse_participant_config
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    budgets = settings.budgets
    if budgets is not None and (settings.recipe is not Recipe.FEDSPALLM or len(budgets) != len(calibration_files)):
        raise ValueError("settings.budgets needs the fedspallm recipe and one budget per calibration file")
    if not calibration_files:
        raise ValueError("calibration_files must name at least one participant's file")
    if participant_samples is not None and len(participant_samples) != len(calibration_files):
        raise ValueError(
            f"participant_samples has {len(participant_samples)} entries for {len(calibration_files)} files"
        )
    n = len(calibration_files)
    threshold, colluders = threshold_and_colluders(privacy, participants=n)
    names = tuple(participant_name(i) for i in range(n))
    pattern = settings.pattern
    privacy_section: dict[str, object] = {
        "randomized_response": privacy.randomizes_bits,
        "record_level_dp": privacy.record_level_dp,
        "delta": privacy.delta,
        "sample_rate": privacy.sample_rate,
        "colluders": colluders,
        "accountant_tolerance": privacy.accountant_tolerance,
    }
    for key, value in (
        ("epsilon0", privacy.epsilon0 if privacy.randomizes_bits else None),
        ("noise_multiplier", privacy.noise_multiplier),
        ("target_epsilon", privacy.target_epsilon),
    ):
        if value is not None:
            privacy_section[key] = value

    # The weakest run each simulated site joins: exactly the simulation's own parameters (whoever runs the
    # simulation chooses both sides), where the sites' protective defaults would refuse a weaker research
    # setting such as --record-dp off.
    site_settings: dict[str, object] = {
        "require_record_level_dp": privacy.record_level_dp,
        "require_randomized_response": privacy.randomizes_bits,
        "max_target_epsilon": privacy.target_epsilon if privacy.record_level_dp else None,
        "max_delta": privacy.delta,
    }
    if privacy.randomizes_bits:
        site_settings["max_epsilon0"] = privacy.epsilon0

    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedprune-simulate-"))
        root = Path(state_dir)
        unused_tls = {
            name: str(root / f"unused-in-process.{name}") for name in ("ca", "certificate", "private_key")
        }
        fingerprints = {}
        with quiet_roles("privacy.signing"):  # the sites' identity keys live and die with this run
            for name in names:
                identity = load_or_create_signing_key(root / name / "identity_key.pem")
                fingerprints[name] = key_fingerprint(identity)
        config = parse_config(
            {
                "server": {"address": _UNUSED_ADDRESS, "round_timeout_s": IN_PROCESS_ROUND_TIMEOUT_S},
                "tls": unused_tls,
                "run": {
                    "model": str(model_dir),
                    "participants": list(names),
                    "min_participants": n,
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
                },
                "privacy": privacy_section,
                "output": {
                    "directory": str(out),
                    "state": str(root / "coordinator"),
                    "signing_key": str(signing_key),
                    "overwrite": overwrite,
                },
            },
            source="in-process coordinator",
        )
        sites = []
        for i, (name, path) in enumerate(zip(names, calibration_files, strict=True)):
            site_config = parse_participant_config(
                {
                    "coordinator": {"address": _UNUSED_ADDRESS},
                    "tls": unused_tls,
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
                    "privacy": site_settings,
                },
                source=f"in-process {name}",
            )
            samples = participant_samples[i] if participant_samples is not None else None
            sites.append(Site(name=name, config=site_config, samples=samples))
        with quiet_roles():
            result = run_federation(config, sites, progress=progress)
    return ServiceSimulationResult(
        model=result.run.model,
        output=result.summary.output,
        report=result.summary.report,
        participants=names,
        participants_per_block=(
            None
            if result.run.assignment is None
            else [len(result.run.assignment[b]) for b in sorted(result.run.assignment)]
        ),
    )


def global_model_from_votes(
    base: nn.Module, keep_votes: dict[str, torch.Tensor], *, settings: SimulationSettings, participants: int
) -> nn.Module:
    """Return the global model selected from one-shot keep-vote sums under ``settings``.

    Lets a study compare comparison groups and weight scaling on the same votes without re-running the
    participants.
    """
    masks = _select(base, keep_votes, settings, participants)
    return _global_model(base, masks, keep_votes, settings=settings, participants=participants)


def centralized_model(
    base: nn.Module,
    participant_samples: Sequence[torch.Tensor | CalibrationSet],
    *,
    settings: SimulationSettings,
    device: torch.device,
) -> nn.Module:
    """Return the model pruned at one site holding every participant's calibration samples."""
    model = copy.deepcopy(base)
    prune_model(
        model,
        pooled(participant_samples),
        method=settings.method,
        pattern=settings.pattern,
        device=device,
        progress=False,
    )
    return model


def magnitude_model(base: nn.Module, *, pattern: SparsityPattern, device: torch.device) -> nn.Module:
    """Return the magnitude-pruned model: the data-free (eps = 0) baseline."""
    model = copy.deepcopy(base)
    prune_model(model, None, method=Method.MAGNITUDE, pattern=pattern, device=device, progress=False)
    return model


def evaluate(model: nn.Module, stream: torch.Tensor, *, seqlen: int, device: torch.device) -> float:
    """Return the model's perplexity on a token stream."""
    return perplexity(model, stream, seqlen=seqlen, device=device).perplexity


__all__ = [
    "BlockAggregator",
    "BlockSums",
    "LocalResults",
    "Mode",
    "PlainBlockSum",
    "PlainVoteSum",
    "Recipe",
    "ServiceSimulationResult",
    "SimulationResult",
    "SimulationSettings",
    "VoteAggregator",
    "centralized_model",
    "evaluate",
    "global_model_from_votes",
    "load_participant_records",
    "load_participant_samples",
    "local_updates",
    "magnitude_model",
    "resolve_assignment",
    "simulate",
    "simulate_service",
]
