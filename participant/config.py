"""The participant's configuration: a TOML file read into frozen pydantic models, with its privacy minimums.

The keys of the issue's table are the public contract; every other key has a default, so a file holding
only the contract keys runs (``examples/participant-minimal.toml``). Unknown keys are refused naming the
key; relative paths are relative to the config file; a bad value fails naming ``section.key``. Without a
``[privacy]`` section the participant applies that section's protective defaults (record-level DP
required, epsilon at most 8 and delta at most 1e-5 per run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from privacy.signing import SigningKeyError, TrustedKey
from proto.config_file import ConfigError, load_model, parse_model
from proto.tls import check_address
from pruning.recipes import Recipe

logger = logging.getLogger(__name__)

IDENTITY_KEY_NAME = "identity_key.pem"
BUDGET_FILE_NAME = "privacy_budget.json"


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


DEFAULT_MAX_EPSILON = 8.0
"""Largest record-level epsilon a site accepts for one run unless its ``[privacy]`` says otherwise: the
coordinator's own default target (``privacy.calibration_dp.DEFAULT_TARGET_EPSILON``), so a default run is
accepted and anything weaker is not."""
DEFAULT_MAX_DELTA = 1e-5
"""Largest delta a site accepts for one run unless its ``[privacy]`` says otherwise (and never above
1 / the site's document count, whatever the setting)."""


class PrivacyMinimums(_Section):
    """``[privacy]``: the weakest run this participant takes part in.

    Every key has a protective default, so a config without the section still refuses a run without
    record-level DP, one above epsilon 8 (computed here from this site's own model) or one above delta
    1e-5. Randomized response is not required by default: every mask is post-processing of the
    record-level DP releases, which already bound what one document can change; randomized response
    protects single mask coordinates, a different unit.
    """

    max_epsilon0: float | None = Field(None, gt=0)
    """Largest randomized-response epsilon0 accepted (smaller is more private); None: no limit."""
    require_randomized_response: bool = False
    min_threshold: int | None = Field(None, ge=1)
    """Smallest secure-aggregation threshold t accepted."""
    require_record_level_dp: bool = True
    """Refuse a run that reads calibration data without record-level DP (magnitude pruning reads none)."""
    max_target_epsilon: float | None = Field(DEFAULT_MAX_EPSILON, gt=0)
    """Largest record-level epsilon of one run, as this site computes it for its own model's decoder
    blocks from the run's target or noise multiplier, sample rate and delta. None (only from Python; TOML
    has no null): no limit."""
    max_delta: float = Field(DEFAULT_MAX_DELTA, gt=0, lt=1)
    """Largest delta of one run; a run is also refused when its delta is above 1 / this site's document
    count, whatever this says."""
    min_noise_multiplier: float | None = Field(None, gt=0)
    """Smallest noise multiplier of the record-level releases (the one this site will apply)."""
    lifetime_epsilon: float | None = Field(None, gt=0)
    """Record-level epsilon this site may spend on ``data.dataset`` over all runs (basic composition);
    a run that would pass it, or that has no record-level DP, is refused. None: no lifetime budget."""
    lifetime_delta: float | None = Field(None, gt=0, lt=1)
    """The deltas' sum over all runs may not pass this (checked only with ``lifetime_epsilon``; the sum
    may never reach 1 in any case)."""
    allowed_recipes: tuple[Recipe, ...] = Field(tuple(Recipe), min_length=1)
    """Recipes this site takes part in (default all): ``fedprllm`` sends keep-votes, ``fedspallm`` keep-votes
    with weight updates, ``stats`` its calibration column statistics (with record-level DP where the run
    has it, exact otherwise)."""

    def setting(self, key: str, value: bool | float) -> str:
        """Return ``[privacy] key = value`` as TOML spells it, saying when the value is the default."""
        shown = ("true" if value else "false") if isinstance(value, bool) else f"{value:g}"
        default = "" if key in self.model_fields_set else " (the default)"
        return f"[privacy] {key} = {shown}{default}"

    def violations(
        self,
        *,
        reads_data: bool = True,
        randomized_response: bool,
        epsilon0: float,
        threshold: int,
        record_level_dp: bool,
        record_epsilon: float | None,
        delta: float,
        noise_multiplier: float | None,
        documents: int | None = None,
        accounted: bool = True,
        recipe: Recipe | None = None,
    ) -> list[str]:
        """Return why a run with these parameters is weaker than the minimums (empty: acceptable).

        Each reason names the setting it breaks. ``record_epsilon`` and ``noise_multiplier`` are what
        this site computed for its own model (None when unknown, which fails a set bound);
        ``documents`` is its calibration file's document count (None: not read, no 1/N bound).
        ``reads_data`` False (magnitude pruning) skips the record-level settings: nothing of the data is
        released. ``accounted`` False skips the two settings that need the accountants (epsilon, noise
        multiplier): the cheap checks run first, so a run with an absurd delta is refused for its delta.
        ``recipe`` (None: not checked) must be one of ``allowed_recipes``.
        """
        problems: list[str] = []
        if recipe is not None and recipe not in self.allowed_recipes:
            allowed = ", ".join(f'"{r.value}"' for r in self.allowed_recipes)
            problems.append(f"[privacy] allowed_recipes = [{allowed}]: the run's recipe is {recipe.value!r}")
        if self.require_randomized_response and not randomized_response:
            problems.append(
                f"{self.setting('require_randomized_response', True)}: the run sends mask bits without "
                "randomized response"
            )
        if randomized_response and self.max_epsilon0 is not None and epsilon0 > self.max_epsilon0:
            problems.append(
                f"{self.setting('max_epsilon0', self.max_epsilon0)}: the run's epsilon0 {epsilon0:g} is larger"
            )
        if self.min_threshold is not None and threshold < self.min_threshold:
            problems.append(
                f"{self.setting('min_threshold', self.min_threshold)}: the run's threshold {threshold} is smaller"
            )
        if not reads_data:
            return problems
        if self.require_record_level_dp and not record_level_dp:
            problems.append(
                f"{self.setting('require_record_level_dp', True)}: the run has no record-level DP (exact "
                "calibration statistics, no finite epsilon)"
            )
        if not record_level_dp:
            return problems
        if (
            accounted
            and self.max_target_epsilon is not None
            and (record_epsilon is None or record_epsilon > self.max_target_epsilon)
        ):
            stated = "cannot be computed" if record_epsilon is None else f"is {record_epsilon:g}"
            problems.append(
                f"{self.setting('max_target_epsilon', self.max_target_epsilon)}: the run's record-level "
                f"epsilon on this site's data {stated}"
            )
        if delta > self.max_delta:
            problems.append(
                f"{self.setting('max_delta', self.max_delta)}: the run's delta {delta:g} is larger"
            )
        if documents is not None and documents > 0 and delta > 1.0 / documents:
            problems.append(
                f"data.calibration holds {documents} documents: the run's delta {delta:g} is larger than "
                f"1/{documents} (at that delta a mechanism may publish one of them whole and still meet it)"
            )
        if (
            accounted
            and self.min_noise_multiplier is not None
            and (noise_multiplier is None or noise_multiplier < self.min_noise_multiplier)
        ):
            stated = "states none" if noise_multiplier is None else f"is {noise_multiplier:g}"
            problems.append(
                f"{self.setting('min_noise_multiplier', self.min_noise_multiplier)}: the run's noise "
                f"multiplier {stated}"
            )
        return problems


class ParticipantConfig(_Section):
    """The whole participant configuration file."""

    coordinator: CoordinatorSection
    tls: TlsSection
    model: ModelSection
    data: DataSection
    runtime: RuntimeSection
    privacy: PrivacyMinimums = Field(default_factory=lambda: PrivacyMinimums.model_validate({}))
    """Absent: the protective defaults of every ``[privacy]`` key."""
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


def parse_config(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "config"
) -> ParticipantConfig:
    """Return the validated configuration of a parsed TOML document (paths relative to ``base_dir``)."""
    return parse_model(ParticipantConfig, data, base_dir=base_dir, source=source)


def load_config(path: str | Path) -> ParticipantConfig:
    """Return the participant configuration read from the TOML file at ``path``."""
    return load_model(ParticipantConfig, path)
