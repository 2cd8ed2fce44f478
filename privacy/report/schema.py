"""The privacy report's models: the versioned, signed :class:`PrivacyReport` and its JSON Schema.

Everything here is the file format: what a report holds, and the constraints a report must meet to parse
(a threat model that does not contradict itself, hex keys and signatures). What the ledger implies
about those fields is in :mod:`privacy.report.guarantees`; the checks an auditor runs in
:mod:`privacy.report.verify`. ``report_json_schema()`` equals the committed ``privacy/report_schema.json``
(a test checks it; ``python -m privacy.report`` rewrites it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from privacy import accounting
from privacy.dp_random import GAUSSIAN_SAMPLER, RNG_SOURCE
from privacy.durable import write_durably
from privacy.errors import PrivacyError
from privacy.ledger import LedgerEntry, canonical_json
from privacy.randomized_response import THRESHOLD_BITS
from privacy.secagg.parameters import tolerated_colluders
from privacy.signing import REPORT_SIGNATURE_CONTEXT, ParticipantStatement

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
SCHEMA_PATH = Path(__file__).parent.parent / "report_schema.json"

Detail = bool | int | float | str | None


class ReportVerificationError(PrivacyError):
    """A report failed a check; ``field`` is the path of the first field that does not match."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


def report_json_schema() -> dict[str, object]:
    """Return the JSON Schema of :class:`PrivacyReport` (the content of privacy/report_schema.json)."""
    return PrivacyReport.model_json_schema()


def write_report_schema(path: Path = SCHEMA_PATH) -> Path:
    """Return ``path`` after writing the current JSON Schema of the report to it."""
    text = json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n"
    write_durably(path, text.encode("utf-8"))
    return path
