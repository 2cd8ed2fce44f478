"""Checking a privacy report: what ``fedprune audit verify`` runs, and ``audit show`` before rendering.

Public API::

    verify_report(report_or_json, trusted_public_key=None, trusted_participant_keys=None,
                  allow_missing_statements=False) -> VerifiedReport
    check_unsigned(report, recompute=True) -> int   # every check but the signature (build_report runs it)
    ReportVerificationError.field                    # e.g. "guarantees[0].epsilon", "threat_model.participants"

Order of checks, each naming the first field that does not match: the schema (pydantic), the hash chain
and ``ledger_head``, the parameters each ledger event derives from others (RR eps0 and flip probability
from the integer threshold; Gaussian per-statistic multipliers from the block multiplier and clip share;
clip shares of one release with squares summing to at most 1; secure-aggregation events' participants,
threshold, survivors, colluders, the survivors' names and what was summed), the run scope, the threat
model against the secure-aggregation events (participants, threshold, colluders, and minimum honest
survivors = smallest survivors - colluders), each participant statement (its signature, its run id, and
its events equal to that participant's events in the ledger, so the coordinator cannot forge a site's
claim), every guarantee recomputed from the ledger and ``inputs`` (relative tolerance 1e-4; the
aggregation bound only where the sessions summed keep-votes alone), the coordinator's Ed25519 signature
over the whole, and last that every site whose input was summed (or whose events the ledger holds) sent
a signed statement, unless ``allow_missing_statements``.

Authentication needs keys pinned out of band: ``trusted_public_key`` for the coordinator (a public key or
a :class:`~privacy.signing.TrustedKey` fingerprint) and ``trusted_participant_keys`` (name -> pin) for the
sites. Without a pin a signature proves only that the report (or statement) is self-consistent under the
key embedded in it: anyone can re-sign a forged report with a fresh key. The result says which.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from privacy.errors import PrivacyError
from privacy.ledger import ChainError, Mechanism, verify_chain
from privacy.randomized_response import THRESHOLD_BITS, epsilon0_from_threshold
from privacy.report.guarantees import (
    check_threat_model,
    compute_guarantees,
    contributions,
    is_close,
    secure_aggregation_sessions,
)
from privacy.report.schema import ACROSS_RUNS, PrivacyReport, ReportVerificationError
from privacy.signing import (
    StatementError,
    TrustedKey,
    grouped_fingerprint,
    verify_statement_signature,
)

logger = logging.getLogger(__name__)

UNAUTHENTICATED = "self-consistent, unauthenticated"


class MissingStatementError(ReportVerificationError):
    """A site whose input was summed (or whose events the ledger holds) sent no signed statement."""

    def __init__(self, missing: tuple[MissingStatement, ...]) -> None:
        first = missing[0]
        super().__init__(
            "participant_statements",
            f"has no statement by {first.participant!r} ({len(missing)} participant(s) without one): "
            f"{first.meaning}",
        )
        self.missing = missing


@dataclasses.dataclass(frozen=True)
class StatementCheck:
    """A participant statement that verified, and whether its key was pinned by the auditor."""

    participant: str
    fingerprint: str
    authenticated: bool
    events: int


@dataclasses.dataclass(frozen=True)
class MissingStatement:
    """A participant the report names (a contributor to a sum, or events in the ledger) without a statement."""

    participant: str
    blocks: tuple[int | None, ...]
    """The blocks of the secure-aggregation sessions that summed its input (empty: none did)."""
    has_events: bool
    """Whether the ledger holds mechanism events of it (then attested by the coordinator alone)."""

    @property
    def meaning(self) -> str:
        """Return what the missing statement means for this participant's guarantee, in words."""
        if self.blocks:
            where = ", ".join("the run" if b is None else str(b) for b in self.blocks)
            summed = f"its input was summed in block(s) {where}, but it sent no signed statement"
        else:
            summed = "it sent no signed statement"
        if self.has_events:
            return (
                f"{summed}: its events in the ledger, and so its guarantees in this report, rest on the "
                "coordinator's word alone"
            )
        return (
            f"{summed} and the ledger holds no event of it: this report states no guarantee for it, and "
            "nothing here says which randomized response or record-level DP it applied"
        )


@dataclasses.dataclass(frozen=True)
class VerifiedReport:
    """A report that passed every check, and what its signatures prove."""

    report: PrivacyReport
    signer_trusted: bool
    """True only when the coordinator's key matched a key pinned by the auditor."""
    checked_figures: int
    signer_fingerprint: str = ""
    statements: tuple[StatementCheck, ...] = ()
    missing_statements: tuple[MissingStatement, ...] = ()
    """Participants that contributed to a sum or have ledger events, but sent no signed statement."""

    @property
    def unattested_participants(self) -> tuple[str, ...]:
        """Return the names of the participants without a signed statement."""
        return tuple(m.participant for m in self.missing_statements)

    @property
    def authentication(self) -> str:
        """Return what the coordinator's signature proves, in words."""
        if self.signer_trusted:
            return f"authenticated: signed by the pinned key {self.signer_fingerprint}"
        return (
            f"UNAUTHENTICATED: {UNAUTHENTICATED} under the key embedded in the report (fingerprint "
            f"{self.signer_fingerprint}); anyone can re-sign a forged report with a fresh key, so nothing "
            "in it is vouched for until the coordinator's key is pinned"
        )


def _parse(report: PrivacyReport | str | bytes | dict[str, Any]) -> PrivacyReport:
    if isinstance(report, PrivacyReport):
        return report
    try:
        if isinstance(report, dict):
            return PrivacyReport.model_validate(report)
        return PrivacyReport.from_json(report)
    except ValidationError as error:
        first = error.errors()[0]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(
            "."
        )
        raise ReportVerificationError(path or "report", first["msg"]) from None


def _check_event_parameters(report: PrivacyReport) -> None:
    shares: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for position, entry in enumerate(report.ledger):
        event, where = entry.event, f"ledger[{position}].parameters"
        params = event.parameters
        try:
            if event.mechanism is Mechanism.RANDOMIZED_RESPONSE:
                threshold = int(params["threshold"])
                if int(params.get("threshold_bits", THRESHOLD_BITS)) != THRESHOLD_BITS:
                    raise ReportVerificationError(f"{where}.threshold_bits", f"expected {THRESHOLD_BITS}")
                if not is_close(float(params["epsilon0"]), epsilon0_from_threshold(threshold), rel=1e-12):
                    raise ReportVerificationError(f"{where}.epsilon0", "does not follow from the threshold")
                if not is_close(float(params["flip_probability"]), threshold / 2**THRESHOLD_BITS, rel=1e-12):
                    raise ReportVerificationError(
                        f"{where}.flip_probability", "does not follow from the threshold"
                    )
            elif event.mechanism is Mechanism.GAUSSIAN:
                share = float(params["clip_share"])
                expected = float(params["block_noise_multiplier"]) / share
                if not is_close(float(params["noise_multiplier"]), expected, rel=1e-12):
                    raise ReportVerificationError(
                        f"{where}.noise_multiplier", "is not block_noise_multiplier / clip_share"
                    )
                if float(params.get("clip_norm", 1.0)) != 1.0:
                    raise ReportVerificationError(f"{where}.clip_norm", "must be 1 (unit-norm records)")
                shares[str(params.get("release", position))].append((position, share))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ReportVerificationError):
                raise
            raise ReportVerificationError(where, f"missing or malformed parameter: {error}") from None
    for parts in shares.values():
        if sum(share**2 for _, share in parts) > 1.0 + 1e-9:
            raise ReportVerificationError(
                f"ledger[{parts[-1][0]}].parameters.clip_share",
                "the clip shares of one release have squares summing to more than 1",
            )


def _compare_guarantees(report: PrivacyReport) -> int:
    try:
        recomputed = compute_guarantees(report.ledger, report.inputs, report.threat_model)
    except PrivacyError as error:
        raise ReportVerificationError("guarantees", f"cannot be recomputed: {error}") from None
    if len(recomputed) != len(report.guarantees):
        raise ReportVerificationError(
            "guarantees",
            f"the ledger gives {len(recomputed)} guarantees, the report lists {len(report.guarantees)}",
        )
    checked = 0
    for index, (reported, expected) in enumerate(zip(report.guarantees, recomputed, strict=True)):
        where = f"guarantees[{index}]"
        for name in ("layer", "participant", "unit", "composition", "delta", "assumptions"):
            if getattr(reported, name) != getattr(expected, name):
                raise ReportVerificationError(f"{where}.{name}", f"expected {getattr(expected, name)!r}")
        if not is_close(reported.epsilon, expected.epsilon):
            raise ReportVerificationError(
                f"{where}.epsilon", f"reported {reported.epsilon}, recomputed {expected.epsilon}"
            )
        checked += 1
        if set(reported.epsilon_at) != set(expected.epsilon_at):
            raise ReportVerificationError(f"{where}.epsilon_at", "lists different deltas than the inputs")
        for key, value in expected.epsilon_at.items():
            if not is_close(reported.epsilon_at[key], value):
                raise ReportVerificationError(
                    f"{where}.epsilon_at.{key}", f"reported {reported.epsilon_at[key]}, recomputed {value}"
                )
            checked += 1
        if set(reported.details) != set(expected.details):
            raise ReportVerificationError(f"{where}.details", "has different fields than recomputed")
        for key, detail in expected.details.items():
            mine = reported.details[key]
            numeric = isinstance(detail, (int, float)) and not isinstance(detail, bool)
            if (
                isinstance(detail, (int, float))
                and numeric
                and (
                    isinstance(mine, bool)
                    or not isinstance(mine, (int, float))
                    or not is_close(float(mine), float(detail))
                )
            ):
                raise ReportVerificationError(
                    f"{where}.details.{key}", f"reported {mine}, recomputed {detail}"
                )
            if not numeric and mine != detail:
                raise ReportVerificationError(
                    f"{where}.details.{key}", f"reported {mine!r}, recomputed {detail!r}"
                )
            checked += 1
    return checked


def _check_statements(
    report: PrivacyReport, pins: Mapping[str, TrustedKey]
) -> tuple[tuple[StatementCheck, ...], tuple[MissingStatement, ...]]:
    own_events: dict[str, list[Any]] = defaultdict(list)
    for entry in report.ledger:
        own_events[entry.event.participant].append(entry.event)
    checks: list[StatementCheck] = []
    seen: set[str] = set()
    for index, statement in enumerate(report.participant_statements):
        where = f"participant_statements[{index}]"
        if statement.participant in seen:
            raise ReportVerificationError(
                f"{where}.participant", f"{statement.participant!r} has two statements"
            )
        seen.add(statement.participant)
        if statement.run_id != report.run_id:
            raise ReportVerificationError(
                f"{where}.run_id", f"is {statement.run_id!r}, the report's run is {report.run_id!r}"
            )
        try:
            verify_statement_signature(statement, field=where)
        except StatementError as error:
            raise ReportVerificationError(error.field, str(error).split(": ", 1)[-1]) from None
        # The statement must say exactly what the ledger says of this participant: the coordinator
        # writes the ledger, so a ledger event the participant did not sign is the coordinator's claim.
        expected = own_events.get(statement.participant, [])
        for position, (claimed, recorded) in enumerate(zip(statement.events, expected, strict=False)):
            if claimed != recorded:
                raise ReportVerificationError(
                    f"{where}.events[{position}]",
                    f"differs from {statement.participant!r}'s event in the ledger",
                )
        if len(statement.events) != len(expected):
            raise ReportVerificationError(
                f"{where}.events",
                f"lists {len(statement.events)} events; the ledger has {len(expected)} "
                f"of {statement.participant!r}",
            )
        pin = pins.get(statement.participant)
        if pin is not None and not pin.matches(bytes.fromhex(statement.public_key)):
            raise ReportVerificationError(
                f"{where}.public_key", f"is not the key pinned for {statement.participant!r}"
            )
        checks.append(
            StatementCheck(
                participant=statement.participant,
                fingerprint=grouped_fingerprint(bytes.fromhex(statement.public_key)),
                authenticated=pin is not None,
                events=len(statement.events),
            )
        )
    missing = sorted(set(pins) - seen)
    if missing:
        raise ReportVerificationError(
            "participant_statements", f"has no statement by the pinned participant {missing[0]!r}"
        )
    summed = contributions(secure_aggregation_sessions(report.ledger))
    with_events = {
        name
        for name, events in own_events.items()
        if any(e.mechanism is not Mechanism.SECURE_AGGREGATION for e in events)
    }
    absent = tuple(
        MissingStatement(participant=name, blocks=summed.get(name, ()), has_events=name in with_events)
        for name in sorted((set(summed) | with_events) - seen)
    )
    return tuple(checks), absent


def check_unsigned(report: PrivacyReport, *, recompute: bool = True) -> int:
    """Return the number of figures recomputed after every check but the coordinator's signature.

    Raises ReportVerificationError naming the first field that does not match. ``recompute=False``
    skips recomputing the guarantees (for a report whose figures were just computed).
    """
    try:
        head = verify_chain(report.ledger)
    except ChainError as error:
        raise ReportVerificationError(error.field, str(error).split(": ", 1)[-1]) from None
    if head != report.ledger_head:
        raise ReportVerificationError("ledger_head", "is not the hash of the last ledger entry")
    _check_event_parameters(report)
    secure_aggregation_sessions(report.ledger)
    if report.composition_across_runs != ACROSS_RUNS:
        raise ReportVerificationError("composition_across_runs", "is not the statement this version makes")
    check_threat_model(report.threat_model, report.ledger)
    _check_statements(report, {})
    return _compare_guarantees(report) if recompute else 0


def _as_pin(key: Ed25519PublicKey | TrustedKey) -> TrustedKey:
    return key if isinstance(key, TrustedKey) else TrustedKey.from_public_key(key)


def verify_report(
    report: PrivacyReport | str | bytes | dict[str, Any],
    *,
    trusted_public_key: Ed25519PublicKey | TrustedKey | None = None,
    trusted_participant_keys: Mapping[str, Ed25519PublicKey | TrustedKey] | None = None,
    allow_missing_statements: bool = False,
) -> VerifiedReport:
    """Return the verified report; raise ReportVerificationError naming the first field that does not match.

    Without ``trusted_public_key`` the coordinator's signature is checked under the key embedded in the
    report, which proves self-consistency only (``signer_trusted`` is False). Participants named in
    ``trusted_participant_keys`` must have a statement signed by exactly that key. Every participant
    whose input a secure-aggregation session summed, or whose events the ledger holds, must have a
    signed statement; with ``allow_missing_statements`` the report verifies without it and
    ``missing_statements`` says who and what that means for its guarantee.
    """
    parsed = _parse(report)
    checked = check_unsigned(parsed)
    pins = {name: _as_pin(key) for name, key in (trusted_participant_keys or {}).items()}
    statements, absent = _check_statements(parsed, pins)
    if parsed.signature is None:
        raise ReportVerificationError("signature", "the report is not signed")
    embedded = bytes.fromhex(parsed.signature.public_key)
    if trusted_public_key is not None and not _as_pin(trusted_public_key).matches(embedded):
        raise ReportVerificationError("signature.public_key", "is not the trusted key")
    try:
        Ed25519PublicKey.from_public_bytes(embedded).verify(
            bytes.fromhex(parsed.signature.value), parsed.signed_payload()
        )
    except InvalidSignature:
        raise ReportVerificationError("signature.value", "does not verify over the report") from None
    verified = VerifiedReport(
        report=parsed,
        signer_trusted=trusted_public_key is not None,
        checked_figures=checked,
        signer_fingerprint=grouped_fingerprint(embedded),
        statements=statements,
        missing_statements=absent,
    )
    if absent and not allow_missing_statements:
        raise MissingStatementError(absent)
    return verified
