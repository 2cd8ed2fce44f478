"""What a site accepts: at Join the run's frame, its privacy against the site's minimums, the site's own bill;
then each session's frame and roster against the run.

Functions over the announced ``proto.domain`` types and the site's config (and ``LifetimeSpend``, the
lifetime budget). ``ParticipantRun`` calls the run checks at Join and refuses the run
(``RunRefusedError``) on the first problem; it calls the session checks before it answers a session: a
session outside the run's frame, or a roster that moves an identity, is proof that the coordinator lied
(``CoordinatorMisbehaviour``), and a peer key the site's pins refuse refuses the run (``PeerKeyError``).
Epsilon and noise multiplier are always the site's own figures (``run_plan``: the announced mechanism
over the site's own model and data), never a figure the coordinator states.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from participant.config import ParticipantConfig
from participant.errors import PeerKeyError, RunRefusedError
from participant.markers import SiteRecords
from participant.privacy import PrivacyPlan, RunPrivacy, plan_privacy
from participant.recipes import SessionFrame, recipe_max_input
from privacy.accounting import DEFAULT_ACCOUNTANT_TOLERANCE
from privacy.budget import BudgetExceeded, BudgetLedgerError, LifetimeBudget
from privacy.errors import PrivacyError
from privacy.secagg import ContradictoryViewError, SessionHistory, SessionParameters, check_threshold
from privacy.signing import TrustedKey, key_fingerprint
from proto.domain import AnnouncedPrivacy, Member, RunParameters, SessionTerms
from pruning.errors import PruningInputError
from pruning.methods import Method
from pruning.owl import OwlSettings
from pruning.recipes import owl_conflicts

logger = logging.getLogger(__name__)


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


def run_privacy(privacy: AnnouncedPrivacy) -> RunPrivacy:
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
        releases_per_block=1 if run.owl is None else 2,
    )


def owl_settings(run: RunParameters) -> OwlSettings | None:
    """Return the run's OWL settings (None: a uniform run); RunRefusedError when the site cannot take them.

    OWL needs an unstructured pattern and a recipe and method that allow it (``pruning.recipes.
    owl_conflicts``), and private statistics wherever the run claims privacy: the allocation releases each
    block's column statistics of the dense model, which randomized response does not cover, so a run with
    randomized response and without record-level DP is refused (whatever its coordinator says of it).
    """
    if run.owl is None:
        return None
    try:
        settings = OwlSettings(multiple=run.owl.outlier_multiple, lam=run.owl.lam)
    except PruningInputError as error:
        raise RunRefusedError(f"the run's OWL parameters: {error}") from None
    problems = owl_conflicts(run.recipe, method=run.method, n_m=run.pattern.is_n_m)
    if run.privacy.randomized_response and not run.privacy.record_level_dp:
        problems.append(
            "record-level DP wherever randomized response is on (the allocation releases each block's "
            "calibration statistics, which randomized response does not cover)"
        )
    if problems:
        raise RunRefusedError("the run announces OWL, which needs " + ", ".join(problems))
    return settings


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
        recipe=run.recipe,
    )


def describe_privacy(privacy: AnnouncedPrivacy) -> str:
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
        return f"{plan.releases} releases of exact statistics (no record-level DP: no finite epsilon)"
    per_block = "" if plan.releases == plan.blocks else f", {plan.releases // plan.blocks} per block (OWL)"
    return (
        f"{plan.releases} releases (this model's {plan.blocks} decoder blocks{per_block}) at noise multiplier "
        f"{plan.noise_multiplier:.4g}: epsilon {plan.epsilon:.4g} at delta {plan.delta:g}"
    )


# ------------------------------------------------------------------ lifetime budget
class LifetimeSpend:
    """The site's lifetime privacy budget for one run: checked at join, committed before any vote exists.

    The spend is the site's own plan, charged per release: the token that names this state directory's
    release in the run (``SiteRecords.release_token``), so a second computation on the data under the same
    run id (another state directory over the same budget file) is charged again.
    """

    def __init__(self, config: ParticipantConfig, records: SiteRecords) -> None:
        minimums = config.privacy
        self.records = records
        self.budget = (
            LifetimeBudget(
                config.runtime.budget_path,
                dataset=config.data.dataset_name,
                lifetime_epsilon=minimums.lifetime_epsilon,
                lifetime_delta=minimums.lifetime_delta,
            )
            if minimums.lifetime_epsilon is not None
            else None
        )
        self._spend: tuple[str, str, float, float, int | None] | None = None

    def check(self, run: RunParameters, plan: PrivacyPlan) -> None:
        """Refuse the run (RunRefusedError) if it would pass the lifetime budget; remember its spend."""
        if self.budget is None:
            return
        epsilon, delta = plan.epsilon, plan.delta
        if epsilon is None:
            # Exact statistics have no finite epsilon: counting them as 0 would under-count, so the safe
            # reading of a lifetime budget is to refuse them.
            raise RunRefusedError(
                f"the run has no record-level DP (exact calibration statistics, unbounded epsilon), which "
                f"privacy.lifetime_epsilon {self.budget.lifetime_epsilon:g} cannot account for"
            )
        run_id = run.run_id_hex
        release = self.records.release_token(run_id)
        try:
            after = self.budget.check(epsilon, delta, run_id=run_id, release=release, records=plan.documents)
        except BudgetExceeded as error:
            raise RunRefusedError(str(error)) from None
        except BudgetLedgerError as error:
            raise RunRefusedError(f"runtime.budget: {error}") from None
        self._spend = (run_id, release, epsilon, delta, plan.documents)
        logger.info(
            "lifetime budget of dataset %r: this run spends epsilon %.4g (delta %g) for %d releases; %.4g "
            "of %g after it",
            self.budget.dataset,
            epsilon,
            delta,
            plan.releases,
            after.epsilon,
            self.budget.lifetime_epsilon,
        )

    def commit(self) -> None:
        """Record the checked spend durably before anything computed from the data exists (idempotent)."""
        if self.budget is None or self._spend is None:
            return
        run_id, release, epsilon, delta, documents = self._spend
        try:
            self.budget.commit(run_id, epsilon=epsilon, delta=delta, release=release, records=documents)
        except BudgetExceeded as error:
            raise RunRefusedError(str(error)) from None
        except BudgetLedgerError as error:
            raise RunRefusedError(f"runtime.budget: {error}") from None


# ------------------------------------------------------------------ sessions
def check_session_frame(
    run: RunParameters,
    parameters: SessionTerms | SessionParameters,
    *,
    recipe: SessionFrame,
    dimension: int,
    block: int,
    max_input: int | None = None,
) -> None:
    """Raise CoordinatorMisbehaviour unless a session of ``block`` stays inside the frame the run announced.

    The run's t and c exactly (so t > (n + c)/2 holds with the run's c for the session's n), no more
    members than the run's n, the recipe's max_input and ring, the block's own ``dimension``, and the
    chunking both roles derive from the announced chunk_coordinates (``recipe.chunk_coordinates``).
    ``max_input``: the session's own encoding where it is not the run's (an OWL allocation session's
    statistic lanes); ``recipe`` then is the allocation's.
    """
    expected_input = run.max_input if max_input is None else max_input
    if parameters.threshold != run.threshold:
        raise ContradictoryViewError(
            f"session threshold {parameters.threshold} is not the run's {run.threshold}",
            check="session-threshold",
        )
    if parameters.colluders != run.colluders:
        raise ContradictoryViewError(
            f"session colluders {parameters.colluders} is not the run's {run.colluders}",
            check="session-colluders",
        )
    participants = len(parameters.participant_ids)
    if participants > run.participants:
        raise ContradictoryViewError(
            f"the session has {participants} participants; the run has {run.participants}",
            check="session-members",
        )
    if parameters.max_input != expected_input or not parameters.ring_headroom:
        raise ContradictoryViewError(
            f"session max_input {parameters.max_input} (ring headroom {parameters.ring_headroom}) is not "
            f"the run's encoding: max_input {expected_input} with ring headroom",
            check="session-encoding",
        )
    if parameters.dimension != dimension:
        raise ContradictoryViewError(
            f"session dimension {parameters.dimension} is not block {block}'s {dimension}",
            check="session-dimension",
        )
    chunk = recipe.chunk_coordinates(participants=participants, max_input=parameters.max_input)
    if parameters.chunk_coordinates != chunk:
        raise ContradictoryViewError(
            f"session chunk_coordinates {parameters.chunk_coordinates} is not the {chunk} the run announced",
            check="session-chunk",
        )


# ------------------------------------------------------------------ peers
def check_roster(
    members: Iterable[Member],
    participant_ids: Sequence[int],
    *,
    run: RunParameters,
    own: Member,
    pins: Mapping[str, TrustedKey],
    history: SessionHistory,
) -> dict[int, str]:
    """Return {participant id: name} of a session's members after checking who they are.

    Identities are fixed for the run: each member is one of the run's announced names, no name, id
    or key appears twice, the ids are the session's, and each name keeps the id and identity key it
    had the first time this site (``own``) saw it (remembered durably in ``history``):
    CoordinatorMisbehaviour otherwise. A key that differs from the one pinned in [peers] refuses the run
    (PeerKeyError).
    """
    members = list(members)
    allowed = set(run.participant_names)
    if len(members) != len(participant_ids):
        raise ContradictoryViewError(
            "the session's members are not its participant ids", check="session-members"
        )
    for what, values in (
        ("name", [m.name for m in members]),
        ("participant id", [m.participant_id for m in members]),
        ("identity key", [m.identity_key for m in members]),
    ):
        if len(set(values)) != len(values):
            raise ContradictoryViewError(
                f"the session's roster repeats a {what}: one site under several ids would hold several "
                "shares of every secret",
                check="roster-repeats-identity",
            )
    if {m.participant_id for m in members} != set(participant_ids):
        raise ContradictoryViewError(
            "the session's members are not its participant ids", check="session-members"
        )
    strangers = sorted(m.name for m in members if m.name not in allowed)
    if strangers:
        raise ContradictoryViewError(
            f"the session's roster holds {strangers}, not among the run's participants",
            check="session-members",
        )
    if own.participant_id not in {m.participant_id for m in members}:
        raise ContradictoryViewError("the session does not include this participant", check="session-members")
    for member in members:
        key = member.identity_key
        if member.participant_id == own.participant_id:
            if key != own.identity_key or member.name != own.name:
                raise PeerKeyError(
                    f"the coordinator announced another identity for this participant "
                    f"({member.name!r}): {key_fingerprint(key)} instead of {key_fingerprint(own.identity_key)}"
                )
        elif pins:
            pin = pins.get(member.name)
            if pin is None:
                raise PeerKeyError(
                    f"the session's roster holds {member.name!r}, which has no pinned key in [peers]: "
                    "refusing a peer whose key only the coordinator vouches for"
                )
            if not pin.matches(key):
                raise PeerKeyError(
                    f"the identity key the coordinator relays for {member.name!r} "
                    f"({key_fingerprint(key)}) differs from the one pinned in peers.{member.name} "
                    f"({pin.fingerprint}): refusing the run"
                )
    for member in members:
        history.bind_identity(name=member.name, participant=member.participant_id, key=member.identity_key)
    return {m.participant_id: m.name for m in members}


__all__ = [
    "LifetimeSpend",
    "check_roster",
    "check_session_frame",
    "check_run_binding",
    "describe_plan",
    "describe_privacy",
    "owl_settings",
    "refusals",
    "run_plan",
    "run_privacy",
]
