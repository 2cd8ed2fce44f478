"""The demo's federation on loopback: a throwaway CA, configs, and the real coordinator and participants.

Everything is written under one service folder (``pki/``, ``configs/``, ``state/``, ``logs/``) and the
processes are the same programs an operator runs (``fedprune coordinator --config``, ``fedprune
participant --config --events``). Their output goes to ``logs/NAME.log`` and their run events to
``logs/NAME.events.jsonl``; :class:`ProgressBoard` condenses the events (joins, blocks, statements,
completion) into one line each and shows the warnings and errors of the output as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from coordinator.events import BlockAggregated, ParticipantsPresent, RunFinished, SessionStarted
from fedprune.events import Event, EventTail, StampedEvent
from participant.events import BlockScored, Joined, RunEnded, StatementSubmitted
from proto.config_file import write_toml

logger = logging.getLogger(__name__)

COORDINATOR = "coordinator"
# The demo's recipes and the local pruning method each one runs (the coordinator's [run] recipe and method).
RECIPE_METHODS = {"fedprllm": "wanda", "fedspallm": "sparsegpt"}
DEFAULT_RECIPE = "fedprllm"
# Bounded waits, so that processes orphaned by a killed demo end on their own.
JOIN_TIMEOUT_S = 180.0
RETRY_TIME_S = 60.0
STOP_GRACE_S = 5.0
EVENT_POLL_S = 0.1


@dataclasses.dataclass(frozen=True)
class ServicePlan:
    """What the demo's federation runs: who takes part, on what, and with which privacy parameters."""

    model_dir: Path
    site_files: tuple[Path, ...]
    site_names: tuple[str, ...]
    sparsity: float
    seqlen: int
    epsilon0: float
    target_epsilon: float
    delta: float
    device: str
    output_dir: Path
    signing_key: Path
    threshold: int | None = None
    recipe: str = DEFAULT_RECIPE
    """``fedprllm`` (Wanda keep-votes only) or ``fedspallm`` (SparseGPT masks, l0-norm averaged kept weights)."""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPE_METHODS:
            raise ValueError(f"recipe: expected one of {', '.join(RECIPE_METHODS)}, got {self.recipe!r}")
        if len(self.site_files) != len(self.site_names):
            raise ValueError(
                f"site_names: {len(self.site_names)} names for {len(self.site_files)} site_files"
            )
        if len(self.site_names) < 2:
            raise ValueError(f"site_names: a federation needs at least 2 sites, got {len(self.site_names)}")

    @property
    def method(self) -> str:
        """Return the local pruning method the recipe runs: ``wanda`` or ``sparsegpt``."""
        return RECIPE_METHODS[self.recipe]


@dataclasses.dataclass(frozen=True)
class ServiceFiles:
    """Where the federation's files are."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def config(self, name: str) -> Path:
        return self.configs / f"{name}.toml"

    def identity_key(self, name: str) -> Path:
        return self.state / name / "identity_key.pem"


def free_loopback_address() -> str:
    """Return ``127.0.0.1:PORT`` with a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def prepare(plan: ServicePlan, files: ServiceFiles, *, address: str) -> dict[str, str]:
    """Write the CA, certificates, identity keys and configs; return each site's identity-key fingerprint."""
    from fedprune.certs import create_ca, issue_certificate
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    create_ca(files.pki, common_name="fedprune demo CA (throwaway)", days=2, overwrite=True)
    issue_certificate(files.pki, COORDINATOR, files.pki, hosts=["127.0.0.1"], days=2, overwrite=True)
    for name in plan.site_names:
        issue_certificate(files.pki, name, files.pki, days=2, overwrite=True)
    # Each site's identity key exists before the run, so every site can pin its peers' keys out of band
    # (here: in its config), as docs/PARTICIPANTS.md asks; no key is trusted on first use.
    fingerprints = {
        name: key_fingerprint(load_or_create_signing_key(files.identity_key(name)))
        for name in plan.site_names
    }
    files.logs.mkdir(parents=True, exist_ok=True)
    write_toml(
        files.config(COORDINATOR),
        {
            "server": {
                "address": address,
                "join_timeout_s": JOIN_TIMEOUT_S,
                "round_timeout_s": 120.0,
                "await_poll_s": 5.0,
            },
            "tls": {
                "ca": files.pki / "ca.pem",
                "certificate": files.pki / f"{COORDINATOR}.pem",
                "private_key": files.pki / f"{COORDINATOR}.key",
            },
            "run": {
                "model": plan.model_dir,
                "participants": list(plan.site_names),
                "min_participants": len(plan.site_names),
                **({"threshold": plan.threshold} if plan.threshold is not None else {}),
                "method": plan.method,
                "recipe": plan.recipe,
                "pattern": "unstructured",
                "sparsity": plan.sparsity,
                "group": "layer",
                "mode": "one-shot",
                "seqlen": plan.seqlen,
            },
            "privacy": {
                "randomized_response": True,
                "epsilon0": plan.epsilon0,
                "record_level_dp": True,
                "target_epsilon": plan.target_epsilon,
                "delta": plan.delta,
                "sample_rate": 1.0,
            },
            "output": {
                "directory": plan.output_dir,
                "state": files.state / COORDINATOR,
                "signing_key": plan.signing_key,
                "overwrite": True,
            },
        },
        header="Written by `fedprune demo`: the coordinator of the demo's federation on loopback.\n"
        "Run the same with: fedprune coordinator --config THIS_FILE",
    )
    for name, data in zip(plan.site_names, plan.site_files, strict=True):
        write_toml(
            files.config(name),
            {
                "coordinator": {
                    "address": address,
                    "call_timeout_s": 30.0,
                    "max_backoff_s": 0.5,
                    "max_retry_time_s": RETRY_TIME_S,
                },
                "tls": {
                    "ca": files.pki / "ca.pem",
                    "certificate": files.pki / f"{name}.pem",
                    "private_key": files.pki / f"{name}.key",
                },
                "model": {"directory": plan.model_dir},
                "data": {"calibration": data},
                "runtime": {
                    "device": plan.device,
                    "state": files.state / name,
                    "identity_key": files.identity_key(name),
                    "progress": False,
                },
                # The weakest run this site joins: exactly the demo's parameters, nothing weaker.
                "privacy": {
                    "max_epsilon0": plan.epsilon0,
                    "require_randomized_response": True,
                    "require_record_level_dp": True,
                    "max_target_epsilon": plan.target_epsilon,
                    "max_delta": plan.delta,
                },
                "peers": {peer: fingerprints[peer] for peer in plan.site_names if peer != name},
            },
            header=f"Written by `fedprune demo`: site {name} of the demo's federation.\n"
            "Run the same with: fedprune participant --config THIS_FILE",
        )
    return fingerprints


# ---------------------------------------------------------------------------------------------- progress
_LOG_LINE = re.compile(r"^(?P<level>WARNING|ERROR|CRITICAL) (?P<source>[\w.]+): (?P<message>.*)$")


class ProgressBoard:
    """Condenses the processes' run events (``--events``) into one line each: a join, a block, a completion.

    Progress comes from the typed events alone. Of the processes' output only what is meant for people is
    shown as it is: warnings, errors and the coordinator's address.
    """

    def __init__(
        self,
        sites: Sequence[str],
        *,
        write: Callable[[str], None],
        started: float,
        recipe: str = DEFAULT_RECIPE,
    ) -> None:
        self.sites = tuple(sites)
        self.recipe = recipe
        self._write = write
        self._started = started
        self._lock = threading.Lock()
        self._block_started: dict[int, float] = {}
        self._scored: set[str] = set()
        self._joined: set[str] = set()
        self._present: ParticipantsPresent | None = None
        self.completed_blocks = 0
        self.blocks: int | None = None

    def say(self, who: str, message: str) -> None:
        """Print one progress line, stamped with the seconds since the demo started."""
        with self._lock:
            self._write(f"[{time.perf_counter() - self._started:6.1f}s] {who:<11} {message}")

    def on_event(self, name: str, event: Event, *, at: float | None = None) -> None:
        """Take one run event of process ``name``; ``at``: when it happened (epoch seconds), else now."""
        moment = time.time() if at is None else at
        if isinstance(event, ParticipantsPresent):
            with self._lock:
                self._present = event
            self._announce_present()
        elif isinstance(event, SessionStarted):
            self.blocks = event.blocks
            with self._lock:
                self._block_started[event.block] = moment
        elif isinstance(event, BlockAggregated):
            self._announce_present(waiting=False)
            self.completed_blocks = max(self.completed_blocks, event.block + 1)
            with self._lock:
                begun = self._block_started.get(event.block)
            seconds = max(0.0, moment - begun) if begun is not None else 0.0
            summed = (
                "randomized votes and weight updates summed under secure aggregation, mask and averaged "
                "weights published"
                if self.recipe == "fedspallm"
                else "randomized votes summed under secure aggregation, mask published"
            )
            self.say(
                f"block {event.block + 1}/{event.blocks}",
                f"{len(event.contributors)} sites' {summed} ({seconds:.1f} s)",
            )
        elif isinstance(event, RunFinished):
            self._announce_present(waiting=False)
            self.say("coordinator", f"checkpoint and signed privacy report written to {event.output}")
        elif isinstance(event, Joined):
            self.say(name, "joined: certificate accepted, base-model fingerprint matches")
            with self._lock:
                self._joined.add(name)
            self._announce_present()
        elif isinstance(event, BlockScored):
            self._scored_block(name, event)
        elif isinstance(event, StatementSubmitted):
            self.say(name, f"signed its privacy statement ({event.events} ledger events)")
        elif isinstance(event, RunEnded):
            self._announce_present(waiting=False)
            self.say(name, "done" if event.complete else f"stopped: {event.reason}")

    def _announce_present(self, *, waiting: bool = True) -> None:
        """Say that the run starts, once every site present has said it joined (or ``waiting`` is off).

        The coordinator admits a site before the site has checked the run; the site's own word comes
        second in time but first on the board.
        """
        with self._lock:
            present = self._present
            if present is None or (waiting and not set(present.names) <= self._joined):
                return
            self._present = None
        names = ", ".join(sorted(present.names))
        self.say("coordinator", f"{len(present.names)} participants present: {names}; the run starts")

    def _scored_block(self, name: str, event: BlockScored) -> None:
        if self.recipe == "fedspallm":
            # FedSpaLLM prunes lazily, one block when its session starts: say so for the first one only.
            with self._lock:
                first = name not in self._scored
                self._scored.add(name)
            if first:
                self.say(
                    name,
                    f"block {event.block + 1} pruned with SparseGPT: votes randomized, weight updates ready "
                    "to mask",
                )
        elif event.block + 1 == event.blocks:
            self.say(name, "votes of every block computed, randomized and ready to mask")

    def on_line(self, name: str, line: str) -> None:
        """Take one output line of process ``name``: shown only when it is meant for people."""
        line = line.rstrip()
        role = "coordinator" if name == COORDINATOR else "participant"
        if line.startswith("fedprune coordinator listening on"):
            self.say(name, line.removeprefix("fedprune coordinator ") + " (mutual TLS)")
            return
        if line.startswith(f"fedprune {role}: error"):
            self.say(name, line)
            return
        match = _LOG_LINE.match(line)
        if match is None:
            return
        if role == "participant" and match["level"] == "WARNING" and "transformers" in match["source"]:
            return
        self.say(name, f"{match['level'].lower()}: {match['message']}")


@dataclasses.dataclass
class _Running:
    name: str
    popen: subprocess.Popen[str]
    log: IO[str]
    reader: threading.Thread


class Federation:
    """The started processes; ``stop`` ends every one of them (used on success, error and Ctrl-C)."""

    def __init__(self, files: ServiceFiles, board: ProgressBoard, *, threads: int = 1) -> None:
        self.files = files
        self.board = board
        self._threads = threads
        self.processes: list[_Running] = []
        self._tails: list[tuple[str, EventTail]] = []
        self._tails_lock = threading.Lock()
        self._closing = threading.Event()
        self._follower: threading.Thread | None = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Several processes share the cores: one compute thread each keeps them from oversubscribing.
        env["OMP_NUM_THREADS"] = str(self._threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def events_file(self, name: str) -> Path:
        """Return where process ``name`` appends its run events (``--events``)."""
        return self.files.logs / f"{name}.events.jsonl"

    def start(self, name: str, role: str) -> None:
        """Start ``fedprune ROLE --config configs/NAME.toml --events logs/NAME.events.jsonl``.

        Its output is read line by line into ``logs/NAME.log``; its events file is followed (``follow``).
        """
        events = self.events_file(name)
        events.unlink(missing_ok=True)  # the process appends: a previous demo's events must not replay
        command = [sys.executable, "-m", "fedprune.cli", role, "--config", str(self.files.config(name))]
        command += ["--events", str(events)]
        log = open(self.files.logs / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self._environment(),
            # Its own session: a Ctrl-C at the terminal reaches the demo only, which then stops them all.
            start_new_session=True,
        )
        reader = threading.Thread(target=self._read, args=(name, popen, log), daemon=True)
        self.processes.append(_Running(name=name, popen=popen, log=log, reader=reader))
        reader.start()
        self.follow(name, events)

    def follow(self, name: str, path: Path, *more: tuple[str, Path]) -> None:
        """Hand the events process ``name`` appends to ``path`` to the board, until ``wait`` or ``stop``.

        One thread reads every followed file in turn and hands each round's events to the board in the
        order of their times, so that one process's event is not shown before another's that came first.
        Files given in one call (``more``: further (name, path) pairs) are read from the same round on.
        """
        with self._tails_lock:
            for stream, events in ((name, path), *more):
                self._tails.append((stream, EventTail(events)))
            if self._follower is None:
                self._follower = threading.Thread(target=self._follow, daemon=True)
                self._follower.start()

    def _read(self, name: str, popen: subprocess.Popen[str], log: IO[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            log.write(line)
            log.flush()
            try:
                self.board.on_line(name, line)
            except Exception:  # progress is cosmetic: never let it stop the reading of a log
                logger.debug("cannot show output line %r", line, exc_info=True)

    def _follow(self) -> None:
        broken: set[str] = set()
        while True:
            closing = self._closing.is_set()  # checked first: what was written before it is read below
            with self._tails_lock:
                tails = [(name, tail) for name, tail in self._tails if name not in broken]
            batch: list[tuple[str, str, StampedEvent]] = []
            for name, tail in tails:
                try:
                    batch += [(stamped.time, name, stamped) for stamped in tail.read()]
                except Exception:  # progress is cosmetic: a bad line ends the board for this process only
                    logger.warning("cannot follow the events of %s in %s", name, tail.path, exc_info=True)
                    broken.add(name)
            for _, name, stamped in sorted(batch, key=lambda item: item[0]):
                try:
                    self.board.on_event(name, stamped.event, at=stamped.seconds)
                except Exception:
                    logger.debug("cannot show event %r", stamped.event, exc_info=True)
            if closing:
                return
            time.sleep(EVENT_POLL_S)

    def _stop_following(self, timeout_s: float) -> None:
        """Return once the events written so far are on the board (the processes have ended)."""
        self._closing.set()
        if self._follower is not None:
            self._follower.join(timeout=timeout_s)

    def pids(self) -> list[int]:
        """Return the process ids of every started process."""
        return [running.popen.pid for running in self.processes]

    def check(self) -> dict[str, int | None]:
        """Return each process's exit code (None: running); raise ServiceError when one has failed."""
        codes = {running.name: running.popen.poll() for running in self.processes}
        failed = {name: code for name, code in codes.items() if code not in (None, 0)}
        if failed:
            raise ServiceError(
                ", ".join(f"{name} exited {code}" for name, code in failed.items())
                + f" (logs in {self.files.logs})"
            )
        return codes

    def wait(self, *, timeout_s: float, poll_s: float = 0.2) -> dict[str, int]:
        """Return every process's exit code once all have ended; raise early when one fails or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            codes = self.check()
            if all(code == 0 for code in codes.values()):
                for running in self.processes:
                    running.reader.join(timeout=5)
                self._stop_following(5)
                return {name: 0 for name in codes}
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the run did not finish within {timeout_s:.0f} s (logs in {self.files.logs})"
                )
            time.sleep(poll_s)

    def stop(self) -> int:
        """Return how many processes were still running and had to be stopped (SIGTERM, then SIGKILL)."""
        alive = [running for running in self.processes if running.popen.poll() is None]
        for running in alive:
            _signal(running.popen, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for running in alive:
            try:
                running.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(running.popen, signal.SIGKILL)
                running.popen.wait(timeout=STOP_GRACE_S)
        for running in self.processes:
            running.reader.join(timeout=2)
            running.log.close()
        self._stop_following(2)
        return len(alive)


def _signal(popen: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        popen.send_signal(signum)


class ServiceError(RuntimeError):
    """A process of the demo's federation failed or the run did not finish in time."""
