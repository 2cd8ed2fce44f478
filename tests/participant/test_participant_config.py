"""participant.config: a site's TOML file, and the minimums below which it refuses to take part in a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from participant.config import ConfigError, PrivacyMinimums, load_config, parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STRONG_RUN: dict[str, Any] = dict(
    randomized_response=True,
    epsilon0=2.0,
    threshold=3,
    record_level_dp=True,
    record_epsilon=4.0,
    delta=1e-6,
    noise_multiplier=1.5,
)


def _minimal() -> dict[str, Any]:
    with (EXAMPLES / "participant-minimal.toml").open("rb") as handle:
        return tomllib.load(handle)


def _with(section: str, **values: Any) -> dict[str, Any]:
    data = _minimal()
    data[section] = {**data.get(section, {}), **values}
    return data


def test_the_full_example_loads_with_its_minimums() -> None:
    config = load_config(EXAMPLES / "participant.toml")
    assert config.privacy is not None and config.privacy.max_epsilon0 == 4.0
    assert config.tls.certificate.name == "hospital-a.pem"


def test_the_minimal_example_gets_the_protective_privacy_defaults() -> None:
    config = load_config(EXAMPLES / "participant-minimal.toml")
    assert config.runtime.device == "auto" and config.coordinator.call_timeout_s > 0
    defaults = config.privacy
    assert defaults.require_record_level_dp and not defaults.require_randomized_response
    assert (defaults.max_target_epsilon, defaults.max_delta) == (8.0, 1e-5)
    assert defaults.violations(**{**STRONG_RUN, "randomized_response": False}) == []
    assert defaults.violations(**{**STRONG_RUN, "record_level_dp": False}) == [
        "[privacy] require_record_level_dp = true (the default): the run has no record-level DP (exact "
        "calibration statistics, no finite epsilon)"
    ]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "site" / "participant.toml"
    config_file.parent.mkdir()
    config_file.write_bytes((EXAMPLES / "participant-minimal.toml").read_bytes())
    config = load_config(config_file)
    assert config.data.calibration == tmp_path / "site" / "data" / "calibration.jsonl"
    assert config.runtime.identity_key_path == tmp_path / "site" / "state" / "identity_key.pem"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with("runtime", devices="cpu"), "runtime.devices: unknown key"),
        (_with("coordinator", address="example.org"), "coordinator.address: expected host:port"),
        (_with("coordinator", address="::1:50051"), "coordinator.address: an IPv6 host goes in brackets"),
        (_with("coordinator", address="example.org:70000"), "coordinator.address: port must be"),
        (_with("privacy", max_epsilon0=-1), "privacy.max_epsilon0: "),
        (_with("privacy", min_treshold=3), "privacy.min_treshold: unknown key"),
        ({k: v for k, v in _minimal().items() if k != "data"}, "data: required key is missing"),
    ],
)
def test_bad_configs_fail_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^participant.toml: ") as error:
        parse_config(data, source="participant.toml")
    assert message in str(error.value)


def test_missing_input_files_are_named_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.ca: no file at "):
        parse_config(_minimal(), base_dir=tmp_path).check_paths()


def test_a_run_that_meets_every_minimum_is_accepted() -> None:
    minimums = load_config(EXAMPLES / "participant.toml").privacy
    assert minimums is not None
    assert minimums.violations(**STRONG_RUN) == []
    # Opting out of every default: a run without any privacy mechanism is then accepted.
    opted_out = PrivacyMinimums.model_validate({"require_record_level_dp": False})
    assert (
        opted_out.violations(**{**STRONG_RUN, "record_level_dp": False, "randomized_response": False}) == []
    )
    # Magnitude pruning reads no data: the record-level settings do not apply to it.
    defaults = PrivacyMinimums.model_validate({})
    assert defaults.violations(**{**STRONG_RUN, "reads_data": False, "record_level_dp": False}) == []


@pytest.mark.parametrize(
    ("weaker", "reason"),
    [
        ({"epsilon0": 6.0}, "[privacy] max_epsilon0 = 4: the run's epsilon0 6 is larger"),
        ({"randomized_response": False}, "[privacy] require_randomized_response = true: the run sends mask"),
        ({"threshold": 2}, "[privacy] min_threshold = 3: the run's threshold 2 is smaller"),
        (
            {"record_level_dp": False},
            "[privacy] require_record_level_dp = true: the run has no record-level DP",
        ),
        (
            {"record_epsilon": 9.0},
            "[privacy] max_target_epsilon = 8: the run's record-level epsilon on this site's data is 9",
        ),
        (
            {"record_epsilon": None},
            "[privacy] max_target_epsilon = 8: the run's record-level epsilon on this site's data cannot be computed",
        ),
        ({"delta": 1e-3}, "[privacy] max_delta = 1e-05: the run's delta 0.001 is larger"),
        (
            {"documents": 200_000, "delta": 1e-5},
            "holds 200000 documents: the run's delta 1e-05 is larger than 1/200000",
        ),
    ],
)
def test_a_weaker_run_is_refused_saying_why(weaker: dict[str, Any], reason: str) -> None:
    minimums = load_config(EXAMPLES / "participant.toml").privacy
    assert minimums is not None
    problems = minimums.violations(**{**STRONG_RUN, **weaker})
    assert len(problems) == 1 and reason in problems[0]
