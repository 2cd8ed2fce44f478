"""The coordinator's durable state: what it acknowledged is on disk first, so a restart resumes the run.

SQLite (WAL, ``synchronous=FULL``: every commit is fsync'd before the call returns) holds the run's
parameters, the roster (certificate name -> participant id -> identity key), each block's status and its
secure-aggregation ledger event, and the participants' signed statements. Each finished block's global
mask is a small bit-packed file written and fsync'd before its row is committed; the counts of the block in
progress live in a memory-mapped file (``counts_file``), so at most one block's counts are in memory.
Under the FedSpaLLM recipe a finished block also has its final (masked, averaged) weights in a safetensors
file written the same way, and the block assignment made at the start is kept so that a restart reuses it.
Under OWL each allocation session's outcome (the block's outlier ratio from the summed dense statistics, and
its ledger event) is committed before the next session starts, and the allocation made from them once, so a
restart mid-phase resumes at the first block without a ratio and never allocates differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.durable import DirectoryLock, write_durably
from privacy.ledger import MechanismEvent
from privacy.signing import ParticipantStatement
from proto.domain import Member

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roster (
    name TEXT PRIMARY KEY,
    participant_id INTEGER NOT NULL UNIQUE,
    identity_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    block INTEGER PRIMARY KEY,
    contributors INTEGER NOT NULL,
    event TEXT NOT NULL,
    mask_digest BLOB NOT NULL,
    weights_digest BLOB
);
CREATE TABLE IF NOT EXISTS statements (name TEXT PRIMARY KEY, statement TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS allocation (
    block INTEGER PRIMARY KEY,
    outlier_ratio REAL NOT NULL,
    contributors INTEGER NOT NULL,
    event TEXT NOT NULL
);
"""


class StateError(ValueError):
    """The state directory belongs to another run or is damaged; the message says which."""


@dataclass(frozen=True)
class CompletedBlock:
    """A block whose global mask is final and on disk."""

    block: int
    contributors: int
    event: MechanismEvent
    mask_digest: bytes
    weights_digest: bytes | None = None


@dataclass(frozen=True)
class AllocatedBlock:
    """A block whose OWL allocation session is summed: its outlier ratio and the session's ledger event."""

    block: int
    outlier_ratio: float
    contributors: int
    event: MechanismEvent


class RunState:
    """The durable state of one coordinator run in a directory (thread-safe)."""

    def __init__(self, directory: Path, *, parameters_digest: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "masks").mkdir(exist_ok=True)
        (directory / "weights").mkdir(exist_ok=True)
        self._directory_lock = DirectoryLock(directory, what="output.state")
        try:
            self._open(parameters_digest)
        except BaseException:
            database = getattr(self, "_db", None)
            if database is not None:
                database.close()
            self._directory_lock.release()
            raise

    def _open(self, parameters_digest: str) -> None:
        directory = self.directory
        self._lock = threading.RLock()
        self._db = sqlite3.connect(directory / "run.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        stored = self._meta("parameters_digest")
        if stored is None:
            with self._transaction() as db:
                db.execute("INSERT INTO meta VALUES ('parameters_digest', ?)", (parameters_digest,))
                db.execute("INSERT INTO meta VALUES ('run_id', ?)", (os.urandom(16).hex(),))
                db.execute("INSERT INTO meta VALUES ('boots', '0')")
        elif stored != parameters_digest:
            raise StateError(
                f"output.state {directory} holds a run with other [run]/[privacy] parameters; "
                "use the same configuration to resume, or another state directory for a new run"
            )
        with self._transaction() as db:
            boots = int(self._meta("boots") or 0) + 1
            db.execute("UPDATE meta SET value = ? WHERE key = 'boots'", (str(boots),))
        self.boot = boots
        run_id = self._meta("run_id")
        assert run_id is not None
        self.run_id = run_id

    @staticmethod
    def digest_of(parameters: dict[str, object]) -> str:
        """Return the digest that ties a state directory to one run's parameters."""
        return hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the database and release the directory."""
        with self._lock:
            self._db.close()
            self._directory_lock.release()

    # ------------------------------------------------------------------ roster
    def members(self) -> dict[str, Member]:
        """Return every participant bound to the run, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, participant_id, identity_key FROM roster").fetchall()
        return {name: Member(name, int(pid), bytes(key)) for name, pid, key in rows}

    def bind(self, name: str, identity_key: bytes) -> Member:
        """Return ``name``'s member record, binding it to a new participant id at its first join."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT participant_id, identity_key FROM roster WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                return Member(name, int(row[0]), bytes(row[1]))
            (highest,) = db.execute("SELECT COALESCE(MAX(participant_id), 0) FROM roster").fetchone()
            member = Member(name, int(highest) + 1, identity_key)
            db.execute("INSERT INTO roster VALUES (?, ?, ?)", (name, member.participant_id, identity_key))
        logger.debug("roster: %s bound to participant id %d", name, member.participant_id)
        return member

    # ------------------------------------------------------------------ blocks
    def mask_file(self, block: int) -> Path:
        """Return where block ``block``'s bit-packed global mask is kept."""
        return self.directory / "masks" / f"block-{block:05d}.bits"

    def counts_file(self, block: int, dtype: np.dtype | type = np.uint16) -> Path:
        """Return the memory-mapped sums file of block ``block`` (``dtype`` per coordinate, uint16 for counts)."""
        return self.directory / f"counts-{block:05d}.{np.dtype(dtype).name}"

    def counts(self, block: int, dimension: int, dtype: np.dtype | type = np.uint16) -> np.memmap:
        """Return a writable memory map of block ``block``'s sums."""
        return np.memmap(self.counts_file(block, dtype), dtype=dtype, mode="w+", shape=(dimension,))

    def weights_file(self, block: int) -> Path:
        """Return where block ``block``'s final weights are kept (FedSpaLLM; safetensors)."""
        return self.directory / "weights" / f"block-{block:05d}.safetensors"

    def complete_block(
        self,
        block: int,
        *,
        packed_mask: bytes,
        contributors: int,
        event: MechanismEvent,
        weights: bytes | None = None,
    ) -> None:
        """Return None once block ``block``'s mask, weights and ledger event are on disk (before anyone is told)."""
        write_durably(self.mask_file(block), packed_mask)
        digest = hashlib.sha256(packed_mask).digest()
        weights_digest = None
        if weights is not None:
            write_durably(self.weights_file(block), weights)
            weights_digest = hashlib.sha256(weights).digest()
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                (block, contributors, event.model_dump_json(), digest, weights_digest),
            )

    def completed_blocks(self) -> dict[int, CompletedBlock]:
        """Return every finished block, by index."""
        with self._lock:
            rows = self._db.execute(
                "SELECT block, contributors, event, mask_digest, weights_digest FROM blocks"
            ).fetchall()
        return {
            int(b): CompletedBlock(
                int(b),
                int(c),
                MechanismEvent.model_validate_json(e),
                bytes(d),
                None if w is None else bytes(w),
            )
            for b, c, e, d, w in rows
        }

    def packed_mask(self, block: int) -> bytes:
        """Return block ``block``'s bit-packed global mask, checked against its recorded digest."""
        completed = self.completed_blocks().get(block)
        if completed is None:
            raise StateError(f"block {block} has no global mask yet")
        data = self.mask_file(block).read_bytes()
        if hashlib.sha256(data).digest() != completed.mask_digest:
            raise StateError(f"{self.mask_file(block)} does not match its recorded digest")
        return data

    def block_weights(self, block: int) -> bytes:
        """Return block ``block``'s final weights (safetensors bytes), checked against their recorded digest."""
        completed = self.completed_blocks().get(block)
        if completed is None or completed.weights_digest is None:
            raise StateError(f"block {block} has no final weights recorded")
        data = self.weights_file(block).read_bytes()
        if hashlib.sha256(data).digest() != completed.weights_digest:
            raise StateError(f"{self.weights_file(block)} does not match its recorded digest")
        return data

    # -------------------------------------------------------------- assignment
    def save_assignment(self, assignment: dict[str, object]) -> None:
        """Record the block assignment (JSON-ready) once; a restart reads it back with :meth:`assignment`."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('assignment', ?)",
                (json.dumps(assignment, sort_keys=True),),
            )

    def assignment(self) -> dict[str, object] | None:
        """Return the recorded block assignment, or None before the run started."""
        text = self._meta("assignment")
        return None if text is None else json.loads(text)

    # -------------------------------------------------------------- OWL allocation
    def allocation_sums_file(self, block: int, dtype: np.dtype | type) -> Path:
        """Return the memory-mapped sums file of block ``block``'s allocation session."""
        return self.directory / f"allocation-{block:05d}.{np.dtype(dtype).name}"

    def allocation_sums(self, block: int, dimension: int, dtype: np.dtype | type) -> np.memmap:
        """Return a writable memory map of block ``block``'s allocation sums."""
        return np.memmap(self.allocation_sums_file(block, dtype), dtype=dtype, mode="w+", shape=(dimension,))

    def complete_allocation_block(
        self, block: int, *, outlier_ratio: float, contributors: int, event: MechanismEvent
    ) -> None:
        """Return None once block ``block``'s outlier ratio and allocation ledger event are committed."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO allocation VALUES (?, ?, ?, ?)",
                (block, float(outlier_ratio), contributors, event.model_dump_json()),
            )

    def allocation_blocks(self) -> dict[int, AllocatedBlock]:
        """Return every block whose allocation session is summed, by index."""
        with self._lock:
            rows = self._db.execute(
                "SELECT block, outlier_ratio, contributors, event FROM allocation"
            ).fetchall()
        return {
            int(b): AllocatedBlock(int(b), float(r), int(c), MechanismEvent.model_validate_json(e))
            for b, r, c, e in rows
        }

    def save_owl_allocation(self, allocation: dict[str, object]) -> None:
        """Record the OWL allocation (JSON-ready, ``OwlAllocation.as_dict``) once; a restart reads it back."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('owl_allocation', ?)",
                (json.dumps(allocation, sort_keys=True),),
            )

    def owl_allocation(self) -> dict[str, object] | None:
        """Return the recorded OWL allocation, or None before the allocation phase ended."""
        text = self._meta("owl_allocation")
        return None if text is None else json.loads(text)

    # -------------------------------------------------------------- statements
    def save_statement(self, statement: ParticipantStatement) -> None:
        """Return None once ``statement`` is on disk."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO statements VALUES (?, ?)",
                (statement.participant, statement.model_dump_json()),
            )

    def statements(self) -> dict[str, ParticipantStatement]:
        """Return the signed statements received, by participant name."""
        with self._lock:
            rows = self._db.execute("SELECT name, statement FROM statements").fetchall()
        return {name: ParticipantStatement.model_validate_json(text) for name, text in rows}

    def mark_finished(self) -> None:
        """Record that the outputs are written."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('finished', '1')")

    @property
    def finished(self) -> bool:
        """Return True once the run's outputs were written."""
        return self._meta("finished") == "1"
