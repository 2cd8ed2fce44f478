"""What a site keeps on disk across restarts of a run: its release token, its released marker, its history,
and an OWL run's allocation.

Each is written durably (``privacy.durable``) before what it records can happen: the released marker before
the first masked vector leaves, the session history before anything it fixes (ids, keys, a released
vector's digest) leaves, the release token before the lifetime budget is charged under it, the checked OWL
allocation before any block is pruned at it (a restart prunes at the same sparsities).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from privacy.durable import write_durably
from privacy.secagg import SessionHistory

RELEASE_TOKEN_PREFIX = "budget-release-"


class SiteRecords:
    """The durable records of one participant's state directory (``runtime.state``)."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def release_token(self, run_id: str) -> str:
        """Return the random name of this state directory's release in run ``run_id`` (made once, kept).

        A restart of this participant finds the same token (a retried commit is not charged twice); any
        other state directory makes its own, so its release under the same run id is charged again.
        """
        path = self.state / f"{RELEASE_TOKEN_PREFIX}{run_id}"
        if path.is_file():
            token = path.read_text(encoding="utf-8").strip()
            if token:
                return token
        token = secrets.token_hex(16)
        write_durably(path, f"{token}\n".encode(), mode=0o600)
        return token

    def released_marker(self, run_id: str) -> Path:
        """Return the path whose existence says this site sent masked votes in run ``run_id``."""
        return self.state / f"released-{run_id}"

    def was_released(self, run_id: str) -> bool:
        """Return True when this site sent masked votes in run ``run_id`` (before a restart)."""
        return self.released_marker(run_id).exists()

    def mark_released(self, run_id: str, name: str) -> None:
        """Record durably, before the first masked vector leaves, that run ``run_id`` has data of this site."""
        path = self.released_marker(run_id)
        if path.exists():
            return
        write_durably(path, f"{name}: masked votes sent in run {run_id}\n".encode())

    def history_path(self, run_id: str) -> Path:
        """Return the file of run ``run_id``'s session history."""
        return self.state / f"session-history-{run_id}.json"

    def load_history(self, run_id: str) -> SessionHistory:
        """Return run ``run_id``'s session history as saved (a fresh one when none is)."""
        path = self.history_path(run_id)
        if path.is_file():
            return SessionHistory.restore(json.loads(path.read_text(encoding="utf-8")))
        return SessionHistory()

    def save_history(self, run_id: str, history: SessionHistory) -> None:
        """Write run ``run_id``'s session history durably."""
        write_durably(self.history_path(run_id), json.dumps(history.export()).encode("utf-8"))

    def owl_allocation_path(self, run_id: str) -> Path:
        """Return the file of run ``run_id``'s checked OWL allocation."""
        return self.state / f"owl-allocation-{run_id}.json"

    def owl_allocation(self, run_id: str) -> tuple[float, ...] | None:
        """Return run ``run_id``'s OWL sparsities as this site checked and kept them, or None."""
        path = self.owl_allocation_path(run_id)
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(values, list) or not all(isinstance(v, float) for v in values):
            raise ValueError(f"{path} is not a list of sparsities")
        return tuple(values)

    def save_owl_allocation(self, run_id: str, sparsities: tuple[float, ...]) -> None:
        """Write run ``run_id``'s checked OWL sparsities durably."""
        write_durably(self.owl_allocation_path(run_id), json.dumps(list(sparsities)).encode("utf-8"))


__all__ = ["RELEASE_TOKEN_PREFIX", "SiteRecords"]
