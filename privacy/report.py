"""The signed privacy report: a versioned pydantic model, its guarantees, Ed25519 signing, JSON Schema.

Public API::

    report = build_report(ledger=ledger, threat_model=ThreatModel(participants=4,
                          secure_aggregation_threshold=3, max_colluding_participants=1),
                          delta=1e-5, run_id="run-42", exclusions=["embeddings and LM head: not pruned"],
                          participant_statements=[...])   # checked as `audit verify` would, or raises
    path = write_signed_report(report, signing_key_path, out)   # long-term key; verified, then written
    signed = sign_report(report, private_key)           # cryptography Ed25519PrivateKey (long-term)
    PrivacyReport.from_json(text)
    compute_guarantees(entries, inputs, threat_model)   # the figures, from the ledger and raw inputs only
    check_threat_model(threat_model, entries)           # the threat model against the secure-aggregation events
    report_json_schema()                                # == privacy/report_schema.json (a test checks it)

Verification and rendering are in :mod:`privacy.report_verify` (``verify_report``, ``render_markdown``,
``render_html``); keys and participants' statements in :mod:`privacy.signing`. Signature: Ed25519 over
``b"fedprune privacy report v2\\0"`` and the canonical JSON (sorted keys, no whitespace, UTF-8) of the
report's JSON form without its ``signature`` field; it covers the participants' signed statements.

A report covers exactly one run (``runs_covered`` = 1, ``composition_across_runs`` says how runs on the
same data add up); budgets across runs are kept by :mod:`privacy.budget`.

Guarantees (one per layer and participant, see docs/PRIVACY.md):

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
lists every site whose input was summed; ``audit verify`` fails on one without a signed statement.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import platform
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, model_validator

from privacy import accounting
from privacy.dp_random import GAUSSIAN_SAMPLER, RNG_SOURCE
from privacy.errors import PrivacyError
from privacy.ledger import LedgerEntry, Mechanism, PrivacyLedger, canonical_json, verify_chain
from privacy.randomized_response import THRESHOLD_BITS
from privacy.signing import (
    REPORT_SIGNATURE_CONTEXT,
    ParticipantStatement,
    TrustedKey,
    grouped_fingerprint,
    load_or_create_signing_key,
)

logger = logging.getLogger(__name__)

# Version 3: secure-aggregation events name their contributors and what they summed, and the threat model
# states the data-dependent aborts; a version-2 report is refused by name instead of failing on a field.
REPORT_VERSION: Literal["3"] = "3"
ACROSS_RUNS = (
    "This report covers exactly one run (run_id). Guarantees compose across runs on the same data: a "
    "participant whose records took part in several runs has spent, by basic composition, the sum of the "
    "runs' epsilons and the sum of their deltas (conservative; tighter composition exists). This report "
    "does not show that total; each participant's lifetime budget ledger does."
)
DATA_DEPENDENT_ABORTS = (
    "Whether each site completes the run depends on its data, and the coordinator sees it: a site that "
    "joined stops before its first secure-aggregation session, and drops out of the run, when its "
    "calibration file fails a data check: under record-level DP, no document holds 8 or more tokens; "
    "without record-level DP, the file holds fewer tokens than one window or fewer windows than nsamples; "
    "under either, a token outside the model's vocabulary or a window longer than the model's context. "
    "The reason is not sent, but the drop-out is visible, and no guarantee of this report covers it."
)
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
_LIBRARIES = ("fedprune", "torch", "opacus", "cryptography", "numpy", "pydantic", "transformers")

Detail = bool | int | float | str | None


class ReportVerificationError(PrivacyError):
    """A report failed a check; ``field`` is the path of the first field that does not match."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def tolerated_colluders(participants: int, threshold: int) -> int:
    """Return the most colluders c that threshold t tolerates among n: c < t and t > (n + c) / 2."""
    return max(0, min(threshold - 1, 2 * threshold - participants - 1))


class ThreatModel(_Frozen):
    """Who is trusted with what; the assumptions under which the guarantees hold.

    ``minimum_honest_survivors`` is derived, never chosen: the smallest number of survivors whose inputs
    were summed in any secure-aggregation session of the ledger, minus the colluders assumed
    (``max_colluding_participants``); ``None`` when the run had no secure aggregation. ``build_report``
    fills it in and ``audit verify`` recomputes it.
    """

    coordinator: Literal["active-in-secure-aggregation"] = Field(
        default="active-in-secure-aggregation",
        description="what the coordinator is assumed to do. 'active-in-secure-aggregation': it may deviate "
        "in any way in secure aggregation (forge, reorder, reroute, retry sessions, lie about who survived "
        "or who is who) and learns no more than one sum per vector over one survivor set, with at most "
        "c colluders (docs/SECURE_AGGREGATION.md); outside secure aggregation (the run's parameters, "
        "pruning, this report) it is trusted to follow the run",
    )
    participants: int = Field(
        ge=1,
        description="n: participants in every secure-aggregation session; under block assignment a block's "
        "session (its ledger event names the block) runs over a subset of at least t of them",
    )
    secure_aggregation_threshold: int = Field(ge=1, description="t: shares needed to reconstruct")
    max_colluding_participants: int | None = Field(
        default=None,
        ge=0,
        description="c: participants assumed to collude with the coordinator; when not given, the most "
        "the threshold tolerates (c < t and t > (n + c) / 2)",
    )
    minimum_honest_survivors: int | None = Field(
        default=None,
        ge=0,
        description="derived: smallest survivors over the secure-aggregation sessions minus c",
    )
    input_validity_proof: bool = False
    transport: str = "gRPC over mutual TLS"
    data_dependent_aborts: str = Field(
        default=DATA_DEPENDENT_ABORTS,
        description="what the coordinator observes of a site's data outside every guarantee: the aborts",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_collusion(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("max_colluding_participants") is None:
            threshold = data.get("secure_aggregation_threshold")
            participants = data.get("participants")
            if isinstance(threshold, int) and isinstance(participants, int):
                data = {**data, "max_colluding_participants": tolerated_colluders(participants, threshold)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ThreatModel:
        n, t = self.participants, self.secure_aggregation_threshold
        c = (
            self.max_colluding_participants
            if self.max_colluding_participants is not None
            else tolerated_colluders(n, t)
        )
        if t > n:
            raise ValueError(
                f"threat_model.secure_aggregation_threshold ({t}) cannot exceed threat_model.participants ({n})"
            )
        if c >= t:
            # t colluders hold enough shares to unmask an honest participant's input.
            raise ValueError(
                f"threat_model.max_colluding_participants ({c}) must be below "
                f"threat_model.secure_aggregation_threshold ({t})"
            )
        if n > 1 and 2 * t <= n + c:
            # A coordinator that tells survivors different stories about who dropped collects both share
            # kinds of one participant unless t > (n + c) / 2 (docs/SECURE_AGGREGATION.md, split view).
            raise ValueError(
                f"threat_model.secure_aggregation_threshold ({t}) must exceed (participants + "
                f"max_colluding_participants) / 2 = ({n} + {c}) / 2"
            )
        honest = self.minimum_honest_survivors
        if honest is not None and c + honest > n:
            raise ValueError(
                f"threat_model.max_colluding_participants ({c}) + threat_model.minimum_honest_survivors "
                f"({honest}) cannot exceed threat_model.participants ({n})"
            )
        return self


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


class PrivacyUnit(_Frozen):
    """What one guarantee protects, and which datasets count as neighbours."""

    layer: str
    unit: str
    neighbouring_relation: str


class RngSource(_Frozen):
    """Where the noise came from."""

    csprng: str = RNG_SOURCE
    gaussian_sampler: str = GAUSSIAN_SAMPLER
    rr_threshold_bits: int = THRESHOLD_BITS


class AccountingInputs(_Frozen):
    """The raw inputs, besides the ledger, from which every figure is recomputed."""

    delta: float = Field(gt=0, lt=1)
    extra_deltas: list[float] = Field(default_factory=list)
    accountant_tolerance: float = Field(
        default=accounting.DEFAULT_ACCOUNTANT_TOLERANCE,
        gt=0,
        description="largest RDP/PRV gap accepted, checked at `delta` only (where it was planned)",
    )


class Guarantee(_Frozen):
    """One layer's guarantee for one participant (or for the aggregate view, participant '*')."""

    layer: Literal["calibration_statistics", "mask_bits", "aggregation"]
    participant: str
    unit: str
    composition: str
    delta: float
    epsilon: float | None
    epsilon_at: dict[str, float | None] = Field(description="delta (repr) -> epsilon")
    details: dict[str, Detail]
    assumptions: list[str] = Field(default_factory=list)


class Signature(_Frozen):
    """Ed25519 signature over the context string and the canonical JSON of the report without this field."""

    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="raw public key, hex")
    value: str = Field(pattern=r"^[0-9a-f]{128}$", description="signature, hex")


PRIVACY_UNITS = [
    PrivacyUnit(
        layer="calibration_statistics",
        unit="one document of one participant's calibration file (all of its windows)",
        neighbouring_relation="add or remove one document of the participant's calibration file",
    ),
    PrivacyUnit(
        layer="mask_bits",
        unit="one participant's randomized keep-vote mask (per coordinate: one weight's bit)",
        neighbouring_relation="any change of the participant's mask bits (each coordinate may change)",
    ),
    PrivacyUnit(
        layer="aggregation",
        unit="one participant's bit at one coordinate, as seen by the coordinator through the sum",
        neighbouring_relation="replace one honest participant's bit",
    ),
]


class PrivacyReport(_Frozen):
    """Everything an auditor needs to check a run's privacy claims, signed."""

    report_version: Literal["3"] = REPORT_VERSION
    run_id: str = Field(min_length=1)
    runs_covered: Literal[1] = Field(default=1, description="a report covers exactly one run")
    composition_across_runs: str = ACROSS_RUNS
    created_at: str
    library_versions: dict[str, str]
    threat_model: ThreatModel
    privacy_units: list[PrivacyUnit]
    rng: RngSource
    inputs: AccountingInputs
    ledger: list[LedgerEntry]
    ledger_head: str = Field(pattern=r"^[0-9a-f]{64}$")
    guarantees: list[Guarantee]
    exclusions: list[str] = Field(default_factory=list)
    participant_statements: list[ParticipantStatement] = Field(
        default_factory=list, description="each participant's own signed statement of its events"
    )
    signature: Signature | None = None

    def signed_payload(self) -> bytes:
        """Return the bytes the signature covers: context + canonical JSON of the report without ``signature``."""
        return REPORT_SIGNATURE_CONTEXT + canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def to_json(self) -> str:
        """Return the report as indented JSON (the file format)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> PrivacyReport:
        """Return the report parsed and validated from its JSON form."""
        return cls.model_validate_json(text)


def library_versions() -> dict[str, str]:
    """Return the versions of Python and the libraries the figures depend on."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
                composition=f"{figures[0].method}; one Poisson-subsampled Gaussian release per block",
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
        if any(s.summed is not SummedInputs.KEEP_VOTES for s in sessions):
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


def build_report(
    *,
    ledger: PrivacyLedger,
    threat_model: ThreatModel,
    delta: float,
    run_id: str,
    extra_deltas: Sequence[float] | None = None,
    accountant_tolerance: float = accounting.DEFAULT_ACCOUNTANT_TOLERANCE,
    exclusions: Sequence[str] = (),
    created_at: str | None = None,
    participant_statements: Sequence[ParticipantStatement] = (),
) -> PrivacyReport:
    """Return the unsigned report of a run after checking it as ``audit verify`` would (all but the signature).

    ``threat_model.minimum_honest_survivors`` is derived from the ledger's secure-aggregation events; a
    caller-given value that differs is refused. Raises :class:`ReportVerificationError` (a PrivacyError)
    naming the field when the ledger, threat model, statements or accountants do not hold together, so a
    caller that builds the report first never writes a model whose report would not verify.
    """
    from privacy.report_verify import check_unsigned  # report_verify imports this module

    if extra_deltas is None:
        extra_deltas = [float(f"{d:.6g}") for d in (delta * 10, delta / 10, delta / 100) if 0 < d < 1]
    inputs = AccountingInputs(
        delta=delta, extra_deltas=list(extra_deltas), accountant_tolerance=accountant_tolerance
    )
    entries = list(ledger.entries)
    head = verify_chain(entries)
    colluders = threat_model.max_colluding_participants
    assert colluders is not None  # filled in by the model's validator
    derived = derive_minimum_honest_survivors(secure_aggregation_sessions(entries), colluders=colluders)
    if threat_model.minimum_honest_survivors not in (None, derived):
        raise ReportVerificationError(
            "threat_model.minimum_honest_survivors",
            f"is derived from the ledger ({derived}: smallest survivors minus max_colluding_participants); "
            f"do not set it (given {threat_model.minimum_honest_survivors})",
        )
    try:
        threat_model = ThreatModel.model_validate(
            {**threat_model.model_dump(), "minimum_honest_survivors": derived}
        )
    except ValueError as error:
        raise ReportVerificationError("threat_model", str(error)) from None
    check_threat_model(threat_model, entries)
    report = PrivacyReport(
        run_id=run_id,
        created_at=created_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        library_versions=library_versions(),
        threat_model=threat_model,
        privacy_units=PRIVACY_UNITS,
        rng=RngSource(),
        inputs=inputs,
        ledger=entries,
        ledger_head=head,
        guarantees=compute_guarantees(entries, inputs, threat_model),
        exclusions=list(exclusions),
        participant_statements=list(participant_statements),
    )
    check_unsigned(report, recompute=False)  # the figures were just computed from the same inputs
    return report


def sign_report(report: PrivacyReport, private_key: Ed25519PrivateKey) -> PrivacyReport:
    """Return a copy of ``report`` carrying an Ed25519 signature by ``private_key``.

    Use the coordinator's long-term key (:func:`privacy.signing.load_or_create_signing_key`); a key
    made for one run proves nothing about who signed.
    """
    unsigned = report.model_copy(update={"signature": None})
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = private_key.sign(unsigned.signed_payload())
    return unsigned.model_copy(
        update={"signature": Signature(public_key=public.hex(), value=signature.hex())}
    )


def write_signed_report(report: PrivacyReport, signing_key_path: str | Path, out: str | Path) -> Path:
    """Return the path of the report written after signing it with the long-term key and verifying it.

    ``signing_key_path`` is loaded, or created (0600, public half at ``<signing_key_path>.pub``) if
    absent. ``out`` is the report file, or a directory that receives ``privacy_report.json``. The signed
    report is verified against the key it was signed with before anything is written, and written
    atomically (temporary file, fsync, rename), so a reader never sees half a report.
    """
    from privacy.report_verify import verify_report  # report_verify imports this module

    key = load_or_create_signing_key(signing_key_path)
    signed = sign_report(report, key)
    # A site that sent no statement is listed as such in the report, not a reason to withhold it.
    verify_report(
        signed, trusted_public_key=TrustedKey.from_public_key(key.public_key()), allow_missing_statements=True
    )
    target = Path(out)
    if target.is_dir():
        target = target / "privacy_report.json"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(signed.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    logger.info(
        "privacy report %s signed by key %s (give auditors this fingerprint out of band)",
        target,
        grouped_fingerprint(key),
    )
    return target


def report_json_schema() -> dict[str, object]:
    """Return the JSON Schema of :class:`PrivacyReport` (the content of privacy/report_schema.json)."""
    return PrivacyReport.model_json_schema()


def write_report_schema(path: Path = SCHEMA_PATH) -> Path:
    """Return ``path`` after writing the current JSON Schema of the report to it."""
    import json

    path.write_text(json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def is_close(
    reported: float | None, recomputed: float | None, *, rel: float = 1e-4, abs_: float = 1e-9
) -> bool:
    """Return True when a reported figure matches its recomputation (both None counts as a match)."""
    if reported is None or recomputed is None:
        return reported is None and recomputed is None
    if math.isinf(reported) or math.isinf(recomputed):
        return reported == recomputed
    return math.isclose(reported, recomputed, rel_tol=rel, abs_tol=abs_)


if __name__ == "__main__":
    print(write_report_schema())
