"""Configuration files: one TOML reader for both roles, naming the file and field; a writer that reads back."""

from __future__ import annotations

import enum
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from proto.config_file import ConfigError, load_model, write_toml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(gt=0, lt=1)


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    privacy: _Section


def test_both_roles_raise_the_one_config_error() -> None:
    from coordinator.config import ConfigError as CoordinatorConfigError
    from participant.config import ConfigError as ParticipantConfigError

    assert CoordinatorConfigError is ParticipantConfigError is ConfigError


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[privacy]\ndelta = 1.0\n", "privacy.delta: "),
        ("[privacy]\ndelta = 0.1\nepsilon = 2\n", "privacy.epsilon: unknown key"),
        ("[privacy]\n", "privacy.delta: required key is missing"),
        ("[privacy\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_field(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}") as error:
        load_model(_File, path)
    assert named in str(error.value)


def test_a_file_that_is_not_utf8_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[privacy]\nname = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not UTF-8 text"):
        load_model(_File, path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*absent.toml"):
        load_model(_File, tmp_path / "absent.toml")


class _Colour(enum.Enum):
    RED = "red"


_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.lists(st.text(), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1), st.dictionaries(st.text(min_size=1), _VALUES, max_size=4), max_size=3
    )
)
def test_whatever_is_written_reads_back_unchanged(tmp_path_factory: pytest.TempPathFactory, sections) -> None:
    # Any text: emoji, DEL, quotes, newlines, keys that need quoting.
    path = write_toml(tmp_path_factory.mktemp("toml") / "written.toml", sections, header="written\nby a test")
    assert tomllib.loads(path.read_text(encoding="utf-8")) == sections


def test_paths_enums_and_special_floats_are_written_as_their_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "f.toml",
        {"s": {"path": tmp_path / "x y", "colour": _Colour.RED, "big": math.inf, "odd": math.nan}},
    )
    read = tomllib.loads(path.read_text(encoding="utf-8"))["s"]
    assert read["path"] == str(tmp_path / "x y") and read["colour"] == "red"
    assert read["big"] == math.inf and math.isnan(read["odd"])
    with pytest.raises(TypeError, match="no TOML form"):
        write_toml(tmp_path / "g.toml", {"s": {"none": None}})
