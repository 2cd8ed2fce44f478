"""A participant's lifetime budget: runs compose by summing, over-budget runs are refused, commits survive."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from privacy.budget import BudgetExceeded, BudgetLedgerError, LifetimeBudget
from privacy.errors import PrivacyError


def _budget(tmp_path: Path, **overrides: object) -> LifetimeBudget:
    settings: dict = {"dataset": "notes", "lifetime_epsilon": 10.0, "lifetime_delta": 1e-4, **overrides}
    return LifetimeBudget(tmp_path / "budget.json", **settings)


def test_runs_compose_by_summing_epsilons_and_deltas(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    budget.commit("run-1", epsilon=4.0, delta=1e-5)
    budget.commit("run-2", epsilon=3.0, delta=2e-5)
    spent = _budget(tmp_path).spent()  # a fresh object reads what was committed
    assert (spent.epsilon, spent.delta, spent.runs) == (7.0, pytest.approx(3e-5), 2)
    assert budget.check(3.0, 1e-5).epsilon == 10.0  # exactly filling the budget is allowed


def test_a_run_past_the_budget_is_refused_naming_the_budget_and_figures(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    budget.commit("run-1", epsilon=8.0, delta=1e-5)
    with pytest.raises(BudgetExceeded) as error:
        budget.check(4.0, 1e-5, run_id="run-2")
    message = str(error.value)
    for text in (
        "lifetime_epsilon",
        "'notes'",
        "10",
        "spent 8",
        "needs 4",
        "together 12",
        "basic composition",
    ):
        assert text in message
    with pytest.raises(BudgetExceeded):
        budget.commit("run-2", epsilon=4.0, delta=1e-5)  # commit re-checks: no race past the budget
    with pytest.raises(BudgetExceeded, match="lifetime_delta"):
        budget.check(1.0, 1e-4)
    assert budget.spent().runs == 1


def test_commit_is_idempotent_per_run_id(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    first = budget.commit("run-1", epsilon=4.0, delta=1e-5)
    assert budget.commit("run-1", epsilon=4.0, delta=1e-5) == first
    assert budget.check(4.0, 1e-5, run_id="run-1").runs == 1  # a resumed run is not counted twice
    with pytest.raises(BudgetLedgerError, match="run-1"):
        budget.commit("run-1", epsilon=5.0, delta=1e-5)
    assert budget.spent().epsilon == 4.0


def test_a_crash_while_committing_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = _budget(tmp_path)
    budget.commit("run-1", epsilon=4.0, delta=1e-5)
    before = (tmp_path / "budget.json").read_bytes()

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        budget.commit("run-2", epsilon=3.0, delta=1e-5)
    monkeypatch.undo()
    assert (tmp_path / "budget.json").read_bytes() == before  # the committed entry is intact
    assert not list(tmp_path.glob(".budget.json.*"))  # no half-written file left behind
    budget.commit("run-2", epsilon=3.0, delta=1e-5)  # the retry counts the run once
    budget.commit("run-2", epsilon=3.0, delta=1e-5)
    assert budget.spent().epsilon == 7.0 and budget.spent().runs == 2


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["entries"][0].__setitem__("epsilon", 0.5),
        lambda d: d["entries"].pop(0),
        lambda d: d.__setitem__("dataset", "other"),
    ],
)
def test_an_edited_budget_file_is_refused(tmp_path: Path, edit) -> None:
    budget = _budget(tmp_path)
    budget.commit("run-1", epsilon=4.0, delta=1e-5)
    budget.commit("run-2", epsilon=4.0, delta=1e-5)
    path = tmp_path / "budget.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BudgetLedgerError):
        budget.spent()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(PrivacyError, match="lifetime_epsilon"):
        LifetimeBudget("b.json", dataset="notes", lifetime_epsilon=0.0)
    with pytest.raises(PrivacyError, match="lifetime_delta"):
        LifetimeBudget("b.json", dataset="notes", lifetime_epsilon=1.0, lifetime_delta=1.0)
