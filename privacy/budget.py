"""A participant's lifetime privacy budget on one dataset, kept across runs in a durable, hash-chained file.

Public API::

    budget = LifetimeBudget(path, dataset="clinical-notes-2024", lifetime_epsilon=16.0, lifetime_delta=1e-4)
    budget.spent()                        # Spent(epsilon=, delta=, runs=) over every committed run
    budget.check(run_epsilon, run_delta)  # raises BudgetExceeded naming the budget and the figures
    budget.commit("run-42", epsilon=8.0, delta=1e-5)   # durable, idempotent per run id, re-checks

Why: each privacy report covers one run, but every run on the same records spends privacy of the same
people. Across runs the guarantees are composed by basic composition: the epsilons add and the deltas add.
That is conservative (advanced or RDP composition across runs is tighter) and needs nothing but each run's
reported (epsilon, delta), which is why it is used here.

Order of use (what makes it safe): ``check`` when a run is proposed (refuse early, at join), then
``commit`` the run's figures *before* the first release of anything computed from the data. A crash after
the commit over-counts a run that released nothing (conservative); no order of crashes under-counts. The
file is replaced atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive
lock, so a crash at any point leaves either the old or the new file, never a mixture: a committed entry is
never lost, and retrying a commit with the same run id never counts it twice. ``commit`` re-checks the
budget under the lock, so two runs checked concurrently cannot together exceed it.

The file is JSON: the dataset name, and entries (run id, epsilon, delta, timestamp) in a SHA-256 hash
chain. The chain detects corruption and edits of recorded entries; it is not keyed, so whoever can write
the file can also truncate it: keep it with the participant's other secrets (owner-only permissions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from privacy.durable import write_durably
from privacy.errors import PrivacyError
from privacy.ledger import canonical_json

logger = logging.getLogger(__name__)

FORMAT = "fedprune privacy budget v1"
COMPOSITION = "basic composition across runs: epsilons add, deltas add (conservative)"
_RELATIVE_SLACK = 1e-9
"""Floating-point sums of figures that exactly fill the budget (0.1 + 0.2) must not be refused."""


class BudgetExceeded(PrivacyError):
    """A run would take a participant's spending on a dataset past its lifetime budget."""


class BudgetLedgerError(PrivacyError):
    """The budget file is unreadable, corrupted, edited, for another dataset, or a run id is reused."""


class BudgetEntry(BaseModel):
    """One committed run: what it spent on the dataset, chained to the entry before it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    run_id: str = Field(min_length=1)
    epsilon: float = Field(ge=0)
    delta: float = Field(ge=0, lt=1)
    timestamp: str
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    entry_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class _BudgetFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    dataset: str = Field(min_length=1)
    entries: list[BudgetEntry]


@dataclasses.dataclass(frozen=True)
class Spent:
    """What the committed runs spent together, by basic composition."""

    epsilon: float
    delta: float
    runs: int


def _genesis(dataset: str) -> str:
    # Binding the dataset into the chain: entries copied from another dataset's file do not verify.
    return hashlib.sha256(f"{FORMAT}\n{dataset}".encode()).hexdigest()


def _entry_hash(dataset: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"dataset": dataset, **fields})).hexdigest()


def _check_figures(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise PrivacyError(f"run epsilon must be finite and >= 0, got {epsilon}")
    if not 0 <= delta < 1:
        raise PrivacyError(f"run delta must be in [0, 1), got {delta}")


class LifetimeBudget:
    """The lifetime (epsilon, delta) budget of one participant on one named dataset, stored at ``path``."""

    def __init__(
        self,
        path: str | Path,
        *,
        dataset: str,
        lifetime_epsilon: float,
        lifetime_delta: float | None = None,
    ) -> None:
        if not dataset:
            raise PrivacyError("dataset must be named")
        if not (math.isfinite(lifetime_epsilon) and lifetime_epsilon > 0):
            raise PrivacyError(f"lifetime_epsilon must be finite and > 0, got {lifetime_epsilon}")
        if lifetime_delta is not None and not 0 < lifetime_delta < 1:
            raise PrivacyError(f"lifetime_delta must be in (0, 1), got {lifetime_delta}")
        self.path = Path(path)
        self.dataset = dataset
        self.lifetime_epsilon = float(lifetime_epsilon)
        self.lifetime_delta = None if lifetime_delta is None else float(lifetime_delta)

    # -- reading -----------------------------------------------------------------------------------

    def entries(self) -> tuple[BudgetEntry, ...]:
        """Return the committed runs, after checking the file's dataset and hash chain."""
        if not self.path.exists():
            return ()
        try:
            stored = _BudgetFile.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError) as error:
            raise BudgetLedgerError(f"budget file {self.path} is unreadable: {error}") from None
        if stored.format != FORMAT:
            raise BudgetLedgerError(
                f"budget file {self.path}: format is {stored.format!r}, expected {FORMAT!r}"
            )
        if stored.dataset != self.dataset:
            raise BudgetLedgerError(
                f"budget file {self.path} is for dataset {stored.dataset!r}, not {self.dataset!r}"
            )
        previous = _genesis(self.dataset)
        for position, entry in enumerate(stored.entries):
            where = f"budget file {self.path}: entries[{position}]"
            if entry.index != position or entry.prev_hash != previous:
                raise BudgetLedgerError(f"{where}: the hash chain is broken (entry removed or reordered)")
            fields = entry.model_dump(exclude={"entry_hash"})
            if _entry_hash(self.dataset, fields) != entry.entry_hash:
                raise BudgetLedgerError(f"{where}: the entry was changed after it was committed")
            previous = entry.entry_hash
        return tuple(stored.entries)

    def spent(self) -> Spent:
        """Return the epsilon and delta spent by all committed runs (basic composition)."""
        entries = self.entries()
        return Spent(
            epsilon=math.fsum(e.epsilon for e in entries),
            delta=math.fsum(e.delta for e in entries),
            runs=len(entries),
        )

    # -- checking and committing -------------------------------------------------------------------

    def _refuse_if_over(self, spent: Spent, run_epsilon: float, run_delta: float, run_id: str | None) -> None:
        total_epsilon = math.fsum([spent.epsilon, run_epsilon])
        total_delta = math.fsum([spent.delta, run_delta])
        run = f"run {run_id!r}" if run_id else "the run"
        if total_epsilon > self.lifetime_epsilon * (1 + _RELATIVE_SLACK):
            raise BudgetExceeded(
                f"lifetime_epsilon of dataset {self.dataset!r} is {self.lifetime_epsilon:g}: {spent.runs} "
                f"runs have spent {spent.epsilon:g}, {run} needs {run_epsilon:g}, together "
                f"{total_epsilon:g} ({COMPOSITION}); {run} is refused"
            )
        if self.lifetime_delta is not None and total_delta > self.lifetime_delta * (1 + _RELATIVE_SLACK):
            raise BudgetExceeded(
                f"lifetime_delta of dataset {self.dataset!r} is {self.lifetime_delta:g}: {spent.runs} runs "
                f"have spent {spent.delta:g}, {run} needs {run_delta:g}, together {total_delta:g} "
                f"({COMPOSITION}); {run} is refused"
            )

    def check(self, run_epsilon: float, run_delta: float, *, run_id: str | None = None) -> Spent:
        """Return what would be spent after the run; raise BudgetExceeded if that exceeds the budget.

        A ``run_id`` already committed is not counted twice (a resumed run): its figures must match.
        """
        _check_figures(run_epsilon, run_delta)
        entries = self.entries()
        if run_id is not None:
            for entry in entries:
                if entry.run_id == run_id:
                    self._same_figures(entry, run_epsilon, run_delta)
                    return self.spent()
        spent = self.spent()
        self._refuse_if_over(spent, run_epsilon, run_delta, run_id)
        return Spent(
            epsilon=math.fsum([spent.epsilon, run_epsilon]),
            delta=math.fsum([spent.delta, run_delta]),
            runs=spent.runs + 1,
        )

    def _same_figures(self, entry: BudgetEntry, epsilon: float, delta: float) -> None:
        if entry.epsilon != epsilon or entry.delta != delta:
            raise BudgetLedgerError(
                f"run {entry.run_id!r} was committed with epsilon {entry.epsilon:g}, delta {entry.delta:g}; "
                f"it cannot be committed again with epsilon {epsilon:g}, delta {delta:g}"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    def commit(
        self, run_id: str, *, epsilon: float, delta: float, timestamp: str | None = None
    ) -> BudgetEntry:
        """Return the run's entry after recording it durably; idempotent per ``run_id``.

        Re-checks the budget under the file lock and raises BudgetExceeded rather than commit past it.
        Committing a run id again with the same figures returns the existing entry and changes nothing.
        """
        _check_figures(epsilon, delta)
        if not run_id:
            raise PrivacyError("run_id must not be empty")
        with self._locked():
            entries = self.entries()
            for entry in entries:
                if entry.run_id == run_id:
                    self._same_figures(entry, epsilon, delta)
                    return entry
            spent = Spent(
                epsilon=math.fsum(e.epsilon for e in entries),
                delta=math.fsum(e.delta for e in entries),
                runs=len(entries),
            )
            self._refuse_if_over(spent, epsilon, delta, run_id)
            fields: dict[str, Any] = {
                "index": len(entries),
                "run_id": run_id,
                "epsilon": float(epsilon),
                "delta": float(delta),
                "timestamp": timestamp
                or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "prev_hash": entries[-1].entry_hash if entries else _genesis(self.dataset),
            }
            entry = BudgetEntry.model_validate({**fields, "entry_hash": _entry_hash(self.dataset, fields)})
            self._replace_file([*entries, entry])
        logger.info(
            "budget of %s: committed run %s (epsilon %g, delta %g)", self.dataset, run_id, epsilon, delta
        )
        return entry

    def _replace_file(self, entries: list[BudgetEntry]) -> None:
        body = {
            "format": FORMAT,
            "dataset": self.dataset,
            "entries": [e.model_dump(mode="json") for e in entries],
        }
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        write_durably(self.path, text.encode("utf-8"), mode=0o600)
