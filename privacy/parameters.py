"""A run's privacy parameters: one frozen model, validated once, for the operator's file and the wire.

The coordinator reads them from its TOML ``[privacy]`` table (``coordinator.config.PrivacySection``, which
adds only what a file needs: the default target epsilon and the least noise a site's statement may
attest) and announces them; a site reads the same model back from the run's parameters
(``participant.privacy.RunPrivacy``) and plans its own bill from it. The rules every holder relies on:

* ``epsilon0`` > 0 when ``randomized_response`` is on, >= 0 otherwise (then it is not used);
* record-level DP takes exactly one of ``noise_multiplier`` (> 0) and ``target_epsilon`` (> 0), and
  neither is given without it;
* ``delta`` in (0, 1), ``sample_rate`` in (0, 1], ``colluders`` >= 0, ``accountant_tolerance`` >= 0.

A bad value raises pydantic's ``ValidationError`` whose location names the field (in a config file:
``privacy.epsilon0``); the site's ``RunPrivacy`` raises :class:`~privacy.errors.PrivacyError` instead,
naming the field the same way.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from privacy.accounting import DEFAULT_ACCOUNTANT_TOLERANCE


class PrivacyParameters(BaseModel):
    """The run's privacy parameters: randomized response, record-level DP, accounting, collusion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    randomized_response: bool = True
    epsilon0: float = 4.0
    """Randomized response per mask bit (used when ``randomized_response`` is on)."""
    record_level_dp: bool = True
    noise_multiplier: float | None = Field(None, gt=0)
    """Record-level noise multiplier (instead of ``target_epsilon``)."""
    target_epsilon: float | None = Field(None, gt=0)
    """Record-level epsilon at ``delta`` the noise multiplier is planned for."""
    delta: float = Field(1e-5, gt=0, lt=1)
    sample_rate: float = Field(1.0, gt=0, le=1)
    """Poisson sampling rate of each participant's records per block."""
    colluders: int | None = Field(None, ge=0)
    """Participants assumed to collude with the coordinator; default the most the threshold tolerates."""
    accountant_tolerance: float = Field(DEFAULT_ACCOUNTANT_TOLERANCE, ge=0)
    """Largest relative gap allowed between the RDP and PRV accountants."""

    @field_validator("epsilon0")
    @classmethod
    def _positive_when_used(cls, value: float, info: ValidationInfo) -> float:
        if not value >= 0:
            raise ValueError(f"must be >= 0, got {value}")
        if info.data.get("randomized_response", True) and not value > 0:
            raise ValueError(f"must be positive when randomized_response is on, got {value}")
        return value

    @model_validator(mode="after")
    def _one_record_level_mechanism(self) -> PrivacyParameters:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("give either noise_multiplier or target_epsilon, not both")
        if not self.record_level_dp and (
            self.noise_multiplier is not None or self.target_epsilon is not None
        ):
            raise ValueError("noise_multiplier and target_epsilon need record_level_dp = true")
        if self.record_level_dp and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("record_level_dp needs noise_multiplier or target_epsilon")
        return self
