"""A participant's memory across sessions: what it joined, released and agreed to, and who is who in its run.

A coordinator that gets one keep-vote vector summed twice, over survivor sets S and S \\ {v}, learns v's
input as the difference of the two sums (and, more generally, the sum over S minus S'). Retries are
legitimate (a session can abort after the masked input), so the rule is about what a participant has
agreed to reveal: it signs a survivor set for a vector at most once, and in any later session with the
same vector it signs only that same set. The record is written before the signature leaves, so a crash
after signing errs on the side of refusing.

Both halves of the rule are keyed on what cannot be re-labelled by the coordinator:

- the vector by its content (`keep_votes_digest`): the values themselves, never the session's chunk size,
  ring or lane width or `max_input`, so re-encoding a retry does not make a vector look new;
- the survivor set by its people: the (name, identity key) pairs of the survivors, never the participant
  ids of one session, so re-numbering a retry does not make a set look the same.

A daemon keeps one history per run and persists it with `export` / `restore` (atomically, with fsync,
before anything it records leaves the site); it also remembers there the run parameters it joined under,
each name's participant id and identity key, and which vector it released for each block (and, in an OWL
run, for each block's allocation session, kept apart). The in-process
driver gives each simulated participant a fresh one.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np

from privacy.errors import PrivacyError
from privacy.secagg.errors import ContextReplayError, ContradictoryViewError, ReplayError

VOTES_DIGEST_BYTES = 32
HISTORY_FORMAT = 2
_VOTES_LABEL = b"fedprune/secagg/keep-votes/canonical"

Identity = tuple[str, str]
"""A participant as a person, not a session slot: (name, identity key as hex)."""


def keep_votes_digest(keep_votes: np.ndarray, *, largest: int | None = None) -> bytes:
    """Return SHA-256 over the vector's length and values, independent of how any session encodes them.

    The values are written little-endian in the narrowest of 1, 2, 4 or 8 bytes that holds the vector's
    largest value, and that width is hashed too: the width is a function of the values alone, so one
    vector always gives one digest, and two vectors with different values never share their bytes (the
    width and length prefix keep encodings of different widths apart). Keep-vote vectors (0/1) cost one
    byte a coordinate, as the lane they are masked in. `largest`: the vector's largest value, when the
    caller has just computed it (saves a pass; it must be exact).
    """
    votes = np.asarray(keep_votes)
    if votes.ndim != 1:
        raise PrivacyError(f"keep_votes must be a flat vector, got shape {votes.shape}")
    if votes.dtype == np.bool_:
        votes = votes.view(np.uint8)
    elif votes.dtype.kind not in "iu":
        raise PrivacyError("keep_votes must be integers or booleans")
    if votes.size and votes.dtype.kind == "i" and votes.min() < 0:
        raise PrivacyError("keep_votes must not be negative")
    top = largest if largest is not None else (int(votes.max()) if votes.size else 0)
    width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
    canonical = np.dtype(f"<u{width}")
    h = hashlib.sha256(_VOTES_LABEL + struct.pack(">QB", votes.size, width))
    if votes.dtype == canonical:
        h.update(np.ascontiguousarray(votes).data)
    else:
        h.update(votes.astype(canonical).data)
    return h.digest()


class SessionHistory:
    """Contexts joined, and per keep-vote vector (by content) the one survivor set (by people) agreed to.

    Also, for a daemon's run: the digest of the run parameters joined under, each name's fixed
    participant id and identity key, and the vector released for each block. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: set[bytes] = set()
        self._agreements: dict[bytes, tuple[Identity, ...]] = {}
        self._releases: dict[int, bytes] = {}
        self._allocation_releases: dict[int, bytes] = {}
        self._identities: dict[str, tuple[int, str]] = {}
        self._run_parameters: bytes | None = None

    def join(self, context: bytes) -> None:
        """Return None after recording `context`; raises ContextReplayError if this participant joined it before."""
        with self._lock:
            if context in self._contexts:
                raise ContextReplayError(
                    "this participant already took part in a session with this context: "
                    "a coordinator must draw a fresh nonce for every session",
                    check="session-context-reused",
                )
            self._contexts.add(context)

    def agree(self, *, votes_digest: bytes, survivors: tuple[Identity, ...]) -> None:
        """Return None after recording that the vector `votes_digest` is summed over the people `survivors`.

        Raises ReplayError if the same vector was already agreed to with another survivor set. This alone
        is no proof of a lie: an honest coordinator that retries a block after a timeout in the
        consistency round can see other survivors; the participant refuses that session and stays.
        """
        if len(votes_digest) != VOTES_DIGEST_BYTES:
            raise PrivacyError(f"votes_digest must be {VOTES_DIGEST_BYTES} bytes")
        people = tuple(sorted(survivors))
        if len(set(people)) != len(people):
            raise PrivacyError("survivors must name each identity once")
        with self._lock:
            previous = self._agreements.get(votes_digest)
            if previous is not None and previous != people:
                raise ReplayError(
                    f"these keep_votes were already summed over survivors {[n for n, _ in previous]}; "
                    f"summing them again over {[n for n, _ in people]} would reveal the difference of the "
                    "two sums"
                )
            self._agreements[votes_digest] = people

    def release(self, *, block: int, votes_digest: bytes, allocation: bool = False) -> None:
        """Return None after recording that block `block`'s masked input carries the vector `votes_digest`.

        Raises ContradictoryViewError if another vector was released for that block: a session that would
        release a block twice is beyond what the site charged its privacy budget for. The same vector
        again (a retry) is fine. `allocation`: the block's OWL allocation session (its dense statistics),
        recorded apart from the block's own session, so neither can stand in for the other.
        """
        releases = self._allocation_releases if allocation else self._releases
        with self._lock:
            previous = releases.get(block)
            if previous is not None and previous != votes_digest:
                what = "allocation statistics" if allocation else "block"
                raise ContradictoryViewError(
                    f"{what} {block} was released before with another vector; a "
                    "second release is beyond what this site was charged for",
                    check="second-release",
                )
            releases[block] = votes_digest

    def released(self, block: int, *, allocation: bool = False) -> bytes | None:
        """Return the digest of the vector released for `block` (its allocation session's), or None."""
        with self._lock:
            return (self._allocation_releases if allocation else self._releases).get(block)

    def bind_run(self, digest: bytes) -> None:
        """Return None after fixing the run parameters' digest; raises ContradictoryViewError if it changed."""
        with self._lock:
            if self._run_parameters is not None and self._run_parameters != digest:
                raise ContradictoryViewError(
                    "the coordinator announces other run parameters than those this "
                    "participant joined the run under",
                    check="run-parameters-changed",
                )
            self._run_parameters = digest

    def bind_identity(self, *, name: str, participant: int, key: bytes) -> None:
        """Return None after fixing `name`'s participant id and identity key for the run.

        Raises ContradictoryViewError if the name had another id or key, or the id or key belonged to
        another name: identities are fixed for the whole run, whichever session relays them.
        """
        key_hex = key.hex()
        with self._lock:
            known = self._identities.get(name)
            if known is not None and known != (participant, key_hex):
                what = "participant id" if known[0] != participant else "identity key"
                raise ContradictoryViewError(
                    f"the coordinator relays {name!r} with another {what} than earlier in this run",
                    check="identity-changed",
                )
            for other, (pid, other_key) in self._identities.items():
                if other != name and (pid == participant or other_key == key_hex):
                    what = f"participant id {participant}" if pid == participant else "identity key"
                    raise ContradictoryViewError(
                        f"{what} of {other!r} is now relayed for {name!r}", check="identity-changed"
                    )
            self._identities[name] = (participant, key_hex)

    def export(self) -> dict[str, object]:
        """Return the history as JSON-ready values (hex strings, names and ids) for a daemon to persist."""
        with self._lock:
            return {
                "format": HISTORY_FORMAT,
                "contexts": sorted(c.hex() for c in self._contexts),
                "agreements": sorted([d.hex(), [list(p) for p in s]] for d, s in self._agreements.items()),
                "releases": sorted([b, d.hex()] for b, d in self._releases.items()),
                **(
                    {
                        "allocation_releases": sorted(
                            [b, d.hex()] for b, d in self._allocation_releases.items()
                        )
                    }
                    if self._allocation_releases
                    else {}
                ),
                "identities": sorted([n, p, k] for n, (p, k) in self._identities.items()),
                "run_parameters": None if self._run_parameters is None else self._run_parameters.hex(),
            }

    @classmethod
    def restore(cls, state: dict) -> SessionHistory:
        """Return a history rebuilt from `export()` output; raises PrivacyError naming a malformed entry."""
        history = cls()
        if not isinstance(state, dict) or state.get("format") != HISTORY_FORMAT:
            raise PrivacyError(
                f"session history is not of format {HISTORY_FORMAT} (written by another version): "
                "finish or abandon that run with the version that started it"
            )
        try:
            history._contexts = {bytes.fromhex(c) for c in state["contexts"]}
            for index, (digest, people) in enumerate(state["agreements"]):
                key = bytes.fromhex(digest)
                survivors = tuple((str(n), str(k)) for n, k in people)
                if len(key) != VOTES_DIGEST_BYTES:
                    raise PrivacyError(f"agreements[{index}] is malformed")
                history._agreements[key] = tuple(sorted(survivors))
            for index, (block, digest) in enumerate(state["releases"]):
                if not isinstance(block, int) or len(bytes.fromhex(digest)) != VOTES_DIGEST_BYTES:
                    raise PrivacyError(f"releases[{index}] is malformed")
                history._releases[block] = bytes.fromhex(digest)
            for index, (block, digest) in enumerate(state.get("allocation_releases", [])):
                if not isinstance(block, int) or len(bytes.fromhex(digest)) != VOTES_DIGEST_BYTES:
                    raise PrivacyError(f"allocation_releases[{index}] is malformed")
                history._allocation_releases[block] = bytes.fromhex(digest)
            for index, (name, participant, key_hex) in enumerate(state["identities"]):
                if (
                    not isinstance(name, str)
                    or not isinstance(participant, int)
                    or len(bytes.fromhex(key_hex)) != 32
                ):
                    raise PrivacyError(f"identities[{index}] is malformed")
                history._identities[name] = (participant, key_hex)
            run = state["run_parameters"]
            history._run_parameters = None if run is None else bytes.fromhex(run)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PrivacyError):
                raise
            raise PrivacyError(f"session history is malformed: {exc}") from exc
        return history
