"""Load: one coordinator and 4, 8, 16, 32 participant processes on loopback; what grows with the sites.

    python bench/load.py [--sites 4 8 16 32] [--max-workers N] [--await-poll-s 20] [--layers 2]

For each number of sites n it issues a trial CA and n client certificates, builds a tiny Llama (``--layers``
decoder blocks, hidden 32: one block is 9216 weights), gives every site its own calibration documents, and
runs a real ``fedprune coordinator`` and n ``fedprune participant`` processes over mutual TLS, with the
default privacy settings (randomized response and record-level DP) and the default threshold
floor(2n/3) + 1. ``server.max_workers`` and ``server.await_poll_s`` are the coordinator's (defaults: a
thread for every call the per-caller caps admit, ``CoordinatorConfig.worker_threads``, and 20 s, as a
deployment has them); the round timeout is the default 600 s, so a slow round shows up as
latency, not as dropped sites.

Printed per n: the wall time from starting the processes to the last exit, the time until every site
joined, each block's latency (from the coordinator's "session with" line to its "complete" line, timed by
following its log; the first block also waits for the slowest site's local scoring, the later ones are the
protocol's five rounds alone), the coordinator's peak resident set and CPU time (user + system, from ``wait4``), and a
participant's mean CPU time and largest peak resident set; then how each grew from the previous n.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedprune.certs import create_ca, issue_certificate  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Federation,
    cpu_s,
    make_data,
    make_model,
    reap,
    start_coordinator,
    start_participant,
)

SESSION = re.compile(r"block (\d+)/\d+: session with")
COMPLETE = re.compile(r"block (\d+)/\d+ complete")
PRESENT = "participants present"


@dataclass
class LogClock:
    """Follows a growing log file and notes when each line of interest first appears."""

    path: Path
    started: float
    joined: float | None = None
    session: dict[int, float] = field(default_factory=dict)
    complete: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        seen = 0
        while not self._stop.is_set():
            text = self.path.read_text(encoding="utf-8", errors="replace") if self.path.exists() else ""
            now = time.monotonic()
            for line in text[seen:].splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # a line still being written: read it whole next time
                seen += len(line)
                if PRESENT in line and self.joined is None:
                    self.joined = now - self.started
                if match := SESSION.search(line):
                    self.session.setdefault(int(match[1]), now)
                if match := COMPLETE.search(line):
                    self.complete.setdefault(int(match[1]), now)
            time.sleep(0.02)

    def block_latencies(self) -> list[float]:
        return [self.complete[b] - self.session[b] for b in sorted(self.complete) if b in self.session]


@dataclass(frozen=True)
class Row:
    sites: int
    wall_s: float
    join_s: float
    blocks_s: list[float]
    coordinator_rss_mib: float
    coordinator_cpu_s: float
    participant_cpu_s: float
    participant_rss_mib: float


def run_once(root: Path, *, sites: int, args: argparse.Namespace) -> Row:
    names = tuple(f"site-{i:02d}" for i in range(sites))
    pki = root / "pki"
    create_ca(pki)
    issue_certificate(pki, "coordinator", pki, hosts=["127.0.0.1"])
    for name in names:
        issue_certificate(pki, name, pki)
    model = make_model(root / "model", layers=args.layers)
    data = {name: make_data(root / f"{name}.jsonl", seed=i) for i, name in enumerate(names)}
    federation = Federation(root=root, pki=pki, model=model, data=data)
    federation.server = {"round_timeout_s": 600.0, "await_poll_s": args.await_poll_s}
    if args.max_workers is not None:
        federation.server["max_workers"] = args.max_workers
    started = time.monotonic()
    coordinator, address = start_coordinator(federation)
    clock = LogClock(coordinator.log, started)
    clock.start()
    participants = [start_participant(federation, name, address) for name in names]
    deadline = started + args.timeout
    try:
        usages = []
        for process in participants:
            code, usage = reap(process, deadline)
            if code != 0:
                raise SystemExit(f"{process.log} exited {code}:\n{process.output()[-2000:]}")
            usages.append(usage)
        code, coordinator_usage = reap(coordinator, deadline)
        if code != 0:
            raise SystemExit(f"the coordinator exited {code}:\n{coordinator.output()[-2000:]}")
        wall = time.monotonic() - started
    finally:
        clock.stop()
        for process in (coordinator, *participants):
            process.stop()
    return Row(
        sites=sites,
        wall_s=wall,
        join_s=clock.joined or float("nan"),
        blocks_s=clock.block_latencies(),
        coordinator_rss_mib=coordinator_usage.ru_maxrss / 1024,  # Linux reports kilobytes
        coordinator_cpu_s=cpu_s(coordinator_usage),
        participant_cpu_s=sum(cpu_s(u) for u in usages) / len(usages),
        participant_rss_mib=max(u.ru_maxrss for u in usages) / 1024,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="the coordinator's server.max_workers (default: derived from the sites and the call caps)",
    )
    parser.add_argument(
        "--await-poll-s", type=float, default=20.0, help="the coordinator's server.await_poll_s"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one n may take in all")
    args = parser.parse_args()
    print(
        f"tiny llama, {args.layers} blocks of 9216 weights; default privacy; server.max_workers "
        f"{args.max_workers or 'derived'}, server.await_poll_s {args.await_poll_s:g}; {os.cpu_count()} CPUs",
        flush=True,
    )
    header = (
        "| sites | wall (s) | all joined (s) | block latency (s) | coordinator peak RSS (MiB) "
        "| coordinator CPU (s) | participant CPU, mean (s) | participant peak RSS (MiB) |"
    )
    rows = [header, "|---:|---:|---:|---|---:|---:|---:|---:|"]
    previous: Row | None = None
    growth = []
    for sites in args.sites:
        with tempfile.TemporaryDirectory(prefix=f"fedprune-bench-load-{sites}-") as scratch:
            row = run_once(Path(scratch), sites=sites, args=args)
        blocks = " / ".join(f"{b:.2f}" for b in row.blocks_s)
        rows.append(
            f"| {sites} | {row.wall_s:.1f} | {row.join_s:.1f} | {blocks} | {row.coordinator_rss_mib:.0f} "
            f"| {row.coordinator_cpu_s:.1f} | {row.participant_cpu_s:.1f} | {row.participant_rss_mib:.0f} |"
        )
        print(rows[-1], flush=True)
        if previous is not None:
            # The first block also waits for the slowest site's local scoring; the later ones are protocol.
            mean = sum(row.blocks_s[1:]) / len(row.blocks_s[1:])
            before = sum(previous.blocks_s[1:]) / len(previous.blocks_s[1:])
            growth.append(
                f"{previous.sites} -> {sites} sites: wall x{row.wall_s / previous.wall_s:.2f}, "
                f"later blocks' latency x{mean / before:.2f}, coordinator CPU "
                f"x{row.coordinator_cpu_s / previous.coordinator_cpu_s:.2f}, coordinator RSS "
                f"x{row.coordinator_rss_mib / previous.coordinator_rss_mib:.2f}"
            )
            print(growth[-1], flush=True)
        previous = row
    print("\n".join(rows + [""] + growth))


if __name__ == "__main__":
    main()
