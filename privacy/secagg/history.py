"""A participant's memory across sessions: contexts it joined, and the survivor set each vector went into.

A coordinator that gets one keep-vote vector summed twice, over survivor sets S and S \\ {v}, learns v's
input as the difference of the two sums (and, more generally, the sum over S minus S'). Retries are
legitimate (a session can abort after the masked input), so the rule is about what a participant has
agreed to reveal: it signs a survivor set for a vector at most once, and in any later session with the
same vector it signs only that same set. The record is written before the signature leaves, so a crash
after signing errs on the side of refusing.

The history must outlive the vectors it protects: a participant daemon keeps one per run and persists
it with `export` / `restore`; the in-process driver gives each simulated participant a fresh one.
"""

from __future__ import annotations

import threading

from privacy.errors import PrivacyError
from privacy.secagg.errors import ReplayError

VOTES_DIGEST_BYTES = 32


class SessionHistory:
    """Contexts joined and, per keep-vote vector digest, the one survivor set agreed to (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: set[bytes] = set()
        self._survivor_sets: dict[bytes, tuple[int, ...]] = {}

    def join(self, context: bytes) -> None:
        """Return None after recording `context`; raises ReplayError if this participant joined it before."""
        with self._lock:
            if context in self._contexts:
                raise ReplayError("this participant already took part in a session with this context: a "
                                  "coordinator must draw a fresh nonce for every session")
            self._contexts.add(context)

    def agree(self, *, votes_digest: bytes, survivors: tuple[int, ...]) -> None:
        """Return None after recording that the vector `votes_digest` is summed over `survivors`.

        Raises ReplayError if the same vector was already agreed to with another survivor set.
        """
        if len(votes_digest) != VOTES_DIGEST_BYTES:
            raise PrivacyError(f"votes_digest must be {VOTES_DIGEST_BYTES} bytes")
        survivors = tuple(sorted(survivors))
        with self._lock:
            previous = self._survivor_sets.get(votes_digest)
            if previous is not None and previous != survivors:
                raise ReplayError(
                    f"these keep_votes were already summed over survivors {list(previous)}; summing them "
                    f"again over {list(survivors)} would reveal the difference of the two sums")
            self._survivor_sets[votes_digest] = survivors

    def export(self) -> dict[str, list]:
        """Return the history as JSON-ready lists (hex strings and ids) for a daemon to persist."""
        with self._lock:
            return {"contexts": sorted(c.hex() for c in self._contexts),
                    "survivor_sets": sorted([d.hex(), list(s)] for d, s in self._survivor_sets.items())}

    @classmethod
    def restore(cls, state: dict[str, list]) -> SessionHistory:
        """Return a history rebuilt from `export()` output; raises PrivacyError naming a malformed entry."""
        history = cls()
        try:
            history._contexts = {bytes.fromhex(c) for c in state["contexts"]}
            for index, (digest, survivors) in enumerate(state["survivor_sets"]):
                key = bytes.fromhex(digest)
                if len(key) != VOTES_DIGEST_BYTES or not all(isinstance(p, int) for p in survivors):
                    raise PrivacyError(f"survivor_sets[{index}] is malformed")
                history._survivor_sets[key] = tuple(sorted(survivors))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"session history is malformed: {exc}") from exc
        return history
