"""One privacy-parameter model: the coordinator's ``[privacy]`` table and what a site reads from the run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from coordinator.config import PrivacySection
from participant.privacy import RunPrivacy
from privacy.errors import PrivacyError
from privacy.parameters import PrivacyParameters

ANNOUNCED: dict[str, Any] = {
    "randomized_response": True,
    "epsilon0": 4.0,
    "record_level_dp": True,
    "noise_multiplier": None,
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "sample_rate": 1.0,
}

BROKEN = [
    ({"epsilon0": 0.0}, "epsilon0: must be positive when randomized_response is on"),
    ({"epsilon0": float("nan")}, "epsilon0: "),
    ({"randomized_response": False, "epsilon0": -1.0}, "epsilon0: must be >= 0"),
    ({"noise_multiplier": 1.0}, "either noise_multiplier or target_epsilon, not both"),
    ({"record_level_dp": False}, "need record_level_dp = true"),
    ({"target_epsilon": 0.0}, "target_epsilon: "),
    ({"target_epsilon": None, "noise_multiplier": -1.0}, "noise_multiplier: "),
    ({"delta": 1.0}, "delta: "),
    ({"delta": 0.0}, "delta: "),
    ({"sample_rate": 0.0}, "sample_rate: "),
    ({"sample_rate": 1.5}, "sample_rate: "),
    ({"colluders": -1}, "colluders: "),
    ({"accountant_tolerance": -0.1}, "accountant_tolerance: "),
    ({"epsilon": 1.0}, "epsilon: unknown key"),
]


def test_the_coordinators_section_and_the_sites_view_are_one_model() -> None:
    section = PrivacySection.model_validate({})
    assert isinstance(section, PrivacyParameters)
    # What the coordinator announces, the site reads back as equal parameters.
    announced = RunPrivacy(**section.model_dump())
    assert isinstance(announced, PrivacyParameters)
    assert announced.model_dump() == section.model_dump()


@pytest.mark.parametrize(("change", "named"), BROKEN)
def test_a_site_refuses_broken_parameters_with_a_privacy_error_naming_the_field(
    change: dict[str, Any], named: str
) -> None:
    with pytest.raises(PrivacyError, match="the run's privacy parameters: ") as error:
        RunPrivacy(**{**ANNOUNCED, **change})
    assert named in str(error.value)


@pytest.mark.parametrize(("change", "named"), BROKEN)
def test_the_operators_file_refuses_the_same_parameters(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as error:
        PrivacySection.model_validate({**ANNOUNCED, **change})
    assert named.split(":")[0] in str(error.value)


def test_record_level_dp_without_a_mechanism_is_filled_in_the_file_and_refused_on_the_wire() -> None:
    # The operator's file may leave both out (target 8 is the default); a run that announces neither
    # leaves the site nothing to plan its noise from.
    unstated = {**ANNOUNCED, "target_epsilon": None}
    assert PrivacySection.model_validate(unstated).target_epsilon == 8.0
    with pytest.raises(PrivacyError, match="record_level_dp needs noise_multiplier or target_epsilon"):
        RunPrivacy(**unstated)


def test_epsilon0_is_only_checked_where_randomized_response_is_on() -> None:
    # The wire's default epsilon0 is 0.0; a run without randomized response never uses it.
    assert RunPrivacy(**{**ANNOUNCED, "randomized_response": False, "epsilon0": 0.0}).epsilon0 == 0.0


def test_the_noise_floor_is_the_operators_the_site_judges_the_bill_itself() -> None:
    # Below 0.3 no site statement verifies, so the coordinator's file refuses it; a site plans the bill
    # of any positive multiplier and refuses it by its own bounds.
    tiny = {**ANNOUNCED, "target_epsilon": None, "noise_multiplier": 0.05}
    with pytest.raises(ValidationError, match="noise_multiplier"):
        PrivacySection.model_validate(tiny)
    assert RunPrivacy(**tiny).noise_multiplier == 0.05


def test_the_parameters_are_frozen() -> None:
    with pytest.raises(ValidationError):
        RunPrivacy(**ANNOUNCED).delta = 0.5  # type: ignore[misc]
