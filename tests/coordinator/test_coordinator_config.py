"""coordinator.config: the TOML file an operator writes, read into frozen models that name every bad field."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregation import ComparisonGroup
from coordinator.config import (
    DEFAULT_TARGET_EPSILON,
    ConfigError,
    CoordinatorConfig,
    load_config,
    parse_config,
)
from pruning.methods import Method
from pruning.recipes import Mode, Recipe

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _minimal() -> dict[str, Any]:
    with (EXAMPLES / "coordinator-minimal.toml").open("rb") as handle:
        return tomllib.load(handle)


def _with(section: str, **values: Any) -> dict[str, Any]:
    data = _minimal()
    data[section] = {**data.get(section, {}), **values}
    return data


def _without(section: str, *keys: str) -> dict[str, Any]:
    data = _minimal()
    for key in keys:
        del data[section][key]
    return data


@pytest.mark.parametrize("name", ["coordinator.toml", "coordinator-minimal.toml"])
def test_the_example_configs_load(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert config.run.participants == ("hospital-a", "hospital-b", "bank-c")
    assert config.run.method is Method.WANDA and config.run.group is ComparisonGroup.LAYER
    assert config.threshold == 3


def test_the_full_example_only_spells_out_the_defaults_of_the_minimal_one() -> None:
    full, minimal = (
        load_config(EXAMPLES / "coordinator.toml"),
        load_config(EXAMPLES / "coordinator-minimal.toml"),
    )
    assert full == minimal


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "etc" / "coordinator.toml"
    config_file.parent.mkdir()
    config_file.write_bytes((EXAMPLES / "coordinator-minimal.toml").read_bytes())
    config = load_config(config_file)
    assert config.tls.ca == tmp_path / "etc" / "pki" / "ca.pem"
    assert config.run.model == tmp_path / "etc" / "models" / "base"
    assert config.output.signing_public_key == tmp_path / "etc" / "keys" / "report.key.pub"


def test_the_privacy_section_defaults_to_record_level_dp_at_target_epsilon_8() -> None:
    data = _minimal()
    del data["privacy"]
    privacy = parse_config(data).privacy
    assert privacy.randomized_response and privacy.epsilon0 == 4.0
    assert privacy.record_level_dp and privacy.target_epsilon == DEFAULT_TARGET_EPSILON == 8.0
    assert privacy.noise_multiplier is None and privacy.delta == 1e-5


def test_the_default_target_epsilon_matches_the_simulator() -> None:
    from fedprune.cli import build_parser
    from fedprune.commands.simulate import _privacy

    args = build_parser().parse_args(["simulate", "--model", "m", "--participant-data", "f", "--out", "o"])
    assert _privacy(args).target_epsilon == DEFAULT_TARGET_EPSILON


def test_a_noise_multiplier_replaces_the_default_target() -> None:
    data = _without("privacy", "target_epsilon")
    data["privacy"]["noise_multiplier"] = 1.2
    privacy = parse_config(data).privacy
    assert privacy.noise_multiplier == 1.2 and privacy.target_epsilon is None


def test_defaults_fill_what_the_contract_leaves_out() -> None:
    data = _without(
        "run", "min_participants", "threshold", "method", "pattern", "group", "mode", "nsamples", "seqlen"
    )
    run = parse_config(data).run
    assert run.min_participants_or_default == 3
    assert run.method is Method.WANDA and run.pattern == "unstructured" and run.mode is Mode.ONE_SHOT
    assert run.sparsity_pattern.sparsity == 0.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with("run", sparsity_ratio=0.5), "run.sparsity_ratio: unknown key"),
        ({**_minimal(), "extra": {"x": 1}}, "extra: unknown key"),
        (_without("server", "address"), "server.address: required key is missing"),
        (_with("server", address="localhost"), "server.address: expected host:port"),
        (_with("run", sparsity=1.5), "run.sparsity: sparsity must lie strictly between 0 and 1"),
        (_with("run", method="random"), "run.method: "),
        (_with("run", group="block"), "run.group: "),
        (_with("run", mode="twice"), "run.mode: "),
        (_with("run", nsamples=0), "run.nsamples: "),
        (_with("run", participants=[]), "run.participants: "),
        (_with("run", participants=["a", "b", "a"]), "run.participants: lists a more than once"),
        (_with("run", min_participants=4), "run.min_participants: 4 exceeds the 3 listed participants"),
        (_with("run", threshold=1), ": run.threshold (with 3 listed participants"),
        (_with("run", threshold=4), "run.threshold"),
        (_with("run", pattern="2:4", sparsity=0.7), "run.sparsity: sparsity 0.7 contradicts pattern 2:4"),
        (_with("run", chunk_coordinates=100), "run.chunk_coordinates: "),
        (_with("privacy", noise_multiplier=1.0), "either noise_multiplier or target_epsilon, not both"),
        (_with("privacy", record_level_dp=False), "need record_level_dp = true"),
        (_with("privacy", epsilon0=0), "privacy.epsilon0: "),
        (_with("privacy", delta=1.0), "privacy.delta: "),
        (_with("privacy", sample_rate=0), "privacy.sample_rate: "),
        (_without("output", "signing_key"), "output.signing_key: required key is missing"),
    ],
)
def test_bad_configs_fail_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data, source="coordinator.toml")
    assert str(error.value).startswith("coordinator.toml: ")
    assert message in str(error.value)


def test_recipe_and_mode_read_as_the_shared_enums_and_dump_as_the_toml_strings() -> None:
    run = parse_config(_with("run", recipe="fedspallm", method="sparsegpt", mode="one-shot")).run
    assert run.recipe is Recipe.FEDSPALLM and run.mode is Mode.ONE_SHOT
    assert parse_config(_with("run", mode="iterative")).run.mode is Mode.ITERATIVE
    # The state directory's parameters digest is over the JSON dump: a run resumed after an upgrade finds the
    # digest its first start wrote.
    dumped = run.model_dump(mode="json")
    assert (dumped["recipe"], dumped["mode"]) == ("fedspallm", "one-shot")


@pytest.mark.parametrize(
    ("run", "named", "not_named"),
    [
        ({"method": "wanda"}, ["run.method"], ["run.mode", "run.weight_scaling"]),
        ({"method": "wanda", "weight_scaling": True}, ["run.method", "run.weight_scaling"], ["run.mode"]),
        ({"method": "sparsegpt", "mode": "iterative"}, ["run.mode"], ["run.method", "run.weight_scaling"]),
    ],
)
def test_a_recipe_conflict_names_exactly_the_fields_at_fault(
    run: dict[str, Any], named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(ConfigError, match=r"run: recipe 'fedspallm' needs ") as error:
        parse_config(_with("run", recipe="fedspallm", **run))
    assert all(field in str(error.value) for field in named), error.value
    assert not any(field in str(error.value) for field in not_named), error.value


def _five_sites(**run: Any) -> dict[str, Any]:
    data = _with("run", participants=["a", "b", "c", "d", "e"], **run)
    if "threshold" not in run:
        del data["run"]["threshold"]
    data["privacy"] = {**data.get("privacy", {}), "colluders": 1}
    return data


def test_the_threshold_is_safe_for_every_listed_site_and_reachable_by_the_fewest() -> None:
    # t = 3 is safe for a 3-site session with one colluder (3 > (3 + 1)/2) but not for the 5 listed sites
    # (3 > (5 + 1)/2 fails), which is what each site checks at join: refused here, not by every site later.
    with pytest.raises(ConfigError, match=r"run.threshold \(with 5 listed participants, privacy.colluders 1"):
        parse_config(_five_sites(min_participants=3, threshold=3), source="c.toml")
    # Safe for 5, but a session of min_participants could never reach it.
    with pytest.raises(ConfigError, match="run.threshold 4 is above run.min_participants 3"):
        parse_config(_five_sites(min_participants=3, threshold=4), source="c.toml")
    # The default (floor(2 * 4 / 3) + 1 = 3 for min_participants 4) is raised to the safe minimum for the
    # listed sites, floor((5 + 1) / 2) + 1 = 4.
    assert parse_config(_five_sites(min_participants=4), source="c.toml").threshold == 4


def test_record_level_dp_off_needs_no_noise_parameters() -> None:
    data = _without("privacy", "target_epsilon")
    data["privacy"]["record_level_dp"] = False
    privacy = parse_config(data).privacy
    assert not privacy.record_level_dp and privacy.target_epsilon is None


def test_an_n_m_pattern_implies_the_sparsity() -> None:
    data = _without("run", "sparsity")
    data["run"]["pattern"] = "2:4"
    assert parse_config(data).run.sparsity_pattern.sparsity == 0.5


def test_the_config_is_frozen() -> None:
    config = parse_config(_minimal())
    with pytest.raises(ValueError):
        config.run.sparsity = 0.9  # type: ignore[misc]


def test_missing_input_files_are_named_at_start(tmp_path: Path) -> None:
    config: CoordinatorConfig = parse_config(_minimal(), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^tls\.ca: no file at "):
        config.check_paths()


def test_unreadable_and_invalid_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[server\naddress=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_server_threads_cover_every_call_the_caps_admit() -> None:
    base = {
        "tls": {"ca": "ca.pem", "certificate": "c.pem", "private_key": "c.key"},
        "run": {"model": "m", "participants": ["a", "b", "c"]},
        "output": {"directory": "o", "state": "s", "signing_key": "k"},
    }
    config = parse_config({**base, "server": {"address": "127.0.0.1:0"}})
    assert config.worker_threads == 3 * 4 + 4 + 4
    with pytest.raises(ConfigError, match="server.max_workers 8 is below 20"):
        parse_config({**base, "server": {"address": "127.0.0.1:0", "max_workers": 8}})
    monitored = parse_config({**base, "server": {"address": "127.0.0.1:0", "monitors": ["prometheus"]}})
    assert monitored.worker_threads == 3 * 4 + (1 + 1) * 4 + 4  # the monitor's own cap has its threads
    with pytest.raises(ConfigError, match="server.monitors lists b, also in run.participants"):
        parse_config({**base, "server": {"address": "127.0.0.1:0", "monitors": ["b"]}})
    with pytest.raises(ConfigError, match="server.monitors lists a name twice"):
        parse_config({**base, "server": {"address": "127.0.0.1:0", "monitors": ["m", "m"]}})
