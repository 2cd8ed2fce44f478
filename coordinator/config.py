"""The coordinator's configuration: a TOML file read into frozen pydantic models.

The keys of the issue's table are the public contract; every other key has a default, so a file holding
only the contract keys runs (``examples/coordinator-minimal.toml``). Unknown keys are refused naming the
key; relative paths are relative to the config file; a bad value fails naming ``section.key``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from coordinator.aggregation import ComparisonGroup
from privacy.calibration_dp import DEFAULT_TARGET_EPSILON
from privacy.ledger import MIN_NOISE_MULTIPLIER
from privacy.parameters import PrivacyParameters
from privacy.secagg.parameters import (
    DEFAULT_CHUNK_COORDINATES,
    MAX_BIT_WIDTH,
    check_threshold,
    default_threshold,
    minimum_threshold,
)
from proto.config_file import ConfigError, load_model, parse_model
from proto.tls import MAX_CHUNK_PAYLOAD_BYTES, check_address
from pruning.errors import PruningInputError
from pruning.masks import SparsityPattern, parse_pattern
from pruning.methods import Method
from pruning.owl import OWL_LAMBDA, OWL_OUTLIER_MULTIPLE, OwlSettings
from pruning.recipes import Mode, Recipe, owl_conflicts, recipe_conflicts

logger = logging.getLogger(__name__)

# The widest masked chunk: b bits a coordinate with b <= MAX_BIT_WIDTH must fit one 4 MiB message.
MAX_CHUNK_COORDINATES = MAX_CHUNK_PAYLOAD_BYTES * 8 // MAX_BIT_WIDTH
# Server threads beyond the admitted calls' own: a refused call is answered from a thread too (in microseconds).
REFUSAL_HEADROOM_THREADS = 4


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # Relative to the file, not to the working directory, so a unit file or a cron job finds the same
    # paths as an operator in a shell.
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def _address(value: str) -> str:
    return check_address(value)


Address = Annotated[str, AfterValidator(_address)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSection(_Section):
    """``[server]``: where the coordinator listens, and how long it waits."""

    address: Address
    """``host:port`` to listen on, e.g. ``0.0.0.0:50051``."""
    max_workers: int | None = Field(None, ge=1)
    """Threads serving calls; default, and least allowed, ``worker_threads``: every call the caps admit
    has a thread of its own, so no caller waits for one."""
    max_calls_per_participant: int = Field(4, ge=2)
    """Calls one listed participant may have open at once (a long poll, a stream and retries beside them);
    more are refused with RESOURCE_EXHAUSTED at once."""
    max_monitoring_calls: int = Field(4, ge=1)
    """Calls all names outside ``run.participants`` and ``monitors`` together may have open (health checks
    only); each name in ``monitors`` has a cap this size of its own."""
    monitors: tuple[str, ...] = ()
    """Certificate common names of the operator's own monitoring: health checks only, like any name outside
    ``run.participants``, but each with its own cap, so strangers holding the CA's certificates cannot crowd
    them out of the shared one."""
    idle_timeout_s: float = Field(60.0, gt=0)
    """Longest wait for a caller's next message (a call that sends nothing for this long is cut)."""
    join_timeout_s: float | None = Field(None, gt=0)
    """How long to wait for ``min_participants`` to join; None waits until they do."""
    round_timeout_s: float = Field(600.0, gt=0)
    """How long one secure-aggregation round waits before those missing count as dropped."""
    await_poll_s: float = Field(20.0, gt=0)
    """Longest a participant's Await call is held open before the coordinator answers Wait."""


class TlsSection(_Section):
    """``[tls]``: PEM files of the coordinator's server certificate and of the CA its participants use."""

    ca: ConfigPath
    certificate: ConfigPath
    private_key: ConfigPath


class RunSection(_Section):
    """``[run]``: the model, who may join, and how to prune."""

    model: ConfigPath
    """Base checkpoint directory (``save_pretrained`` layout)."""
    participants: tuple[str, ...] = Field(min_length=1)
    """Certificate common names allowed to join."""
    min_participants: int | None = Field(None, ge=1)
    """Joins needed before the run starts; default every listed participant."""
    threshold: int | None = Field(None, ge=1)
    """Secure-aggregation threshold t; default floor(2m/3) + 1 for m = min_participants."""
    method: Method = Method.WANDA
    pattern: str = "unstructured"
    """``unstructured`` or N:M such as ``2:4``."""
    sparsity: float | None = None
    """Fraction pruned, in (0, 1); implied by an N:M pattern."""
    group: ComparisonGroup = ComparisonGroup.LAYER
    mode: Mode = Mode.ONE_SHOT
    """``one-shot`` or ``iterative``."""
    nsamples: int = Field(128, ge=1)
    seqlen: int | None = Field(None, ge=1)
    """Tokens per calibration sample; default 2048 capped at the model's context length."""
    weight_scaling: bool = False
    recipe: Recipe = Recipe.FEDPRLLM
    """``fedprllm`` (keep-votes only), ``fedspallm`` (SparseGPT votes and l0-norm averaged kept weights,
    each block over the participants assigned to it within their declared ``max_blocks``) or ``stats``
    (summed calibration statistics: column statistics pruned with Wanda or RIA, or X^T X pruned and
    reconstructed with SparseGPT, whose weights the sites then take)."""
    chunk_coordinates: int = Field(DEFAULT_CHUNK_COORDINATES, ge=64, le=MAX_CHUNK_COORDINATES, multiple_of=64)
    """Coordinates per masked-input chunk; at b bits a coordinate the payload stays under 4 MiB."""
    owl: bool = False
    """OWL: give each decoder block its own sparsity from its share of outlier scores, computed from the
    column statistics of the dense model summed over the sites (one more secure-aggregation session, and
    one more release of each site's statistics, per block); the model's overall sparsity stays ``sparsity``.
    Unstructured patterns, recipes ``fedprllm`` and ``stats``."""
    owl_lambda: float = OWL_LAMBDA
    """OWL's lambda: a block's sparsity lies within 2 * lambda of ``sparsity``."""
    owl_outlier_multiple: float = OWL_OUTLIER_MULTIPLE
    """OWL's M: a score is an outlier above M times its block's mean score."""

    OWL_KEYS: ClassVar[tuple[str, ...]] = ("owl", "owl_lambda", "owl_outlier_multiple")

    @field_validator("participants")
    @classmethod
    def _distinct_names(cls, participants: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in participants):
            raise ValueError("must not contain an empty name")
        duplicates = sorted({name for name in participants if participants.count(name) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return participants

    @field_validator("min_participants")
    @classmethod
    def _reachable(cls, minimum: int | None, info: ValidationInfo) -> int | None:
        listed = info.data.get("participants")
        if minimum is not None and listed is not None and minimum > len(listed):
            raise ValueError(f"{minimum} exceeds the {len(listed)} listed participants")
        return minimum

    @field_validator("sparsity")
    @classmethod
    def _fits_pattern(cls, sparsity: float | None, info: ValidationInfo) -> float | None:
        pattern = info.data.get("pattern")
        if pattern is not None:
            try:
                parse_pattern(pattern, sparsity)
            except ValueError as error:
                raise ValueError(f"{error} (pattern {pattern!r})") from None
        return sparsity

    @model_validator(mode="after")
    def _recipe_fits(self) -> RunSection:
        settings: dict[str, Any] = {
            "method": self.method,
            "mode": self.mode,
            "weight_scaling": self.weight_scaling,
        }
        problems = recipe_conflicts(self.recipe, **settings)
        if problems:
            # The rule lives in pruning.recipes; the fields it objects to are those that another value of
            # their own would satisfy better.
            choices: dict[str, tuple[Any, ...]] = {
                "method": tuple(Method),
                "mode": tuple(Mode),
                "weight_scaling": (False, True),
            }
            fields = [
                field
                for field, values in choices.items()
                if any(
                    len(recipe_conflicts(self.recipe, **{**settings, field: value})) < len(problems)
                    for value in values
                )
            ]
            raise ValueError(
                f"recipe {self.recipe.value!r} needs "
                + ", ".join(problems)
                + f" (set {', '.join('run.' + field for field in fields)})"
            )
        return self

    @model_validator(mode="after")
    def _owl_fits(self) -> RunSection:
        if not self.owl:
            return self
        try:
            OwlSettings(multiple=self.owl_outlier_multiple, lam=self.owl_lambda)
        except PruningInputError as error:
            raise ValueError(f"run.owl_lambda / run.owl_outlier_multiple: {error}") from None
        problems = owl_conflicts(self.recipe, method=self.method, n_m=self.sparsity_pattern.is_n_m)
        if problems:
            raise ValueError("run.owl needs " + ", ".join(problems))
        return self

    @property
    def owl_settings(self) -> OwlSettings | None:
        """Return OWL's settings when ``owl`` is on (None: every block at ``sparsity``)."""
        if not self.owl:
            return None
        return OwlSettings(multiple=self.owl_outlier_multiple, lam=self.owl_lambda)

    def digest_fields(self) -> dict[str, Any]:
        """Return the section as the state directory's digest covers it: the OWL keys only when OWL is on,
        so that a run without OWL keeps the digest it had before they existed."""
        fields = self.model_dump(mode="json")
        if not self.owl:
            for key in self.OWL_KEYS:
                fields.pop(key)
        return fields

    @property
    def min_participants_or_default(self) -> int:
        """Return the joins needed before the run starts."""
        return self.min_participants if self.min_participants is not None else len(self.participants)

    def threshold_for(self, *, colluders: int) -> int:
        """Return t, the secure-aggregation threshold: as configured, or the default for min_participants
        (raised to the safe minimum for the listed participants, which every site checks at join)."""
        if self.threshold is not None:
            return self.threshold
        return max(
            default_threshold(self.min_participants_or_default, colluders=colluders),
            minimum_threshold(len(self.participants), colluders=colluders),
        )

    @property
    def sparsity_pattern(self) -> SparsityPattern:
        """Return the sparsity pattern of ``pattern`` and ``sparsity``."""
        return parse_pattern(self.pattern, self.sparsity)


class PrivacySection(PrivacyParameters):
    """``[privacy]``: the run's privacy parameters (every key has a default, so the section is optional).

    The rules are :class:`privacy.parameters.PrivacyParameters`'s, the model a site reads back from the
    run; the file adds only a default target epsilon and a floor on the noise multiplier.
    """

    noise_multiplier: float | None = Field(None, ge=MIN_NOISE_MULTIPLIER)
    """Record-level noise multiplier; at least the least a site's statement may attest (0.3)."""

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data: Any) -> Any:
        # The default target applies only when nothing else was said, so it is filled before validation
        # (a frozen model cannot be changed after it).
        if isinstance(data, dict):
            data = dict(data)
            record_level = data.get("record_level_dp", True)
            if (
                record_level is True
                and data.get("noise_multiplier") is None
                and data.get("target_epsilon") is None
            ):
                data["target_epsilon"] = DEFAULT_TARGET_EPSILON
        return data


class OutputSection(_Section):
    """``[output]``: where results and durable state go, and the long-term report key."""

    directory: ConfigPath
    """The pruned checkpoint, ``sparsity.json`` and ``privacy_report.json``."""
    state: ConfigPath
    """Durable run state (SQLite and memory-mapped counts); a restart with it resumes the run."""
    signing_key: ConfigPath
    """Ed25519 report key, created 0600 if absent; its public half is written to ``<signing_key>.pub``."""
    overwrite: bool = False
    """Allow a non-empty output directory."""

    @property
    def signing_public_key(self) -> Path:
        """Return where the public half of the report key is written for auditors."""
        return self.signing_key.with_name(self.signing_key.name + ".pub")


class CoordinatorConfig(_Section):
    """The whole coordinator configuration file."""

    server: ServerSection
    tls: TlsSection
    run: RunSection
    privacy: PrivacySection = Field(default_factory=lambda: PrivacySection.model_validate({}))
    output: OutputSection

    @model_validator(mode="after")
    def _threshold_is_safe(self) -> CoordinatorConfig:
        # Safe for the largest session, every listed participant (t > (n + c)/2, which each site checks
        # against the run's announced n and c at join); reachable by the smallest, min_participants.
        listed = len(self.run.participants)
        minimum = self.run.min_participants_or_default
        colluders = self.privacy.colluders or 0
        threshold = self.run.threshold_for(colluders=colluders)
        try:
            check_threshold(threshold, participants=listed, colluders=colluders)
        except ValueError as error:
            raise ValueError(
                f"run.threshold (with {listed} listed participants, privacy.colluders {colluders}): {error}"
            ) from None
        if threshold > minimum:
            raise ValueError(
                f"run.threshold {threshold} is above run.min_participants {minimum}: a session of "
                f"{minimum} participants could never be unmasked (raise min_participants, or list fewer "
                "participants so that a smaller threshold is safe)"
            )
        return self

    @model_validator(mode="after")
    def _statistics_send_no_votes(self) -> CoordinatorConfig:
        # Randomized response randomizes keep-votes; the statistics recipe sends none, so announcing it would
        # promise the sites a protection that nothing applies (their statistics' privacy is record-level DP).
        if self.run.recipe is Recipe.STATISTICS and self.privacy.randomized_response:
            raise ValueError(
                "run.recipe 'stats' sends calibration statistics, not keep-votes: set "
                "privacy.randomized_response = false (record-level DP, privacy.record_level_dp, protects the "
                "statistics)"
            )
        return self

    @model_validator(mode="after")
    def _monitors_are_not_participants(self) -> CoordinatorConfig:
        both = sorted(set(self.server.monitors) & set(self.run.participants))
        if both:
            raise ValueError(
                f"server.monitors lists {', '.join(both)}, also in run.participants: a name is one or the other"
            )
        if len(set(self.server.monitors)) != len(self.server.monitors):
            raise ValueError("server.monitors lists a name twice")
        return self

    @model_validator(mode="after")
    def _owl_statistics_are_private(self) -> CoordinatorConfig:
        # The allocation sends each site's column statistics of the dense model. Randomized response covers
        # keep-votes only: with it on and record-level DP off the allocation would release exact statistics
        # that the run's announced protection does not cover.
        if self.run.owl and self.privacy.randomized_response and not self.privacy.record_level_dp:
            raise ValueError(
                "run.owl sends each site's calibration statistics of the dense model, which randomized "
                "response does not cover: with privacy.randomized_response on, set privacy.record_level_dp = "
                "true (or turn both off for a run without privacy)"
            )
        return self

    @model_validator(mode="after")
    def _enough_workers(self) -> CoordinatorConfig:
        needed = self.worker_threads
        if self.server.max_workers is not None and self.server.max_workers < needed:
            raise ValueError(
                f"server.max_workers {self.server.max_workers} is below {needed}: "
                f"{len(self.run.participants)} participants x server.max_calls_per_participant "
                f"{self.server.max_calls_per_participant} + (1 + {len(self.server.monitors)} monitors) x "
                f"server.max_monitoring_calls {self.server.max_monitoring_calls} + {REFUSAL_HEADROOM_THREADS} "
                "(leave it out to use that)"
            )
        return self

    @property
    def worker_threads(self) -> int:
        """Return the server's threads: participants x per-participant cap + (1 + monitors) x monitoring cap
        + 4 (or more)."""
        server = self.server
        needed = (
            len(self.run.participants) * server.max_calls_per_participant
            + (1 + len(server.monitors)) * server.max_monitoring_calls
            + REFUSAL_HEADROOM_THREADS
        )
        return max(needed, server.max_workers or 0)

    @property
    def threshold(self) -> int:
        """Return t, the secure-aggregation threshold of every session of the run."""
        return self.run.threshold_for(colluders=self.privacy.colluders or 0)

    def check_paths(self) -> None:
        """Return None if the input files exist; raise ConfigError naming the field otherwise.

        Separate from validation so that a config can be read (and tested) on a machine without the files.
        """
        for field, path, kind in (
            ("tls.ca", self.tls.ca, "file"),
            ("tls.certificate", self.tls.certificate, "file"),
            ("tls.private_key", self.tls.private_key, "file"),
            ("run.model", self.run.model, "directory"),
        ):
            exists = path.is_dir() if kind == "directory" else path.is_file()
            if not exists:
                raise ConfigError(f"{field}: no {kind} at {path}")


def parse_config(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "config"
) -> CoordinatorConfig:
    """Return the validated configuration of a parsed TOML document (paths relative to ``base_dir``)."""
    return parse_model(CoordinatorConfig, data, base_dir=base_dir, source=source)


def load_config(path: str | Path) -> CoordinatorConfig:
    """Return the coordinator configuration read from the TOML file at ``path``."""
    return load_model(CoordinatorConfig, path)
