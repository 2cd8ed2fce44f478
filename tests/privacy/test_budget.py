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


# ---------------------------------------------------------------------- releases, not run ids
def test_a_second_release_under_one_run_id_is_charged_again(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    first = budget.commit("run-1", epsilon=4.0, delta=1e-5, release="state-a")
    assert budget.commit("run-1", epsilon=4.0, delta=1e-5, release="state-a") == first  # a retry
    assert budget.check(4.0, 1e-5, run_id="run-1", release="state-a").runs == 1
    # The coordinator chose the run id; another computation on the data under it is another release.
    assert budget.check(4.0, 1e-5, run_id="run-1", release="state-b").epsilon == 8.0
    budget.commit("run-1", epsilon=4.0, delta=1e-5, release="state-b")
    assert (budget.spent().epsilon, budget.spent().runs) == (8.0, 2)
    with pytest.raises(BudgetExceeded, match="lifetime_epsilon"):
        budget.commit("run-1", epsilon=4.0, delta=1e-5, release="state-c")  # 12 > 10
    with pytest.raises(BudgetLedgerError, match="same release cannot be committed again"):
        budget.commit("run-1", epsilon=2.0, delta=1e-5, release="state-a")  # other parameters, one release


def test_a_budget_file_written_before_releases_were_named_still_verifies_and_is_charged_anew(
    tmp_path: Path,
) -> None:
    import hashlib

    from privacy.budget import FORMAT, _genesis
    from privacy.ledger import canonical_json

    fields = {
        "index": 0,
        "run_id": "run-1",
        "epsilon": 4.0,
        "delta": 1e-5,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "prev_hash": _genesis("notes"),
    }
    digest = hashlib.sha256(canonical_json({"dataset": "notes", **fields})).hexdigest()
    legacy = {"format": FORMAT, "dataset": "notes", "entries": [{**fields, "entry_hash": digest}]}
    (tmp_path / "budget.json").write_text(json.dumps(legacy))
    budget = _budget(tmp_path)
    assert budget.spent().epsilon == 4.0
    budget.commit("run-1", epsilon=4.0, delta=1e-5, release="state-a")  # a named release: charged
    assert budget.spent().epsilon == 8.0
    assert "release" not in json.loads((tmp_path / "budget.json").read_text())["entries"][0]


def test_deltas_never_sum_to_one_or_more_whatever_the_lifetime_delta(tmp_path: Path) -> None:
    budget = _budget(tmp_path, lifetime_epsilon=100.0, lifetime_delta=None)
    budget.commit("run-1", epsilon=0.01, delta=0.5)
    with pytest.raises(BudgetExceeded, match="a summed delta of 1 or more bounds nothing"):
        budget.commit("run-2", epsilon=0.01, delta=0.5)
    with pytest.raises(BudgetExceeded, match="together 1.4"):
        budget.check(0.01, 0.9)
    budget.commit("run-3", epsilon=0.01, delta=0.25)
    assert budget.spent().delta == 0.75 and budget.spent().runs == 2


def test_configs_sharing_one_file_through_a_symlink_share_its_lock_and_its_entries(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "budget.json"
    shared.parent.mkdir()
    links = []
    for name in ("state-a", "state-b"):
        (tmp_path / name).mkdir()
        link = tmp_path / name / "privacy_budget.json"
        link.symlink_to(shared)
        links.append(link)
    a, b = (LifetimeBudget(link, dataset="notes", lifetime_epsilon=10.0) for link in links)
    a.commit("run-1", epsilon=4.0, delta=1e-5, release="a")
    b.commit("run-1", epsilon=4.0, delta=1e-5, release="b")
    # The atomic replace wrote the shared file, not a private copy in place of either link.
    assert all(link.is_symlink() for link in links)
    assert a.spent().epsilon == b.spent().epsilon == 8.0
    with pytest.raises(BudgetExceeded):
        a.commit("run-2", epsilon=4.0, delta=1e-5, release="a")


def test_concurrent_releases_over_one_file_are_each_charged(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "budget.json"

    def release(index: int) -> None:
        # A fresh object per writer, as a separate process would have; flock excludes across descriptors.
        LifetimeBudget(path, dataset="notes", lifetime_epsilon=100.0).commit(
            "run-1", epsilon=1.0, delta=1e-6, release=f"state-{index}"
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(release, range(16)))
    spent = LifetimeBudget(path, dataset="notes", lifetime_epsilon=100.0).spent()
    assert (spent.epsilon, spent.runs) == (16.0, 16)


def test_with_a_record_count_the_summed_delta_is_held_to_one_over_it(tmp_path: Path) -> None:
    budget = _budget(tmp_path, lifetime_epsilon=100.0, lifetime_delta=None)
    budget.commit("run-1", epsilon=1.0, delta=4e-3, records=100)
    budget.commit("run-2", epsilon=1.0, delta=6e-3, records=100)  # exactly 1/100: allowed
    with pytest.raises(BudgetExceeded, match=r"holds 100 records: 2 runs have spent delta 0.01.*above 1/100"):
        budget.check(1.0, 1e-6, records=100)
    assert budget.check(1.0, 1e-6, records=50).runs == 3  # fewer records: 1/50 leaves room for more
