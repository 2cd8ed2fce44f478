"""Real processes on loopback: a CA from ``fedprune certs``, a tiny model, configs, and bounded waits."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from proto.config_file import write_toml
from tests.tiny import build_tiny_model, build_word_tokenizer, random_text

REPO = Path(__file__).resolve().parents[2]
NAMES = ("site-a", "site-b", "site-c")
SEQLEN = 16
NSAMPLES = 4


def fedprune(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Return a finished ``fedprune`` command (run as ``python -m fedprune.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "fedprune.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def make_pki(directory: Path, *names: str) -> Path:
    """Return a CA directory holding the coordinator's server certificate and a client certificate per name."""
    for args in (
        ("certs", "init", "--out", str(directory)),
        (
            "certs",
            "issue",
            "--ca",
            str(directory),
            "--name",
            "coordinator",
            "--host",
            "127.0.0.1",
            "--out",
            str(directory),
        ),
        *(
            ("certs", "issue", "--ca", str(directory), "--name", name, "--out", str(directory))
            for name in names
        ),
    ):
        result = fedprune(*args)
        assert result.returncode == 0, result.stderr
    return directory


def make_model(directory: Path, *, seed: int = 0, layers: int = 2, **sizes: int) -> Path:
    """Return a saved tiny llama with its tokenizer (``sizes``: ``hidden``, ``intermediate``)."""
    build_tiny_model("llama", seed=seed, layers=layers, **sizes).save_pretrained(directory)
    build_word_tokenizer().save_pretrained(directory)
    return directory


def make_data(path: Path, *, seed: int) -> Path:
    """Return a calibration file of one document per line (the unit of record-level privacy)."""
    path.write_text(
        "".join(json.dumps({"text": random_text(40, seed=seed * 100 + d)}) + "\n" for d in range(12)),
        encoding="utf-8",
    )
    return path


@dataclass
class Federation:
    """A coordinator config, and what participants need, in one temporary directory."""

    root: Path
    pki: Path
    model: Path
    data: dict[str, Path]
    run: dict[str, object] = field(default_factory=dict)
    privacy: dict[str, object] = field(default_factory=dict)
    server: dict[str, object] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def signing_key(self) -> Path:
        return self.root / "keys" / "report.key"

    @property
    def names(self) -> tuple[str, ...]:
        """Return the sites of the run (the sites with calibration data)."""
        return tuple(self.data)

    def coordinator_config(self) -> Path:
        run = {
            "model": self.model,
            "participants": list(self.names),
            "min_participants": len(self.names),
            "method": "wanda",
            "sparsity": 0.5,
            "mode": "one-shot",
            "nsamples": NSAMPLES,
            "seqlen": SEQLEN,
            **self.run,
        }
        return write_toml(
            self.root / "coordinator.toml",
            {
                "server": {
                    "address": "127.0.0.1:0",
                    "round_timeout_s": 8.0,
                    "await_poll_s": 2.0,
                    **self.server,
                },
                "tls": {
                    "ca": self.pki / "ca.pem",
                    "certificate": self.pki / "coordinator.pem",
                    "private_key": self.pki / "coordinator.key",
                },
                "run": run,
                "privacy": self.privacy,
                "output": {
                    "directory": self.out,
                    "state": self.root / "state",
                    "signing_key": self.signing_key,
                },
            },
        )

    def participant_config(
        self,
        name: str,
        address: str,
        *,
        pki: Path | None = None,
        model: Path | None = None,
        minimums: dict[str, object] | None = None,
        max_retry_time_s: float = 30.0,
        label: str | None = None,
        runtime: dict[str, object] | None = None,
    ) -> Path:
        """Write ``name``'s config (file ``<label or name>.toml``; its state is ``state-<name>`` either way)."""
        pki = pki or self.pki
        sections: dict[str, dict[str, object]] = {
            "coordinator": {
                "address": address,
                "call_timeout_s": 10.0,
                "max_backoff_s": 0.5,
                "max_retry_time_s": max_retry_time_s,
            },
            "tls": {
                "ca": pki / "ca.pem",
                "certificate": pki / f"{name}.pem",
                "private_key": pki / f"{name}.key",
            },
            "model": {"directory": model or self.model},
            "data": {"calibration": self.data.get(name, next(iter(self.data.values())))},
            "runtime": {
                "device": "cpu",
                "state": self.root / f"state-{name}",
                "progress": False,
                **(runtime or {}),
            },
        }
        if minimums is not None:
            sections["privacy"] = minimums
        elif self.privacy.get("record_level_dp") is False:
            # A federation that keeps exact statistics: its sites opt out of the record-level default.
            sections["privacy"] = {"require_record_level_dp": False}
        return write_toml(self.root / f"{label or name}.toml", sections)


def make_federation(
    root: Path, *, layers: int = 2, names: tuple[str, ...] = NAMES, **sizes: int
) -> Federation:
    """Return a federation of ``names`` (three sites by default) with their own data, certificates and a
    tiny base model (``sizes``: ``hidden``, ``intermediate``)."""
    root.mkdir(parents=True, exist_ok=True)
    pki = make_pki(root / "pki", *names, "outsider")
    model = make_model(root / "model", layers=layers, **sizes)
    data = {name: make_data(root / f"{name}.jsonl", seed=i) for i, name in enumerate(names)}
    return Federation(root=root, pki=pki, model=model, data=data)


class Process:
    """A running ``fedprune`` process whose output goes to a log file; killed at the end of the test."""

    def __init__(
        self, log: Path, *args: str, env: dict[str, str] | None = None, module: str = "fedprune.cli"
    ) -> None:
        self.log = log
        self._handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            text=True,
            env={**_env(), **(env or {})},
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def wait_for(self, text: str, *, timeout: float = 60) -> str:
        """Return the log once it contains ``text``; fail after ``timeout`` seconds or if the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            if text in output:
                return output
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited {self.popen.returncode} before {text!r}:\n{output}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output()}")

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self._handle.close()


def free_address() -> str:
    """Return a loopback address whose port was free a moment ago (processes then start side by side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def reap(process: Process, deadline: float) -> tuple[int, resource.struct_rusage]:
    """Return the exit status and resource usage of ``process`` once it exits (killed at ``deadline``)."""
    while True:
        pid, status, usage = os.wait4(process.popen.pid, os.WNOHANG)
        if pid:
            process.popen.returncode = os.waitstatus_to_exitcode(status)
            return process.popen.returncode, usage
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{process.log} still running at the deadline:\n{process.output()[-2000:]}")
        time.sleep(0.02)


def cpu_s(usage: resource.struct_rusage) -> float:
    """Return the CPU time (user + system) of a reaped process."""
    return usage.ru_utime + usage.ru_stime


def start_coordinator(
    federation: Federation, name: str = "coordinator", *, kill_at: str | None = None, verbose: bool = False
) -> tuple[Process, str]:
    """Return the coordinator process and the address it will listen on (participants retry until it does).

    ``kill_at`` (``STAGE:BLOCK``): run the test harness ``tests.integration.crashing_coordinator`` instead,
    which SIGKILLs itself in the middle of that stage. ``verbose``: log debug messages.
    """
    if "address" not in federation.server:
        federation.server["address"] = free_address()
    config = federation.coordinator_config()
    log = federation.root / f"{name}.log"
    if kill_at is not None:
        args = ("--config", str(config), "--kill-at", kill_at)
        process = Process(log, *args, module="tests.integration.crashing_coordinator")
    else:
        process = Process(log, *(("--verbose",) if verbose else ()), "coordinator", "--config", str(config))
    return process, str(federation.server["address"])


def start_participant(
    federation: Federation,
    name: str,
    address: str,
    *,
    env: dict[str, str] | None = None,
    kill_after_shares: int | None = None,
    fault: str | None = None,
    verbose: bool = False,
    **options: object,
) -> Process:
    """Return a started participant process for ``name``.

    ``kill_after_shares``: run the test harness ``tests.integration.crashing_participant`` instead, which
    SIGKILLs itself once that block's ShareKeys is acknowledged; ``fault`` (``STAGE:BLOCK[:SIGNAL]``): the
    same harness, failing where that says. ``verbose``: log debug messages.
    """
    config = federation.participant_config(name, address, **options)  # type: ignore[arg-type]
    log = federation.root / f"{options.get('label') or name}.log"
    if kill_after_shares is not None:
        fault = f"after-share:{kill_after_shares}"
    if fault is not None:
        return Process(
            log,
            "--config",
            str(config),
            "--fault",
            fault,
            env=env,
            module="tests.integration.crashing_participant",
        )
    return Process(log, *(("--verbose",) if verbose else ()), "participant", "--config", str(config), env=env)
