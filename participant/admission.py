"""What a site accepts at Join: the run's frame, its privacy against the site's minimums, the site's own bill.

Pure functions over the announced ``proto.domain.RunParameters`` and the site's config; ``ParticipantRun``
calls them in order at Join and refuses the run (``RunRefusedError``) on the first problem. Epsilon and
noise multiplier are always the site's own figures (``run_plan``: the announced mechanism over the site's
own model and data), never a figure the coordinator states.
"""

from __future__ import annotations

from participant.config import ParticipantConfig
from participant.errors import RunRefusedError
from participant.privacy import PrivacyPlan, RunPrivacy, plan_privacy
from participant.recipes import recipe_max_input
from privacy.accounting import DEFAULT_ACCOUNTANT_TOLERANCE
from privacy.errors import PrivacyError
from privacy.secagg import check_threshold
from proto.domain import PrivacyParameters, RunParameters
from pruning.methods import Method


def check_run_binding(run: RunParameters) -> None:
    """Raise RunRefusedError unless the run announces a consistent, safe frame for its sessions.

    The frame (n names, t, c, the recipe's max_input) is what each session is checked against later;
    t > (n + c)/2 for the run's own n and c.
    """
    names = list(run.participant_names)
    if len(names) != run.participants or len(set(names)) != len(names):
        raise RunRefusedError(
            f"the run announces {run.participants} participants but {len(set(names))} distinct "
            "participant_names: every session's members must come from one fixed list of n names"
        )
    try:
        check_threshold(run.threshold, participants=run.participants, colluders=run.colluders)
    except PrivacyError as error:
        raise RunRefusedError(f"the run's threshold does not tolerate its colluders: {error}") from None
    expected = recipe_max_input(run)
    if run.max_input != expected:
        raise RunRefusedError(
            f"the run announces max_input {run.max_input}; its recipe defines {expected} for "
            f"{run.participants} participants"
        )


def run_privacy(privacy: PrivacyParameters) -> RunPrivacy:
    """Return the run's privacy parameters as announced (raises PrivacyError when they are inconsistent).

    An absent accountant tolerance is ``privacy.accounting.DEFAULT_ACCOUNTANT_TOLERANCE``.
    """
    return RunPrivacy(
        randomized_response=privacy.randomized_response,
        epsilon0=privacy.epsilon0,
        record_level_dp=privacy.record_level_dp,
        noise_multiplier=privacy.noise_multiplier,
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        sample_rate=privacy.sample_rate,
        accountant_tolerance=(
            privacy.accountant_tolerance
            if privacy.accountant_tolerance is not None
            else DEFAULT_ACCOUNTANT_TOLERANCE
        ),
    )


def run_plan(run: RunParameters, *, blocks: int, documents: int | None = None) -> PrivacyPlan:
    """Return what ``run`` spends on this site's data: its announced mechanism over the site's own counts.

    ``blocks`` is the site's own model's decoder block count and ``documents`` its calibration file's
    document count (None when not read); the run's own ``blocks`` is never used here. Magnitude pruning
    reads no data: epsilon 0, delta 0. Record-level DP off: epsilon None (unbounded). Raises PrivacyError
    when the announced parameters cannot be accounted.
    """
    return plan_privacy(
        run_privacy(run.privacy),
        reads_data=run.method is not Method.MAGNITUDE,
        blocks=blocks,
        documents=documents,
    )


def refusals(
    config: ParticipantConfig,
    run: RunParameters,
    plan: PrivacyPlan | None,
    *,
    documents: int | None = None,
) -> list[str]:
    """Return why ``run`` is weaker than this participant's ``[privacy]`` settings (empty: acceptable).

    Epsilon and noise multiplier are the site's own (``plan``), never a figure the coordinator states;
    ``plan`` None checks only what needs no accounting (``documents``: the site's document count).
    """
    privacy = run.privacy
    return config.privacy.violations(
        reads_data=run.method is not Method.MAGNITUDE,
        randomized_response=privacy.randomized_response,
        epsilon0=privacy.epsilon0,
        threshold=run.threshold,
        record_level_dp=privacy.record_level_dp,
        record_epsilon=plan.epsilon if plan is not None else None,
        delta=privacy.delta,
        noise_multiplier=plan.noise_multiplier if plan is not None else None,
        documents=plan.documents if plan is not None else documents,
        accounted=plan is not None,
    )


def describe_privacy(privacy: PrivacyParameters) -> str:
    """Return the announced privacy parameters as one log line's worth of ``name=value``."""
    fields: dict[str, object] = {
        "randomized_response": privacy.randomized_response,
        "epsilon0": privacy.epsilon0,
        "record_level_dp": privacy.record_level_dp,
        "delta": privacy.delta,
        "sample_rate": privacy.sample_rate,
    }
    if privacy.noise_multiplier is not None:
        fields["noise_multiplier"] = privacy.noise_multiplier
    if privacy.target_epsilon is not None:
        fields["target_epsilon"] = privacy.target_epsilon
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def describe_plan(plan: PrivacyPlan) -> str:
    """Return what the site's own plan spends, for its operator's log."""
    if not plan.reads_data:
        return "magnitude pruning reads no data (epsilon 0)"
    if plan.epsilon is None:
        return f"{plan.blocks} releases of exact statistics (no record-level DP: no finite epsilon)"
    return (
        f"{plan.releases} releases (this model's decoder blocks) at noise multiplier {plan.noise_multiplier:.4g}: "
        f"epsilon {plan.epsilon:.4g} at delta {plan.delta:g}"
    )


__all__ = ["check_run_binding", "describe_plan", "describe_privacy", "refusals", "run_plan", "run_privacy"]
