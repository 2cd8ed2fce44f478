"""A participant's lifetime privacy budget on one dataset, kept across runs in a durable, hash-chained file.

Public API::

    budget = LifetimeBudget(path, dataset="clinical-notes-2024", lifetime_epsilon=16.0, lifetime_delta=1e-4)
    budget.spent()                        # Spent(epsilon=, delta=, runs=) over every committed run
    budget.check(run_epsilon, run_delta)  # raises BudgetExceeded naming the budget and the figures
    budget.commit("run-42", epsilon=8.0, delta=1e-5, release="9c1f...")  # durable, idempotent per release

Why: each privacy report covers one run, but every run on the same records spends privacy of the same
people. Across runs the guarantees are composed by basic composition: the epsilons add and the deltas add.
That is conservative (advanced or RDP composition across runs is tighter) and needs nothing but each run's
reported (epsilon, delta), which is why it is used here.

Order of use (what makes it safe): ``check`` when a run is proposed (refuse early, at join), then
``commit`` the run's figures *before* the first release of anything computed from the data. A crash after
the commit over-counts a run that released nothing (conservative); no order of crashes under-counts. The
file is replaced atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive
lock, so a crash at any point leaves either the old or the new file, never a mixture: a committed entry is
never lost, and retrying a commit of the same release never counts it twice. ``commit`` re-checks the
budget under the lock, so two runs checked concurrently cannot together exceed it.

What is charged is a *release*, not a run id: the run id is the coordinator's choice, so two computations
on the data under one run id (two state directories over one budget file, or a coordinator that reuses an
id) are two entries. The caller names each release with a random token it keeps (a participant: one per
state directory and run, in that directory), so only a retry of the very same release is idempotent; the
same release committed again with other figures is refused. Several processes may share one file: the lock
(``flock`` on ``<file>.lock`` beside the file the path resolves to, so symlinked paths share it too) makes
each read-check-write one step, and the file is replaced, never edited in place.

Deltas compose by summing too, and a sum of 1 or more bounds nothing ((epsilon, 1)-DP holds for every
mechanism), so whatever the configured ``lifetime_delta``, a commit that would take the sum to 1 is refused.
A caller that knows how many records the dataset holds (``records``) holds the sum to 1 / records, the bound
a single run's delta is held to: above it, the runs together may publish one record whole.

The file is JSON: the dataset name, and entries (run id, release, epsilon, delta, timestamp) in a SHA-256
hash chain (entries written before releases were named have none, and verify as they were written). The
chain detects corruption and edits of recorded entries; it is not keyed, so whoever can write the file can
also truncate it: keep it with the participant's other secrets (owner-only permissions).
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
MEANINGFUL_DELTA = 1.0
"""A summed delta must stay below this: at 1 or more the composed guarantee holds for any mechanism."""
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
    release: str | None = Field(None, min_length=1)
    """Names one computation on the data under ``run_id`` (None in entries written before releases were
    named)."""
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
    # An entry without a release is hashed without the key, exactly as it was before releases were named.
    hashed = {key: value for key, value in fields.items() if not (key == "release" and value is None)}
    return hashlib.sha256(canonical_json({"dataset": dataset, **hashed})).hexdigest()


def _check_figures(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise PrivacyError(f"run epsilon must be finite and >= 0, got {epsilon}")
    if not 0 <= delta < 1:
        raise PrivacyError(f"run delta must be in [0, 1), got {delta}")


def _committed(entries: tuple[BudgetEntry, ...], run_id: str, release: str | None) -> BudgetEntry | None:
    """Return the entry that already charged this release, if any (same run id, same release or both none).

    An entry written before releases were named matches only a caller that names none: a named release
    under its run id is charged anew, which over-counts at most once (conservative).
    """
    for entry in entries:
        if entry.run_id == run_id and entry.release == release:
            return entry
    return None


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
        # Resolved: two configs reaching one file through a symlink share its lock, and the atomic
        # replace writes the file itself instead of turning one config's link into a private copy.
        self.path = Path(path).expanduser().resolve()
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

    def _refuse_if_over(
        self, spent: Spent, run_epsilon: float, run_delta: float, run_id: str | None, records: int | None
    ) -> None:
        total_epsilon = math.fsum([spent.epsilon, run_epsilon])
        total_delta = math.fsum([spent.delta, run_delta])
        run = f"run {run_id!r}" if run_id else "the run"
        if total_epsilon > self.lifetime_epsilon * (1 + _RELATIVE_SLACK):
            raise BudgetExceeded(
                f"lifetime_epsilon of dataset {self.dataset!r} is {self.lifetime_epsilon:g}: {spent.runs} "
                f"runs have spent {spent.epsilon:g}, {run} needs {run_epsilon:g}, together "
                f"{total_epsilon:g} ({COMPOSITION}); {run} is refused"
            )
        if total_delta >= MEANINGFUL_DELTA:
            raise BudgetExceeded(
                f"dataset {self.dataset!r}: {spent.runs} runs have spent delta {spent.delta:g}, {run} needs "
                f"{run_delta:g}, together {total_delta:g}: a summed delta of {MEANINGFUL_DELTA:g} or more bounds "
                f"nothing ((epsilon, 1)-DP holds for any mechanism); {run} is refused"
            )
        if records is not None and records > 0 and total_delta > (1 / records) * (1 + _RELATIVE_SLACK):
            raise BudgetExceeded(
                f"dataset {self.dataset!r} holds {records} records: {spent.runs} runs have spent delta "
                f"{spent.delta:g}, {run} needs {run_delta:g}, together {total_delta:g}, above 1/{records} (the "
                f"runs together may then publish one record whole); {run} is refused"
            )
        if self.lifetime_delta is not None and total_delta > self.lifetime_delta * (1 + _RELATIVE_SLACK):
            raise BudgetExceeded(
                f"lifetime_delta of dataset {self.dataset!r} is {self.lifetime_delta:g}: {spent.runs} runs "
                f"have spent {spent.delta:g}, {run} needs {run_delta:g}, together {total_delta:g} "
                f"({COMPOSITION}); {run} is refused"
            )

    def check(
        self,
        run_epsilon: float,
        run_delta: float,
        *,
        run_id: str | None = None,
        release: str | None = None,
        records: int | None = None,
    ) -> Spent:
        """Return what would be spent after the run; raise BudgetExceeded if that exceeds the budget.

        A release already committed (same ``run_id`` and ``release``) is not counted twice: its figures
        must match. Another release under a committed run id is a new charge. ``records``: how many
        records the dataset holds now; the summed delta may not pass 1 / records, the bound a single
        run's delta is held to.
        """
        _check_figures(run_epsilon, run_delta)
        entries = self.entries()
        committed = _committed(entries, run_id, release) if run_id is not None else None
        if committed is not None:
            self._same_figures(committed, run_epsilon, run_delta)
            return self.spent()
        spent = self.spent()
        self._refuse_if_over(spent, run_epsilon, run_delta, run_id, records)
        return Spent(
            epsilon=math.fsum([spent.epsilon, run_epsilon]),
            delta=math.fsum([spent.delta, run_delta]),
            runs=spent.runs + 1,
        )

    def _same_figures(self, entry: BudgetEntry, epsilon: float, delta: float) -> None:
        if entry.epsilon != epsilon or entry.delta != delta:
            raise BudgetLedgerError(
                f"run {entry.run_id!r} was committed with epsilon {entry.epsilon:g}, delta {entry.delta:g}; "
                f"the same release cannot be committed again with epsilon {epsilon:g}, delta {delta:g}"
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
        self,
        run_id: str,
        *,
        epsilon: float,
        delta: float,
        release: str | None = None,
        records: int | None = None,
        timestamp: str | None = None,
    ) -> BudgetEntry:
        """Return the release's entry after recording it durably; idempotent per (``run_id``, ``release``).

        Re-checks the budget under the file lock and raises BudgetExceeded rather than commit past it.
        Committing the same release again with the same figures returns the existing entry and changes
        nothing; with other figures it raises BudgetLedgerError. Another ``release`` under a committed run
        id is charged as a new entry. ``release`` None names no release: the run id alone, as before
        releases were named (callers that can compute twice under one run id must name their releases).
        ``records`` as in :meth:`check`.
        """
        _check_figures(epsilon, delta)
        if not run_id:
            raise PrivacyError("run_id must not be empty")
        if release is not None and not release:
            raise PrivacyError("release must not be empty")
        with self._locked():
            entries = self.entries()
            committed = _committed(entries, run_id, release)
            if committed is not None:
                self._same_figures(committed, epsilon, delta)
                return committed
            spent = Spent(
                epsilon=math.fsum(e.epsilon for e in entries),
                delta=math.fsum(e.delta for e in entries),
                runs=len(entries),
            )
            self._refuse_if_over(spent, epsilon, delta, run_id, records)
            fields: dict[str, Any] = {
                "index": len(entries),
                "run_id": run_id,
                "release": release,
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
            "entries": [e.model_dump(mode="json", exclude_none=True) for e in entries],
        }
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        write_durably(self.path, text.encode("utf-8"), mode=0o600)
