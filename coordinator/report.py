"""The run's privacy report: the coordinator's own secure-aggregation events plus each site's signed statement.

The coordinator attests only what it did (one secure-aggregation session per block: participants,
threshold, survivors, colluders). What each participant applied (randomized response, DP statistics)
enters the ledger exactly as that participant signed it, so ``audit verify`` can check each site's
signature and that the ledger says of it exactly what it said itself.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from privacy.ledger import (
    EventParameterError,
    Mechanism,
    MechanismEvent,
    PrivacyLedger,
    check_event_parameters,
)
from privacy.report import (
    PrivacyReport,
    SummedInputs,
    ThreatModel,
    build_report,
    contributors_parameter,
    write_signed_report,
)
from privacy.signing import ParticipantStatement, StatementError, verify_statement_signature

logger = logging.getLogger(__name__)

SERVICE_TRANSPORT = "gRPC over mutual TLS (fedprune coordinator / participant)"

FEDSPALLM_EXCLUSION = (
    "fedspallm: the coordinator also learns per-block sums of the kept weights' updates (with the keep-vote "
    "counts, over the same survivors). Randomized response covers the keep-vote counts only: where one "
    "participant votes keep, the update sum is that participant's own update, nonzero exactly where its raw "
    "(unrandomized) bit is keep, so its vote's randomization does not hide that bit, and no amplified "
    "aggregation epsilon is claimed. The weight sums are covered by secure aggregation (hidden among two or "
    "more keep-voters) and, as post-processing, by the record-level DP of the calibration statistics (none "
    "without it)"
)


def secure_aggregation_event(
    *,
    block: int,
    coordinates: int,
    participants: int,
    threshold: int,
    contributors: Sequence[str],
    colluders: int,
    summed: SummedInputs = SummedInputs.KEEP_VOTES,
    round: int | None = None,
) -> MechanismEvent:
    """Return the coordinator's ledger event for block ``block``'s secure-aggregation session.

    ``contributors`` are the names of the survivors whose inputs were summed: the report lists each of
    them, with its signed statement or a line saying it sent none. ``summed`` says what the sum showed.
    ``round``: the session context's round (default the block; ``OWL_ALLOCATION_ROUND`` for an OWL
    allocation session).
    """
    return MechanismEvent(
        mechanism=Mechanism.SECURE_AGGREGATION,
        participant="*",
        round=block if round is None else round,
        block=block,
        count=coordinates,
        parameters={
            "participants": participants,
            "threshold": threshold,
            "survivors": len(set(contributors)),
            "colluders": colluders,
            "contributors": contributors_parameter(contributors),
            "summed": summed.value,
        },
    )


@dataclasses.dataclass(frozen=True)
class StatementBounds:
    """What the run allows a participant to attest: its blocks, their sizes, their statistics."""

    block_dimensions: tuple[int, ...]
    """Coordinates of each decoder block's vote vector (randomized response covers at most these)."""
    statistics_per_block: int
    """Prunable sublayers of a block: one Gaussian release covers at most this many statistics."""
    sample_rate: float
    """The run's announced Poisson sampling rate: the one every site's Gaussian release uses."""
    releases_per_block: int = 1
    """Gaussian releases a site makes of each block: 1, or 2 under OWL (the dense statistics of the
    allocation phase, then the block's own)."""

    @property
    def blocks(self) -> int:
        return len(self.block_dimensions)


def check_statement(
    statement: ParticipantStatement, *, name: str, run_id: str, public_key: bytes, bounds: StatementBounds
) -> None:
    """Return None when ``statement`` is ``name``'s, for ``run_id``, signed by its joined identity key, and
    every event is of the report's schema (``privacy.ledger.check_event_parameters``) within the run's
    bounds: blocks of the run, at most one randomized-response event per block, coordinates at most the
    block's, Gaussian releases at most blocks x releases per block x statistics per block in all, at the
    run's sample rate,
    under the site's own release ids, whose clip shares square-sum to at most 1. Raises StatementError
    naming the field.
    """
    if statement.participant != name:
        raise StatementError("statement.participant", f"is {statement.participant!r}, the caller is {name!r}")
    if statement.run_id != run_id:
        raise StatementError("statement.run_id", f"is {statement.run_id!r}, the run is {run_id!r}")
    if bytes.fromhex(statement.public_key) != public_key:
        raise StatementError("statement.public_key", f"is not the identity key {name!r} joined with")
    gaussian = bounds.blocks * bounds.releases_per_block * bounds.statistics_per_block
    most = gaussian + bounds.blocks
    if len(statement.events) > most:
        raise StatementError(
            "statement.events", f"holds {len(statement.events)} events, the run allows {most}"
        )
    randomized: set[int] = set()
    releases = 0
    shares: dict[str, float] = {}
    for index, event in enumerate(statement.events):
        where = f"statement.events[{index}]"
        if event.mechanism is Mechanism.SECURE_AGGREGATION:
            raise StatementError(where, "secure aggregation is the coordinator's event")
        if event.participant != name:
            raise StatementError(
                f"{where}.participant", f"is {event.participant!r}, the statement is {name!r}'s"
            )
        if event.block is None or event.block >= bounds.blocks:
            raise StatementError(
                f"{where}.block", f"must name a block in [0, {bounds.blocks}), got {event.block}"
            )
        try:
            check_event_parameters(event, where=where)
        except EventParameterError as error:
            raise StatementError(error.field, error.reason) from None
        if event.mechanism is Mechanism.RANDOMIZED_RESPONSE:
            if event.block in randomized:
                raise StatementError(where, f"block {event.block} is randomized twice (once per run)")
            randomized.add(event.block)
            if event.count > bounds.block_dimensions[event.block]:
                raise StatementError(
                    f"{where}.count",
                    f"is {event.count}, block {event.block} has {bounds.block_dimensions[event.block]} coordinates",
                )
        else:
            if event.parameters["sample_rate"] != bounds.sample_rate:
                raise StatementError(
                    f"{where}.parameters.sample_rate",
                    f"is {event.parameters['sample_rate']}, the run's is {bounds.sample_rate}",
                )
            if not str(event.parameters["release"]).startswith(f"{name}/"):
                # Release ids group a site's statistics into joint releases; another site's id would
                # merge its statistics with this one's.
                raise StatementError(f"{where}.parameters.release", f"must start with {name + '/'!r}")
            release = str(event.parameters["release"])
            shares[release] = shares.get(release, 0.0) + float(event.parameters["clip_share"]) ** 2
            if shares[release] > 1.0 + 1e-9:
                raise StatementError(
                    f"{where}.parameters.clip_share",
                    f"the clip shares of release {release!r} have squares summing to more than 1",
                )
            releases += event.count
            if releases > gaussian:
                raise StatementError(
                    f"{where}.count",
                    f"the Gaussian releases add up past {gaussian} ({bounds.blocks} blocks x "
                    f"{bounds.releases_per_block} releases x {bounds.statistics_per_block} statistics)",
                )
    verify_statement_signature(statement)


def run_ledger(
    statements: Sequence[ParticipantStatement], coordinator_events: Sequence[MechanismEvent]
) -> PrivacyLedger:
    """Return the run's ledger: each participant's signed events (by name), then the coordinator's."""
    ledger = PrivacyLedger()
    for statement in sorted(statements, key=lambda s: s.participant):
        for event in statement.events:
            ledger.record(event)
    for event in coordinator_events:
        ledger.record(event)
    return ledger


def build_run_report(
    *,
    run_id: str,
    participants: int,
    threshold: int,
    colluders: int,
    delta: float,
    accountant_tolerance: float,
    record_level_dp: bool,
    statements: Sequence[ParticipantStatement],
    coordinator_events: Sequence[MechanismEvent],
    transport: str = SERVICE_TRANSPORT,
    recipe: str = "fedprllm",
) -> PrivacyReport:
    """Return the unsigned, checked report of a service run (raises ReportVerificationError naming a field).

    ``transport`` says how the roles talked (the threat model's transport line). Under ``recipe``
    ``fedspallm`` each block's event counts the participants assigned to it, and the exclusions say what
    the weight sums add.
    """
    threat = ThreatModel(
        participants=participants,
        secure_aggregation_threshold=threshold,
        max_colluding_participants=colluders,
        transport=transport,
    )
    exclusions = (
        []
        if record_level_dp
        else [
            "calibration statistics are exact: no record-level guarantee is claimed (privacy.record_level_dp off)"
        ]
    )
    if recipe == "fedspallm":
        exclusions.append(FEDSPALLM_EXCLUSION)
    return build_report(
        ledger=run_ledger(statements, coordinator_events),
        threat_model=threat,
        delta=delta,
        run_id=run_id,
        exclusions=exclusions,
        accountant_tolerance=accountant_tolerance,
        participant_statements=sorted(statements, key=lambda s: s.participant),
    )


def write_run_report(report: PrivacyReport, *, signing_key: Path, directory: Path) -> Path:
    """Return the path of ``privacy_report.json`` in ``directory``, signed with the long-term key."""
    directory.mkdir(parents=True, exist_ok=True)
    signing_key.parent.mkdir(parents=True, exist_ok=True)
    return write_signed_report(report, signing_key, directory / "privacy_report.json")
