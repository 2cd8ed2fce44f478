"""The participant's configuration: a TOML file read into frozen pydantic models, with its privacy minimums.

The keys of the issue's table are the public contract; every other key has a default, so a file holding
only the contract keys runs (``examples/participant-minimal.toml``). Unknown keys are refused naming the
key; relative paths are relative to the config file; a bad value fails naming ``section.key``. Without a
``[privacy]`` section the participant accepts the coordinator's parameters and logs them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from privacy.signing import SigningKeyError, TrustedKey
from proto.tls import check_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser (pyproject pulls it in there only)
    import tomli as tomllib

logger = logging.getLogger(__name__)

IDENTITY_KEY_NAME = "identity_key.pem"
BUDGET_FILE_NAME = "privacy_budget.json"


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the field."""


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # Relative to the file, not to the working directory, so a systemd unit finds the same paths as an
    # operator in a shell.
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
Address = Annotated[str, AfterValidator(check_address)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CoordinatorSection(_Section):
    """``[coordinator]``: where the coordinator is, and how patiently to talk to it."""

    address: Address
    """``host:port``; the host must be in the coordinator certificate's subject alternative names."""
    call_timeout_s: float = Field(60.0, gt=0)
    """Deadline of one unary call."""
    stream_timeout_s: float = Field(600.0, gt=0)
    """Deadline of one streamed block (masked votes up, global mask down)."""
    max_backoff_s: float = Field(60.0, gt=0)
    """Longest wait between retries of a transient failure (jittered exponential backoff up to this)."""
    max_retry_time_s: float | None = Field(3600.0, gt=0)
    """Give up after failing this long without progress; None retries forever (a systemd restart loop)."""


class TlsSection(_Section):
    """``[tls]``: PEM files of the participant's client certificate and of the CA the coordinator uses."""

    ca: ConfigPath
    certificate: ConfigPath
    private_key: ConfigPath


class ModelSection(_Section):
    """``[model]``: the local copy of the base model (its fingerprint must match the coordinator's)."""

    directory: ConfigPath


class DataSection(_Section):
    """``[data]``: the local calibration data, which never leaves this machine."""

    calibration: ConfigPath
    """``.txt``, or ``.jsonl`` with ``text`` or ``input_ids`` per line."""
    seed: int = 0
    """Seed for drawing calibration windows."""
    dataset: str | None = Field(None, min_length=1)
    """Name of the dataset in the lifetime privacy budget; default the calibration file's name. Every
    config that calibrates on the same records must use the same name and the same budget file."""

    @property
    def dataset_name(self) -> str:
        """Return the name under which runs on this data are charged to the lifetime budget."""
        return self.dataset if self.dataset is not None else self.calibration.name


class RuntimeSection(_Section):
    """``[runtime]``: the compute device and where the durable state lives."""

    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    state: ConfigPath
    """Durable state directory (resume after a restart)."""
    identity_key: ConfigPath | None = None
    """Long-term Ed25519 key signing key advertisements and the privacy statement; default
    ``<state>/identity_key.pem``, created 0600 if absent."""
    progress: bool = True
    """Show a progress bar (off under systemd, where the journal gets the log lines)."""
    budget: ConfigPath | None = None
    """The lifetime privacy budget ledger of ``data.dataset``; default ``<state>/privacy_budget.json``."""
    max_blocks: int | None = Field(None, ge=1)
    """FedSpaLLM: the most decoder blocks this site prunes in one run (its compute budget), declared at
    join; the coordinator assigns no more and the site refuses more. Default: no limit."""

    @property
    def budget_path(self) -> Path:
        """Return where the lifetime privacy budget ledger lives."""
        return self.budget if self.budget is not None else self.state / BUDGET_FILE_NAME

    @property
    def identity_key_path(self) -> Path:
        """Return where the long-term identity key lives."""
        return self.identity_key if self.identity_key is not None else self.state / IDENTITY_KEY_NAME


class PrivacyMinimums(_Section):
    """``[privacy]``: the weakest run this participant takes part in; an absent key sets no limit."""

    max_epsilon0: float | None = Field(None, gt=0)
    """Largest randomized-response epsilon0 accepted (smaller is more private)."""
    require_randomized_response: bool = False
    min_threshold: int | None = Field(None, ge=1)
    """Smallest secure-aggregation threshold t accepted."""
    require_record_level_dp: bool = False
    max_target_epsilon: float | None = Field(None, gt=0)
    """Largest record-level epsilon accepted (the run's target, or what its noise multiplier gives)."""
    max_delta: float | None = Field(None, gt=0, lt=1)
    min_noise_multiplier: float | None = Field(None, gt=0)
    lifetime_epsilon: float | None = Field(None, gt=0)
    """Record-level epsilon this site may spend on ``data.dataset`` over all runs (basic composition);
    a run that would pass it, or that has no record-level DP, is refused. None: no lifetime budget."""
    lifetime_delta: float | None = Field(None, gt=0, lt=1)
    """The deltas' sum over all runs may not pass this (checked only with ``lifetime_epsilon``)."""

    def violations(
        self,
        *,
        randomized_response: bool,
        epsilon0: float,
        threshold: int,
        record_level_dp: bool,
        record_epsilon: float | None,
        delta: float,
        noise_multiplier: float | None,
    ) -> list[str]:
        """Return why a run with these parameters is weaker than the minimums (empty: acceptable).

        ``record_epsilon`` is the record-level epsilon the run reaches (its target, or what the
        coordinator computed from its noise multiplier); None when unknown, which fails a set maximum.
        """
        problems: list[str] = []
        if self.require_randomized_response and not randomized_response:
            problems.append(
                "the run sends mask bits without randomized response (require_randomized_response)"
            )
        if randomized_response and self.max_epsilon0 is not None and epsilon0 > self.max_epsilon0:
            problems.append(f"epsilon0 {epsilon0:g} exceeds max_epsilon0 {self.max_epsilon0:g}")
        if self.min_threshold is not None and threshold < self.min_threshold:
            problems.append(f"threshold {threshold} is below min_threshold {self.min_threshold}")
        if self.require_record_level_dp and not record_level_dp:
            problems.append("the run has no record-level DP (require_record_level_dp)")
        if (
            record_level_dp
            and self.max_target_epsilon is not None
            and (record_epsilon is None or record_epsilon > self.max_target_epsilon)
        ):
            stated = (
                "no record-level epsilon"
                if record_epsilon is None
                else f"record-level epsilon {record_epsilon:g}"
            )
            problems.append(f"the run states {stated}, above max_target_epsilon {self.max_target_epsilon:g}")
        if record_level_dp and self.max_delta is not None and delta > self.max_delta:
            problems.append(f"delta {delta:g} exceeds max_delta {self.max_delta:g}")
        if (
            record_level_dp
            and self.min_noise_multiplier is not None
            and (noise_multiplier is None or noise_multiplier < self.min_noise_multiplier)
        ):
            stated = (
                "no noise multiplier"
                if noise_multiplier is None
                else f"noise multiplier {noise_multiplier:g}"
            )
            problems.append(
                f"the run states {stated}, below min_noise_multiplier {self.min_noise_multiplier:g}"
            )
        return problems


class ParticipantConfig(_Section):
    """The whole participant configuration file."""

    coordinator: CoordinatorSection
    tls: TlsSection
    model: ModelSection
    data: DataSection
    runtime: RuntimeSection
    privacy: PrivacyMinimums | None = None
    """None: accept the coordinator's privacy parameters (they are logged)."""
    peers: dict[str, str] = Field(default_factory=dict)
    """Pinned identity keys, certificate name -> public-key file (relative to this file) or fingerprint,
    obtained from each site out of band. With pins, a session whose roster holds any other key is
    refused; without them the keys the coordinator relays are trusted (logged as a warning)."""

    @field_validator("peers")
    @classmethod
    def _pins_parse(cls, peers: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        base = (info.context or {}).get("base_dir")
        resolved = {}
        for name, value in peers.items():
            candidate = Path(value).expanduser()
            if base is not None and not candidate.is_absolute() and (Path(base) / candidate).is_file():
                value = str(Path(base) / candidate)
            try:
                TrustedKey.parse(value)
            except SigningKeyError as error:
                raise ValueError(f"{name}: {error}") from None
            resolved[name] = value
        return resolved

    def pinned_keys(self) -> dict[str, TrustedKey]:
        """Return the pinned identity keys by certificate name (empty: trust the coordinator's relay)."""
        return {name: TrustedKey.parse(value) for name, value in self.peers.items()}

    def check_paths(self) -> None:
        """Return None if the input files exist; raise ConfigError naming the field otherwise."""
        for field, path, kind in (
            ("tls.ca", self.tls.ca, "file"),
            ("tls.certificate", self.tls.certificate, "file"),
            ("tls.private_key", self.tls.private_key, "file"),
            ("model.directory", self.model.directory, "directory"),
            ("data.calibration", self.data.calibration, "file"),
        ):
            exists = path.is_dir() if kind == "directory" else path.is_file()
            if not exists:
                raise ConfigError(f"{field}: no {kind} at {path}")


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"  # no cross-section checks here
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required key is missing"
    return f"{location}: {str(error['msg']).removeprefix('Value error, ')}"


def parse_config(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "config"
) -> ParticipantConfig:
    """Return the validated configuration of a parsed TOML document (paths relative to ``base_dir``)."""
    try:
        return ParticipantConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> ParticipantConfig:
    """Return the participant configuration read from the TOML file at ``path``."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))
