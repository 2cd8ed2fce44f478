"""TOML configuration files: read one into a frozen pydantic model, or write flat tables that read back.

Both roles' ``--config`` files go through :func:`load_model`; every error is a :class:`ConfigError` whose
message starts with the file and names the field (``coordinator.toml: privacy.delta: ...``): a file that
cannot be read, is not UTF-8 or not TOML, an unknown or missing key, a bad value. Relative paths in the
models are resolved against the file's directory (the validation context's ``base_dir``).
:func:`write_toml` writes the files the demo and the tests generate, escaping strings so that any text
reads back unchanged.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser (pyproject pulls it in there only)
    import tomli as tomllib

Model = TypeVar("Model", bound=BaseModel)

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the field."""


def describe_validation_error(error: ValidationError) -> str:
    """Return the problems of ``error`` as ``section.key: reason`` phrases joined by ``; ``."""
    problems = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{location}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{location}: required key is missing")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            # Cross-section checks have no single location; their message starts with the fields it concerns.
            problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def parse_model(
    model: type[Model], data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "config"
) -> Model:
    """Return ``data`` (a parsed TOML document) validated as ``model``; raise ConfigError naming ``source``."""
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Return the TOML document at ``path``; raise ConfigError naming the file when it cannot be used."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def load_model(model: type[Model], path: str | Path) -> Model:
    """Return the configuration file at ``path`` validated as ``model`` (paths relative to its directory)."""
    path = Path(path)
    return parse_model(model, read_toml(path), base_dir=path.resolve().parent, source=str(path))


def toml_string(text: str) -> str:
    """Return ``text`` as a TOML basic string (control characters and DEL escaped, the rest kept)."""
    escaped = []
    for char in text:
        if char in _SHORT_ESCAPES:
            escaped.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _key(name: str) -> str:
    return name if name and set(name) <= _BARE_KEY else toml_string(name)


def toml_value(value: object) -> str:
    """Return ``value`` (a bool, int, float, string, path, enum or list of them) as a TOML value."""
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # inf, -inf and every finite repr are TOML floats
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, (str, Path)):
        return toml_string(str(value))
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, object]], *, header: str = "") -> Path:
    """Return ``path`` after writing ``sections`` (flat tables) to it as TOML, ``header`` as comments."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in sections.items():
        lines += ["", f"[{_key(section)}]"]
        lines += [f"{_key(key)} = {toml_value(value)}" for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).lstrip("\n") + "\n", encoding="utf-8")
    return path
