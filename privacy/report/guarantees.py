"""What a report's ledger implies: its secure-aggregation sessions, the threat model they allow, the figures.

Pure functions of the ledger entries and the accounting inputs, shared by the builder (which computes the
figures) and the verifier (which recomputes them)::

    secure_aggregation_sessions(entries) -> [SecureAggregationSession]   each event's parameters checked
    check_threat_model(threat_model, entries)     the threat model against the secure-aggregation events
    compute_guarantees(entries, inputs, threat_model) -> [Guarantee]    one per layer and participant

Guarantees (see docs/PRIVACY.md):

* ``calibration_statistics``: unit one calibration document, add/remove-one; the releases of one
  participant composed with Opacus RDP and PRV, the larger reported. Masks, votes, weight updates and the
  pruned model are post-processing, so it covers everything the participant computes from its statistics;
  not whether it completes the run (``ThreatModel.data_dependent_aborts``).
* ``mask_bits``: unit one participant's randomized mask; eps0 per coordinate (pure DP) and the exact
  optimal composition over all k coordinates it randomized. Never summarised as "eps0-DP".
* ``aggregation``: the shuffle-model bound for one coordinate's sum, only where valid, with assumptions;
  never valid where a session also summed weight updates (``SummedInputs``), whose sums show a lone
  keep-voter's raw bit.

Each secure-aggregation event names its contributors (:func:`contributors_parameter`), so the report
lists every site whose input was summed.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from privacy import accounting
from privacy.errors import PrivacyError
from privacy.ledger import LedgerEntry, Mechanism
from privacy.report.schema import (
    DATA_DEPENDENT_ABORTS,
    PRIVACY_UNITS,
    AccountingInputs,
    Guarantee,
    ReportVerificationError,
    ThreatModel,
)

SECURE_AGGREGATION_PARAMETERS = (
    "participants",
    "threshold",
    "survivors",
    "colluders",
    "contributors",
    "summed",
)
_INTEGER_PARAMETERS = ("participants", "threshold", "survivors", "colluders")


class SummedInputs(str, enum.Enum):
    """What one secure-aggregation session summed, i.e. what its sum shows the coordinator."""

    KEEP_VOTES = "keep_votes"
    """FedPrLLM: per coordinate, the number of (randomized) keep-votes; nothing else."""
    KEEP_VOTES_AND_WEIGHT_UPDATES = "keep_votes_and_weight_updates"
    """FedSpaLLM: the keep-vote counts and, beside them, the sums of the keep-voters' weight updates."""
    COLUMN_STATISTICS = "column_statistics"
    """Statistics aggregation: per input column of every matrix, the sum over the sites of their released
    calibration statistic (sum of x_j^2; record-level DP where the run has it). No keep-votes."""
    GRAM_STATISTICS = "gram_statistics"
    """Statistics aggregation with SparseGPT: per matrix, the sum over the sites of their released X^T X
    (its upper triangle; record-level DP where the run has it). No keep-votes."""


AMPLIFICATION_INVALID_WITH_UPDATES = (
    "bound not claimed: the sessions also summed the keep-voters' weight updates (FedSpaLLM), and where "
    "one participant votes keep the update sum is that participant's own update, nonzero exactly where its "
    "raw bit is keep, so the coordinator sees more than the sum of randomized keep-votes that the bound "
    "assumes"
)


def contributors_parameter(names: Iterable[str]) -> str:
    """Return the ``contributors`` parameter of a secure-aggregation event: the sorted names, as JSON.

    JSON (not a separator-joined string) so that any certificate name survives the round trip.
    """
    listed = sorted(set(names))
    return json.dumps(listed, separators=(",", ":"), ensure_ascii=False)


def _parse_contributors(value: object, *, where: str, survivors: int) -> tuple[str, ...]:
    try:
        names = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) and n and n != "*" for n in names):
        raise ReportVerificationError(
            where, "must be a JSON list of the names of the participants whose inputs were summed"
        )
    if names != sorted(set(names)):
        raise ReportVerificationError(where, "must list each name once, sorted")
    if len(names) != survivors:
        raise ReportVerificationError(
            where, f"lists {len(names)} names; the session had {survivors} survivors"
        )
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class SecureAggregationSession:
    """What the ledger says about one secure-aggregation session (one ``secure_aggregation`` event)."""

    position: int
    participants: int
    threshold: int
    survivors: int
    """Participants whose inputs were summed."""
    colluders: int
    """Participants assumed to collude with the coordinator (c)."""
    contributors: tuple[str, ...] = ()
    """The survivors by name: every site whose input is in this session's sum."""
    summed: SummedInputs = SummedInputs.KEEP_VOTES
    block: int | None = None
    """The decoder block the session summed, when the event names one."""


def secure_aggregation_sessions(entries: Sequence[LedgerEntry]) -> list[SecureAggregationSession]:
    """Return the ledger's secure-aggregation sessions; raise ReportVerificationError naming a bad parameter.

    Each event must carry exactly ``participants``, ``threshold``, ``survivors`` and ``colluders`` as
    integers with 0 <= colluders < threshold <= survivors <= participants, ``contributors`` (the
    survivors' names, see :func:`contributors_parameter`) and ``summed`` (a :class:`SummedInputs`).
    """
    sessions: list[SecureAggregationSession] = []
    for position, entry in enumerate(entries):
        event = entry.event
        if event.mechanism is not Mechanism.SECURE_AGGREGATION:
            continue
        where = f"ledger[{position}].parameters"
        params = event.parameters
        for name in SECURE_AGGREGATION_PARAMETERS:
            if params.get(name) is None:
                raise ReportVerificationError(
                    f"{where}.{name}",
                    "missing: secure_aggregation events must record "
                    + ", ".join(SECURE_AGGREGATION_PARAMETERS),
                )
        for name in _INTEGER_PARAMETERS:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ReportVerificationError(f"{where}.{name}", f"must be an integer, got {value!r}")
        unexpected = sorted(set(params) - set(SECURE_AGGREGATION_PARAMETERS))
        if unexpected:
            raise ReportVerificationError(f"{where}.{unexpected[0]}", "is not a secure_aggregation parameter")
        try:
            summed = SummedInputs(params["summed"])
        except ValueError:
            raise ReportVerificationError(
                f"{where}.summed", f"must be one of {', '.join(s.value for s in SummedInputs)}"
            ) from None
        session = SecureAggregationSession(
            position=position,
            participants=int(params["participants"]),
            threshold=int(params["threshold"]),
            survivors=int(params["survivors"]),
            colluders=int(params["colluders"]),
            summed=summed,
            block=event.block,
        )
        if not 1 <= session.threshold <= session.participants:
            raise ReportVerificationError(f"{where}.threshold", "must be in [1, participants]")
        if not session.threshold <= session.survivors <= session.participants:
            # Fewer than t survivors aborts the session, so a summed session always had at least t.
            raise ReportVerificationError(f"{where}.survivors", "must be in [threshold, participants]")
        if not 0 <= session.colluders < session.threshold:
            raise ReportVerificationError(f"{where}.colluders", "must be in [0, threshold - 1]")
        contributors = _parse_contributors(
            params["contributors"], where=f"{where}.contributors", survivors=session.survivors
        )
        sessions.append(dataclasses.replace(session, contributors=contributors))
    return sessions


def contributions(sessions: Sequence[SecureAggregationSession]) -> dict[str, tuple[int | None, ...]]:
    """Return, for every site whose input was summed in any session, the blocks of those sessions."""
    blocks: dict[str, list[int | None]] = defaultdict(list)
    for session in sessions:
        for name in session.contributors:
            if session.block not in blocks[name]:
                blocks[name].append(session.block)
    return {name: tuple(found) for name, found in sorted(blocks.items())}


def derive_minimum_honest_survivors(
    sessions: Sequence[SecureAggregationSession], *, colluders: int
) -> int | None:
    """Return the honest participants guaranteed in every session: min(survivors) - colluders, or None."""
    if not sessions:
        return None
    return max(0, min(s.survivors for s in sessions) - colluders)


def check_threat_model(threat_model: ThreatModel, entries: Sequence[LedgerEntry]) -> None:
    """Return None when the threat model agrees with the ledger; raise ReportVerificationError naming the field."""
    if threat_model.data_dependent_aborts != DATA_DEPENDENT_ABORTS:
        raise ReportVerificationError(
            "threat_model.data_dependent_aborts", "is not the statement this version makes"
        )
    sessions = secure_aggregation_sessions(entries)
    c = threat_model.max_colluding_participants
    assert c is not None  # filled in by the model's validator
    for session in sessions:
        at = f"the secure-aggregation session at ledger[{session.position}]"
        if session.participants != threat_model.participants and session.block is not None:
            # Resource-aware block assignment (FedSpaLLM): a block's session runs over the block's own
            # subset, which must still hold at least t of the run's participants (t > (n + c)/2 >= (k + c)/2
            # keeps t safe for the subset).
            t = threat_model.secure_aggregation_threshold
            if not t <= session.participants <= threat_model.participants:
                raise ReportVerificationError(
                    "threat_model.participants",
                    f"{at} (block {session.block}) recorded {session.participants} participants; a block's "
                    f"subset must hold between t = {t} and n = {threat_model.participants}",
                )
        for field, claimed, recorded in (
            ("participants", threat_model.participants, session.participants),
            ("secure_aggregation_threshold", threat_model.secure_aggregation_threshold, session.threshold),
            ("max_colluding_participants", c, session.colluders),
        ):
            if field == "participants" and session.block is not None:
                continue  # checked above: a block's subset
            if claimed != recorded:
                raise ReportVerificationError(
                    f"threat_model.{field}", f"is {claimed}, but {at} recorded {recorded}"
                )
    derived = derive_minimum_honest_survivors(sessions, colluders=c)
    if threat_model.minimum_honest_survivors != derived:
        raise ReportVerificationError(
            "threat_model.minimum_honest_survivors",
            f"is {threat_model.minimum_honest_survivors}; the ledger gives {derived} "
            "(smallest survivors over the secure-aggregation sessions minus max_colluding_participants)",
        )
    names = {e.event.participant for e in entries if e.event.mechanism is not Mechanism.SECURE_AGGREGATION}
    if len(names) > threat_model.participants:
        raise ReportVerificationError(
            "threat_model.participants",
            f"is {threat_model.participants}, but the ledger has events of {len(names)} participants",
        )
    summed = set(contributions(sessions))
    if len(summed) > threat_model.participants:
        raise ReportVerificationError(
            "threat_model.participants",
            f"is {threat_model.participants}, but the secure-aggregation sessions summed the inputs of "
            f"{len(summed)} participants",
        )


def _delta_key(delta: float) -> str:
    return repr(float(delta))


def gaussian_releases(entries: Iterable[LedgerEntry]) -> dict[str, list[accounting.GaussianRelease]]:
    """Return each participant's joint Gaussian releases: per release id, (sum of sigma_i^-2)^-1/2 and q."""
    grouped: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        event = entry.event
        if event.mechanism is Mechanism.GAUSSIAN:
            release = str(event.parameters.get("release", f"ledger[{entry.index}]"))
            for _ in range(event.count):
                grouped[event.participant][release].append(
                    (float(event.parameters["noise_multiplier"]), float(event.parameters["sample_rate"]))
                )
    result: dict[str, list[accounting.GaussianRelease]] = {}
    for participant, releases in grouped.items():
        result[participant] = []
        for release, parts in releases.items():
            rates = {rate for _, rate in parts}
            if len(rates) != 1:
                raise PrivacyError(f"release {release!r} mixes sample rates {sorted(rates)}")
            sigma = sum(s**-2 for s, _ in parts) ** -0.5
            result[participant].append(
                accounting.GaussianRelease(noise_multiplier=sigma, sample_rate=rates.pop())
            )
    return result


def _releases_per_block(entries: Iterable[LedgerEntry], participant: str) -> int:
    """Return the most joint Gaussian releases ``participant`` made of one block (2 in an OWL run: the
    allocation round's and the block's own)."""
    ids: dict[int | None, set[str]] = defaultdict(set)
    for entry in entries:
        event = entry.event
        if event.mechanism is Mechanism.GAUSSIAN and event.participant == participant:
            ids[event.block].add(str(event.parameters.get("release", f"ledger[{entry.index}]")))
    return max((len(found) for found in ids.values()), default=1)


def _gaussian_composition(method: str, per_block: int) -> str:
    if per_block <= 1:
        return f"{method}; one Poisson-subsampled Gaussian release per block"
    return f"{method}; {per_block} Poisson-subsampled Gaussian releases per block, one per round"


def _rr_usage(entries: Iterable[LedgerEntry]) -> dict[str, tuple[float, int]]:
    usage: dict[str, tuple[float, int]] = {}
    for entry in entries:
        event = entry.event
        if event.mechanism is Mechanism.RANDOMIZED_RESPONSE:
            epsilon0, coordinates = usage.get(event.participant, (0.0, 0))
            usage[event.participant] = (
                max(epsilon0, float(event.parameters["epsilon0"])),
                coordinates + event.count,
            )
    return usage


def compute_guarantees(
    entries: Sequence[LedgerEntry], inputs: AccountingInputs, threat_model: ThreatModel
) -> list[Guarantee]:
    """Return every guarantee, computed from the ledger entries and raw inputs only."""
    deltas = [inputs.delta, *inputs.extra_deltas]
    guarantees: list[Guarantee] = []
    for participant, releases in sorted(gaussian_releases(entries).items()):
        # The tolerance is planned at the stated delta and checked there only: the RDP/PRV gap grows
        # with delta, so checking it at the other deltas could refuse a run its own plan accepted.
        figures = [
            accounting.gaussian_epsilon(
                releases, delta=d, tolerance=inputs.accountant_tolerance, check_tolerance=d == inputs.delta
            )
            for d in deltas
        ]
        guarantees.append(
            Guarantee(
                layer="calibration_statistics",
                participant=participant,
                unit=PRIVACY_UNITS[0].unit,
                composition=_gaussian_composition(
                    figures[0].method, _releases_per_block(entries, participant)
                ),
                delta=inputs.delta,
                epsilon=figures[0].epsilon,
                epsilon_at={_delta_key(f.delta): f.epsilon for f in figures},
                details={"rdp": figures[0].rdp, "prv": figures[0].prv, "releases": len(releases)},
                assumptions=[
                    "noise from the CSPRNG as stated under rng",
                    "records fed in the same order to every sublayer of a block (one Poisson sample per block)",
                ],
            )
        )
    rr_usage = _rr_usage(entries)
    for participant, (epsilon0, coordinates) in sorted(rr_usage.items()):
        composed: dict[str, float | None] = {
            _delta_key(d): accounting.rr_epsilon(d, epsilon0=epsilon0, coordinates=coordinates)
            for d in deltas
        }
        guarantees.append(
            Guarantee(
                layer="mask_bits",
                participant=participant,
                unit=PRIVACY_UNITS[1].unit,
                composition=accounting.RRComposition.method,
                delta=inputs.delta,
                epsilon=composed[_delta_key(inputs.delta)],
                epsilon_at=composed,
                details={
                    "epsilon0_per_coordinate": epsilon0,
                    "coordinates": coordinates,
                    "naive_epsilon_at_delta_0": epsilon0 * coordinates,
                },
                assumptions=["one noisy bit per weight per run; largest eps0 used when they differ"],
            )
        )
    sessions = secure_aggregation_sessions(entries)
    if rr_usage and sessions:
        epsilon0 = max(e0 for e0, _ in rr_usage.values())
        honest = threat_model.minimum_honest_survivors or 0
        bounds = [
            accounting.shuffle_amplification(epsilon0=epsilon0, honest_voters=honest, delta=d) for d in deltas
        ]
        assumptions = list(accounting.SHUFFLE_ASSUMPTIONS)
        if any(s.summed is SummedInputs.KEEP_VOTES_AND_WEIGHT_UPDATES for s in sessions):
            # The bound's first assumption is false: the coordinator also sees the weight-update sums,
            # which show a lone keep-voter's raw bit. No amplified figure at any delta.
            bounds = [
                dataclasses.replace(b, valid=False, epsilon=None, reason=AMPLIFICATION_INVALID_WITH_UPDATES)
                for b in bounds
            ]
            assumptions[0] += " (does not hold in this run: the weight-update sums are seen too)"
        guarantees.append(
            Guarantee(
                layer="aggregation",
                participant="*",
                unit=PRIVACY_UNITS[2].unit,
                composition=bounds[0].method,
                delta=inputs.delta,
                epsilon=bounds[0].epsilon,
                epsilon_at={_delta_key(b.delta): b.epsilon for b in bounds},
                details={
                    "valid": bounds[0].valid,
                    "reason": bounds[0].reason,
                    "epsilon0": epsilon0,
                    "honest_voters": honest,
                },
                assumptions=assumptions,
            )
        )
    return guarantees


def is_close(
    reported: float | None, recomputed: float | None, *, rel: float = 1e-4, abs_: float = 1e-9
) -> bool:
    """Return True when a reported figure matches its recomputation (both None counts as a match)."""
    if reported is None or recomputed is None:
        return reported is None and recomputed is None
    if math.isinf(reported) or math.isinf(recomputed):
        return reported == recomputed
    return math.isclose(reported, recomputed, rel_tol=rel, abs_tol=abs_)
