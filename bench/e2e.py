"""End to end on one machine: centralized pruning, ``simulate``, and the private service, same model and data.

    python bench/e2e.py [--blocks 8] [--hidden 512] [--intermediate 1376] [--sites 4] [--documents 64]
                        [--seqlen 128] [--json]

It builds a random Llama (``--blocks`` decoder blocks of ``--hidden`` x ``--intermediate``), gives each of
``--sites`` sites ``--documents`` calibration documents of exactly ``--seqlen`` token ids (one ``input_ids``
line each, so every path reads every document as exactly one window: the same total data everywhere), and
times four real commands, each a subprocess with ``OMP_NUM_THREADS=1``:

(a) ``fedprune prune``: Wanda at 50% on all sites' documents in one file (``--nsamples`` = every line);
(b) ``fedprune simulate --privacy off``: the same coordinator and participant roles in one process (no
    randomized response, no record-level DP; secure aggregation still sums the votes);
(c) the service: ``fedprune coordinator`` and one ``fedprune participant`` per site over mutual TLS on
    loopback (a trial CA from ``fedprune.certs``), with the default privacy: record-level DP on the
    calibration statistics, randomized response on the keep-votes, secure aggregation;
(d) ``fedprune simulate`` with its default privacy (record-level DP, randomized response, secure
    aggregation): the privacy pipeline's cost without the processes and the network.

CPU time is user + system of each process, from ``os.wait4``. It prints (b)/(a) and (c)/(a) for CPU and
wall time, and where (c)'s CPU goes: the coordinator's and each participant's, split into phases by the
moments their log lines appear (a thread follows each log and reads the process's CPU time from
``/proc/PID/stat`` when a line first shows up). A participant's phases: start-up (interpreter and imports,
up to its "identity key" line), model load and Join (to "joined run"), block 0 (its calibration and votes,
the only scoring a one-shot site does before its first session, to "block 0: session started"), the rest
(every block's session, and the scoring of blocks 1 and later, each when its session starts, to its exit);
and the wall time from the participants' start until block 0's session started at every site. The
coordinator's: start-up until every site joined, waiting for block 1's session (the sites score), the block
sessions, and writing the checkpoint and report after the last block. (a)'s: start-up, model load and
data (to its "calibration:" line), pruning and saving. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedprune.certs import create_ca, issue_certificate  # noqa: E402
from fedprune.simulate import site_name  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Federation,
    Process,
    cpu_s,
    reap,
    start_coordinator,
    start_participant,
)
from tests.tiny import build_word_tokenizer, random_ids, tiny_config, write_input_ids  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PARTICIPANT_MARKS = (
    ("start-up", "identity key"),
    ("load + join", "joined run"),  # model load, fingerprint, Join, data read, privacy plan
    ("block 0 scoring", "block 0: session started"),
)
COORDINATOR_MARKS = (
    ("start-up + joins", "participants present"),
    ("waiting for scores", "block 1/"),
)


def process_cpu_s(pid: int) -> float | None:
    """Return a running process's user + system CPU seconds so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime and stime, fields 14 and 15 of the line


@dataclass
class PhaseClock:
    """Follows a process's log; notes its CPU time when each marking line first appears."""

    process: Process
    marks: tuple[tuple[str, str], ...]
    last: str | None = None
    """A line that may appear many times; the CPU time at its last appearance is kept (``last`` mark)."""
    cpu_at: dict[str, float] = field(default_factory=dict)
    wall_at: dict[str, float] = field(default_factory=dict)
    """Monotonic time when each mark's line was first seen."""
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        seen = 0
        while not self._stop.is_set():
            text = self.process.output() if self.process.log.exists() else ""
            cpu = process_cpu_s(self.process.popen.pid)
            for line in text[seen:].splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # a line still being written: read it whole next time
                seen += len(line)
                if cpu is None:
                    continue
                for label, needle in self.marks:
                    if needle in line:
                        self.cpu_at.setdefault(label, cpu)
                        self.wall_at.setdefault(label, time.monotonic())
                if self.last is not None and self.last in line:
                    self.cpu_at["last"] = cpu
            time.sleep(0.02)

    def phases(self, total: float) -> dict[str, float]:
        """Return CPU seconds per phase: between successive marks, the rest to ``total``."""
        out: dict[str, float] = {}
        previous = 0.0
        labels = [label for label, _ in self.marks] + (["last"] if self.last else [])
        for label in labels:
            if label in self.cpu_at:
                out[label] = max(self.cpu_at[label] - previous, 0.0)
                previous = self.cpu_at[label]
        out["rest"] = max(total - previous, 0.0)
        return out


@dataclass(frozen=True)
class Measured:
    wall_s: float
    cpu_s: float


def run_command(
    log: Path, *args: str, timeout: float, marks: tuple[tuple[str, str], ...] = ()
) -> tuple[Measured, dict[str, float]]:
    """Run one ``fedprune`` command to its end (fail loudly if it fails); return its times and CPU phases."""
    started = time.monotonic()
    process = Process(log, *args)
    clock = PhaseClock(process, marks)
    clock.start()
    try:
        code, usage = reap(process, started + timeout)
    finally:
        clock.stop()
        process.stop()
    if code != 0:
        raise SystemExit(f"fedprune {args[0]} exited {code}:\n{process.output()[-3000:]}")
    return Measured(wall_s=time.monotonic() - started, cpu_s=cpu_s(usage)), clock.phases(cpu_s(usage))


def build_model(directory: Path, *, blocks: int, hidden: int, intermediate: int, seqlen: int) -> int:
    """Save a random Llama and its tokenizer; return its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", hidden=hidden, layers=blocks, intermediate=intermediate)
    config.max_position_embeddings = max(config.max_position_embeddings, seqlen)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                # Activations far from uniform, without blowing up through the blocks.
                parameter.normal_(0.0, 2.0 / parameter.shape[1] ** 0.5)
    model.eval().save_pretrained(directory)
    build_word_tokenizer().save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def run_service(federation: Federation, names: tuple[str, ...], *, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in names]
    clocks = [PhaseClock(coordinator, COORDINATOR_MARKS, last=" complete: ")]
    clocks += [PhaseClock(p, PARTICIPANT_MARKS) for p in participants]
    for clock in clocks:
        clock.start()
    deadline = started + timeout
    try:
        usages = []
        for name, process in zip(names, participants, strict=True):
            code, usage = reap(process, deadline)
            if code != 0:
                raise SystemExit(f"participant {name} exited {code}:\n{process.output()[-3000:]}")
            usages.append(usage)
        code, coordinator_usage = reap(coordinator, deadline)
        if code != 0:
            raise SystemExit(f"the coordinator exited {code}:\n{coordinator.output()[-3000:]}")
        wall = time.monotonic() - started
    finally:
        for clock in clocks:
            clock.stop()
        for process in (coordinator, *participants):
            process.stop()
    coordinator_cpu = cpu_s(coordinator_usage)
    coordinator_phases = clocks[0].phases(coordinator_cpu)
    coordinator_phases["sessions"] = coordinator_phases.pop("last", 0.0)
    coordinator_phases["checkpoint + report"] = coordinator_phases.pop("rest")
    participant_phases = {}
    for name, clock, usage in zip(names, clocks[1:], usages, strict=True):
        phases = clock.phases(cpu_s(usage))
        phases["sessions + later blocks"] = phases.pop("rest")
        participant_phases[name] = {"cpu_s": cpu_s(usage), "phases": phases}
    first = [clock.wall_at.get("block 0 scoring") for clock in clocks[1:]]
    return {
        "wall_s": wall,
        "first_session_s": max(first) - started if None not in first else None,  # type: ignore[type-var]
        "cpu_s": coordinator_cpu + sum(cpu_s(u) for u in usages),
        "coordinator": {"cpu_s": coordinator_cpu, "phases": coordinator_phases},
        "participants": participant_phases,
    }


def measure(root: Path, args: argparse.Namespace) -> dict[str, object]:
    names = tuple(site_name(i) for i in range(args.sites))
    pki = root / "pki"
    create_ca(pki)
    issue_certificate(pki, "coordinator", pki, hosts=["127.0.0.1"])
    for name in names:
        issue_certificate(pki, name, pki)
    model = root / "model"
    parameters = build_model(
        model, blocks=args.blocks, hidden=args.hidden, intermediate=args.intermediate, seqlen=args.seqlen
    )
    rows = {
        name: random_ids(args.documents, args.seqlen, seed=10 + i).tolist() for i, name in enumerate(names)
    }
    data = {name: write_input_ids(root / f"{name}.jsonl", rows[name]) for name in names}
    pooled = write_input_ids(root / "all.jsonl", [row for name in names for row in rows[name]])
    total = args.sites * args.documents
    common = ["--sparsity", "0.5", "--seqlen", str(args.seqlen), "--device", "cpu", "--no-progress"]

    centralized, centralized_phases = run_command(
        root / "prune.log",
        *("prune", "--model", str(model), "--data", str(pooled), "--method", "wanda"),
        *("--nsamples", str(total), "--out", str(root / "centralized"), *common),
        timeout=args.timeout,
        marks=(("start-up + load + data", "calibration:"),),
    )
    centralized_phases["pruning + save"] = centralized_phases.pop("rest")
    simulate_args = ["simulate", "--model", str(model), "--nsamples", str(args.documents)]
    for name in names:
        simulate_args += ["--participant-data", str(data[name])]
    simulate_args += ["--signing-key", str(root / "simulate.key"), *common]
    simulated, _ = run_command(
        root / "simulate.log",
        *simulate_args,
        *("--privacy", "off", "--out", str(root / "simulated")),
        timeout=args.timeout,
    )
    # The service's privacy pipeline in one process: what privacy costs apart from processes and network.
    private, _ = run_command(
        root / "simulate-private.log",
        *simulate_args,
        *("--out", str(root / "simulated-private")),
        timeout=args.timeout,
    )

    federation = Federation(root=root / "service", pki=pki, model=model, data=data)
    federation.root.mkdir()
    federation.run = {"nsamples": args.documents, "seqlen": args.seqlen}
    federation.server = {"round_timeout_s": 600.0}
    service = run_service(federation, names, timeout=args.timeout)
    service_wall = float(service["wall_s"])  # type: ignore[arg-type]
    service_cpu = float(service["cpu_s"])  # type: ignore[arg-type]
    return {
        "model": {
            "blocks": args.blocks,
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "parameters": parameters,
        },
        "data": {"sites": args.sites, "documents_per_site": args.documents, "seqlen": args.seqlen},
        "cpus": os.cpu_count(),
        "centralized": {**asdict(centralized), "phases": centralized_phases},
        "simulate": asdict(simulated),
        "simulate_private": asdict(private),
        "service": service,
        "simulate_over_centralized": {
            "cpu": simulated.cpu_s / centralized.cpu_s,
            "wall": simulated.wall_s / centralized.wall_s,
        },
        "simulate_private_over_centralized": {
            "cpu": private.cpu_s / centralized.cpu_s,
            "wall": private.wall_s / centralized.wall_s,
        },
        "service_over_centralized": {
            "cpu": service_cpu / centralized.cpu_s,
            "wall": service_wall / centralized.wall_s,
        },
    }


def report(result: dict[str, object]) -> str:
    model, data = result["model"], result["data"]
    assert isinstance(model, dict) and isinstance(data, dict)
    centralized, simulated, service = result["centralized"], result["simulate"], result["service"]
    assert isinstance(centralized, dict) and isinstance(simulated, dict) and isinstance(service, dict)
    private = result["simulate_private"]
    ratio_s, ratio_c = result["simulate_over_centralized"], result["service_over_centralized"]
    ratio_p = result["simulate_private_over_centralized"]
    assert isinstance(private, dict) and isinstance(ratio_p, dict)
    assert isinstance(ratio_s, dict) and isinstance(ratio_c, dict)
    lines = [
        f"llama {model['blocks']} blocks, hidden {model['hidden']}, intermediate {model['intermediate']} "
        f"({model['parameters'] / 1e6:.1f} M parameters); {data['sites']} sites x {data['documents_per_site']} "
        f"documents of {data['seqlen']} tokens; Wanda 50%; cpu, OMP_NUM_THREADS=1; {result['cpus']} CPUs",
        "",
        "| run | wall (s) | CPU (s) | CPU / (a) | wall / (a) |",
        "|---|---:|---:|---:|---:|",
        f"| (a) centralized `fedprune prune` | {centralized['wall_s']:.1f} | {centralized['cpu_s']:.1f} | 1.00 | 1.00 |",
        f"| (b) `fedprune simulate --privacy off` | {simulated['wall_s']:.1f} | {simulated['cpu_s']:.1f} "
        f"| {ratio_s['cpu']:.2f} | {ratio_s['wall']:.2f} |",
        f"| (c) service, {data['sites']} sites, default privacy | {service['wall_s']:.1f} | {service['cpu_s']:.1f} "
        f"| {ratio_c['cpu']:.2f} | {ratio_c['wall']:.2f} |",
        f"| (d) `fedprune simulate`, default privacy | {private['wall_s']:.1f} | {private['cpu_s']:.1f} "
        f"| {ratio_p['cpu']:.2f} | {ratio_p['wall']:.2f} |",
        "",
        f"simulate_over_centralized: cpu {ratio_s['cpu']:.2f}, wall {ratio_s['wall']:.2f}",
        f"service_over_centralized: cpu {ratio_c['cpu']:.2f}, wall {ratio_c['wall']:.2f}",
        "",
        "CPU seconds by process and phase:",
        "  (a) " + ", ".join(f"{k} {v:.1f}" for k, v in centralized["phases"].items()),
        "  (c)",
    ]
    coordinator = service["coordinator"]
    participants = service["participants"]
    assert isinstance(coordinator, dict) and isinstance(participants, dict)
    phases = ", ".join(f"{k} {v:.1f}" for k, v in coordinator["phases"].items())
    lines.append(f"    coordinator {coordinator['cpu_s']:.1f}: {phases}")
    first = service.get("first_session_s")
    if isinstance(first, float):
        at = lines.index("CPU seconds by process and phase:")
        lines.insert(at, f"(c) block 0's session started at every site {first:.1f} s after they started\n")
    for name, entry in participants.items():
        phases = ", ".join(f"{k} {v:.1f}" for k, v in entry["phases"].items())
        lines.append(f"    {name} {entry['cpu_s']:.1f}: {phases}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--documents", type=int, default=64, help="calibration documents per site")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per document (one window each)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds each run may take")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedprune-bench-e2e-") as scratch:
        result = measure(Path(scratch), args)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
