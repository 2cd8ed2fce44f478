"""The demo's federation on loopback: a throwaway CA, configs, and the real coordinator and participants.

Everything is written under one service folder (``pki/``, ``configs/``, ``state/``, ``logs/``) and the
processes are the same programs an operator runs (``fedprune coordinator --config``, ``fedprune
participant --config``). Their log lines go to ``logs/NAME.log``; the few that mark progress (joins,
blocks, statements, completion, warnings) are condensed into one line each by :class:`ProgressBoard`.
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
_LOG_LINE = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<source>[\w.]+): (?P<message>.*)$")


class ProgressBoard:
    """Condenses the processes' log lines into one line per event: a join, a block, a site's completion."""

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
        self._block_started = started
        self._sent: dict[int, list[str]] = {}
        self.completed_blocks = 0
        self.blocks: int | None = None

    def say(self, who: str, message: str) -> None:
        """Print one progress line, stamped with the seconds since the demo started."""
        with self._lock:
            self._write(f"[{time.perf_counter() - self._started:6.1f}s] {who:<11} {message}")

    def on_line(self, name: str, line: str) -> None:
        """Take one output line of process ``name``."""
        line = line.rstrip()
        if name == COORDINATOR:
            self._coordinator(line)
        else:
            self._site(name, line)

    def _coordinator(self, line: str) -> None:
        if line.startswith("fedprune coordinator listening on"):
            self.say("coordinator", line.removeprefix("fedprune coordinator ") + " (mutual TLS)")
            return
        if line.startswith("fedprune coordinator: error"):
            self.say("coordinator", line)
            return
        match = _LOG_LINE.match(line)
        if match is None:
            return
        level, message = match["level"], match["message"]
        if level in ("WARNING", "ERROR", "CRITICAL"):
            self.say("coordinator", f"{level.lower()}: {message}")
        elif m := re.match(r"(\S+) joined as participant (\d+)", message):
            self.say(m[1], "joined: certificate accepted, base-model fingerprint matches")
        elif "participants present" in message:
            self.say("coordinator", message + "; the run starts")
        elif m := re.match(r"block (\d+)/(\d+): session with (\d+) participants", message):
            self.blocks = int(m[2])
            with self._lock:
                self._block_started = time.perf_counter()
        elif m := re.match(r"block (\d+)/(\d+) complete: (\d+) contributors", message):
            block, blocks = int(m[1]), int(m[2])
            self.completed_blocks = block
            seconds = time.perf_counter() - self._block_started
            summed = (
                "randomized votes and weight updates summed under secure aggregation, mask and averaged "
                "weights published"
                if self.recipe == "fedspallm"
                else "randomized votes summed under secure aggregation, mask published"
            )
            self.say(f"block {block}/{blocks}", f"{m[3]} sites' {summed} ({seconds:.1f} s)")
        elif m := re.match(r"(\S+) submitted its signed privacy statement \((\d+) events\)", message):
            self.say(m[1], f"signed its privacy statement ({m[2]} ledger events)")

    def _site(self, name: str, line: str) -> None:
        if line.startswith("fedprune participant:"):
            message = line.removeprefix("fedprune participant: ")
            if message != "run complete":
                self.say(name, message)
            return
        match = _LOG_LINE.match(line)
        if match is None:
            return
        level, message = match["level"], match["message"]
        if level in ("ERROR", "CRITICAL") or (level == "WARNING" and "transformers" not in match["source"]):
            self.say(name, f"{level.lower()}: {message}")
        elif message.startswith("block 0: session started"):
            if self.recipe == "fedspallm":
                # FedSpaLLM prunes lazily, one block when its session starts: here only block 1 is done.
                self.say(
                    name, "block 1 pruned with SparseGPT: votes randomized, weight updates ready to mask"
                )
            else:
                self.say(name, "votes of every block computed, randomized and ready to mask")
        elif re.match(r"run \S+ complete", message):
            self.say(name, "done")


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

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Several processes share the cores: one compute thread each keeps them from oversubscribing.
        env["OMP_NUM_THREADS"] = str(self._threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self, name: str, role: str) -> None:
        """Start ``fedprune ROLE --config configs/NAME.toml`` with its output read line by line."""
        command = [sys.executable, "-m", "fedprune.cli", role, "--config", str(self.files.config(name))]
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

    def _read(self, name: str, popen: subprocess.Popen[str], log: IO[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            log.write(line)
            log.flush()
            try:
                self.board.on_line(name, line)
            except Exception:  # progress is cosmetic: never let it stop the reading of a log
                logger.debug("cannot show progress line %r", line, exc_info=True)

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
        return len(alive)


def _signal(popen: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        popen.send_signal(signum)


class ServiceError(RuntimeError):
    """A process of the demo's federation failed or the run did not finish in time."""
