"""coordinator.report.check_statement: a site's signed statement against the report's schema and the run.

A site signs its own statement, so its signature proves nothing about its contents: every event must be
of the schema the report recomputes from (``privacy.ledger.check_event_parameters``) and within the run's
bounds, and whatever passes must build a report, quickly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from coordinator.report import StatementBounds, build_run_report, check_statement, secure_aggregation_event
from privacy.ledger import Mechanism, MechanismEvent
from privacy.signing import StatementError, raw_public_key, sign_participant_statement

RUN_ID = "ab" * 16
BOUNDS = StatementBounds(block_dimensions=(64, 64), statistics_per_block=4, sample_rate=0.1)
KEY = Ed25519PrivateKey.generate()


def _gaussian(**changes: Any) -> MechanismEvent:
    parameters: dict[str, Any] = {
        "noise_multiplier": 2.0,
        "block_noise_multiplier": 2.0,
        "clip_share": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.1,
        "dimension": 8,
        "release": "site-a/round0/block0",
        "sublayers": "q,k,v",
        "shrinkage": "none",
    }
    parameters.update(changes.pop("parameters", {}))
    parameters = {k: v for k, v in parameters.items() if v is not None}  # None: the parameter is missing
    values: dict[str, Any] = {"block": 0, "count": 1, "participant": "site-a", **changes}
    return MechanismEvent(mechanism=Mechanism.GAUSSIAN, parameters=parameters, **values)


def _randomized(**changes: Any) -> MechanismEvent:
    parameters: dict[str, Any] = {
        "epsilon0": math.log((2**32 - 77_794_684) / 77_794_684),
        "requested_epsilon0": 4.0,
        "threshold": 77_794_684,
        "threshold_bits": 32,
        "flip_probability": 77_794_684 / 2**32,
    }
    parameters.update(changes.pop("parameters", {}))
    parameters = {k: v for k, v in parameters.items() if v is not None}
    values: dict[str, Any] = {"block": 0, "count": 64, "participant": "site-a", **changes}
    return MechanismEvent(mechanism=Mechanism.RANDOMIZED_RESPONSE, parameters=parameters, **values)


def _check(*events: MechanismEvent) -> Any:
    statement = (
        sign_participant_statement(participant="site-a", run_id=RUN_ID, events=list(events), private_key=KEY)
        if all(e.participant == "site-a" for e in events)
        else None
    )
    if statement is None:  # a foreign event: signed as-is, bypassing the signer's own check
        statement = _sign_raw(list(events))
    check_statement(statement, name="site-a", run_id=RUN_ID, public_key=raw_public_key(KEY), bounds=BOUNDS)
    return statement


def _sign_raw(events: list[MechanismEvent]) -> Any:
    from privacy.signing import ParticipantStatement

    unsigned = ParticipantStatement(
        participant="site-a",
        run_id=RUN_ID,
        public_key=raw_public_key(KEY).hex(),
        events=events,
        signature="0" * 128,
    )
    signature = KEY.sign(unsigned.signed_payload())
    return unsigned.model_copy(update={"signature": signature.hex()})


def _report(statement: Any) -> Any:
    return build_run_report(
        run_id=RUN_ID,
        participants=3,
        threshold=3,
        colluders=0,
        delta=1e-5,
        accountant_tolerance=0.5,
        record_level_dp=True,
        statements=[statement],
        coordinator_events=[
            secure_aggregation_event(
                block=b,
                coordinates=64,
                participants=3,
                threshold=3,
                colluders=0,
                contributors=("site-a", "site-b", "site-c"),
            )
            for b in range(2)
        ],
    )


def test_an_honest_statement_passes_and_builds_a_report() -> None:
    statement = _check(
        _gaussian(),
        _gaussian(block=1, parameters={"release": "site-a/round0/block1"}),
        _randomized(),
        _randomized(block=1),
    )
    report = _report(statement)
    assert [s.participant for s in report.participant_statements] == ["site-a"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (_gaussian(parameters={"noise_multiplier": None}), "parameters.noise_multiplier"),
        (_gaussian(parameters={"noise_multiplier": -1.0}), "parameters.noise_multiplier"),
        (_gaussian(parameters={"noise_multiplier": 3.0}), "parameters.noise_multiplier"),
        (_gaussian(parameters={"clip_norm": 2.0}), "parameters.clip_norm"),
        (
            _gaussian(parameters={"block_noise_multiplier": 0.01, "noise_multiplier": 0.02}),
            "parameters.noise_multiplier",
        ),
        (_gaussian(parameters={"sample_rate": 0.5}), "parameters.sample_rate"),
        (_gaussian(parameters={"release": "site-b/round0/block0"}), "parameters.release"),
        (_randomized(parameters={"threshold": 77_794_685}), "parameters.epsilon0"),
        (_gaussian(parameters={"noise_multiplier": True}), "parameters.noise_multiplier"),
        (_gaussian(parameters={"sample_rate": 1.5}), "parameters.sample_rate"),
        (_gaussian(parameters={"surprise": 1}), "parameters.surprise"),
        (_gaussian(count=10**12), "count"),
        (_gaussian(block=2), "block"),
        (_gaussian(block=None), "block"),
        (_randomized(count=10**12), "count"),
        (_randomized(parameters={"epsilon0": 800.0}), "parameters.epsilon0"),
        (_randomized(parameters={"threshold": "many"}), "parameters.threshold"),
        (_gaussian(participant="site-b"), "participant"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_malformed_or_unbounded_event_is_refused_naming_its_field(
    event: MechanismEvent, field: str
) -> None:
    with pytest.raises(StatementError) as refused:
        _check(event)
    assert refused.value.field == f"statement.events[0].{field}"


def test_a_block_is_randomized_once_and_releases_add_up_within_the_run() -> None:
    with pytest.raises(StatementError, match="randomized twice"):
        _check(_randomized(), _randomized())
    with pytest.raises(StatementError, match="Gaussian releases add up past 8"):
        _check(
            *[_gaussian(block=b % 2, parameters={"release": f"site-a/{i}"}) for i, b in enumerate(range(9))]
        )


_ANY_FLOAT = st.floats(allow_nan=False, allow_infinity=False)


def _mostly(valid: st.SearchStrategy[Any], wide: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, wide)


@settings(max_examples=40, deadline=None)
@given(
    gaussian_count=_mostly(st.integers(1, 4), st.integers(1, 10**13)),
    randomized_count=_mostly(st.integers(1, 64), st.integers(1, 10**13)),
    block=_mostly(st.integers(0, 1), st.integers(0, 2**31)),
    sigma=_mostly(st.floats(0.3, 50.0), _ANY_FLOAT),
    share=_mostly(st.floats(0.05, 1.0), _ANY_FLOAT),
    rate=_mostly(st.just(0.1), _ANY_FLOAT),
    threshold=_mostly(st.integers(1, 2**31), st.integers(-5, 2**40)),
    drop=_mostly(st.just(""), st.sampled_from(["noise_multiplier", "sample_rate", "epsilon0"])),
)
def test_whatever_passes_the_check_builds_a_report_or_fails_as_a_privacy_error_within_seconds(
    gaussian_count: int,
    randomized_count: int,
    block: int,
    sigma: float,
    share: float,
    rate: float,
    threshold: int,
    drop: str,
) -> None:
    from privacy.errors import PrivacyError

    assume(share != 0 and math.isfinite(sigma / share))  # a statement is JSON: finite numbers only
    gaussian = {
        "block_noise_multiplier": sigma,
        "clip_share": share,
        "noise_multiplier": sigma / share,
        "sample_rate": rate,
    }
    randomized = {
        "threshold": threshold,
        "epsilon0": math.log((2**32 - threshold) / threshold) if 1 <= threshold < 2**32 else 1.0,
        "flip_probability": threshold / 2**32,
    }
    events = [
        _gaussian(block=block, count=gaussian_count, parameters=gaussian),
        _randomized(block=block, count=randomized_count, parameters=randomized),
    ]
    events = [
        e.model_copy(update={"parameters": {k: v for k, v in e.parameters.items() if k != drop}})
        for e in events
    ]
    try:
        statement = _check(*events)
    except StatementError:
        event("refused by the check")
        return
    started = time.monotonic()
    try:
        _report(statement)
        event("report built")
    except PrivacyError:
        event(
            "report refused"
        )  # the run refuses such a statement at submission (trial build) and leaves it out at the end
    assert time.monotonic() - started < 15


def test_an_owl_run_allows_two_gaussian_releases_of_each_block_and_no_more() -> None:
    import dataclasses

    events = [
        _gaussian(parameters={"release": f"site-a/round{r}/block{b}", "clip_share": 1.0}, block=b, count=4)
        for r in (0, 4294967295)
        for b in (0, 1)
    ]
    statement = sign_participant_statement(
        participant="site-a", run_id=RUN_ID, events=events, private_key=KEY
    )
    owl = dataclasses.replace(BOUNDS, releases_per_block=2)
    check_statement(statement, name="site-a", run_id=RUN_ID, public_key=raw_public_key(KEY), bounds=owl)
    with pytest.raises(StatementError, match="add up past 8"):
        check_statement(
            statement, name="site-a", run_id=RUN_ID, public_key=raw_public_key(KEY), bounds=BOUNDS
        )
