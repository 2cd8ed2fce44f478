"""A participant's peak memory against the bytes of its model, by model depth.

    python bench/participant_memory.py [--blocks 4 12] [--hidden 1024] [--intermediate 2752] [--mode one-shot]

For each depth it builds a random float16 Llama (``--hidden`` x ``--intermediate``, tests/tiny.py), a trial
CA, three sites with their own calibration documents, and runs a real ``fedprune coordinator`` and three
``fedprune participant`` processes on loopback over mutual TLS (Wanda, privacy off: randomized response off
keeps the votes as they are, which costs the same memory as randomized ones). Prints each participant's
peak resident set (``ru_maxrss`` of that child, from ``wait4``), the model's weight bytes, the wall time
from the participants' start until block 0's session starts at every site (the site's start-up, load,
Join and the scoring that block 0 waits for), the whole run's wall time, and the slope between depths:
the extra peak RSS per extra model byte, free of the fixed cost of the interpreter, torch and
transformers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import build_model_in_child  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    NAMES,
    Federation,
    make_data,
    make_pki,
    start_coordinator,
    start_participant,
)


def _participant_peaks(federation: Federation) -> tuple[list[int], float, float]:
    """Return each participant's peak RSS in bytes, the seconds until block 0's session started at every
    site, and the seconds until every process exited, over one service run."""
    coordinator, address = start_coordinator(federation)
    started = time.monotonic()
    participants = [start_participant(federation, name, address) for name in NAMES]
    peaks = []
    try:
        for process in participants:
            process.wait_for("block 0: session started", timeout=600)
        first_session = time.monotonic() - started
        for process in participants:
            _, status, usage = os.wait4(process.popen.pid, 0)
            process.popen.returncode = os.waitstatus_to_exitcode(status)
            assert process.popen.returncode == 0, process.output()
            peaks.append(usage.ru_maxrss * 1024)  # Linux reports kilobytes
        assert coordinator.popen.wait(timeout=600) == 0, coordinator.output()
        whole = time.monotonic() - started
    finally:
        for process in (coordinator, *participants):
            process.stop()
    return peaks, first_session, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2752)
    parser.add_argument("--mode", choices=("one-shot", "iterative"), default="one-shot")
    args = parser.parse_args()
    print(
        f"llama float16 hidden {args.hidden}, intermediate {args.intermediate}; 3 participants; wanda {args.mode}"
    )
    rows = [
        "| blocks | weights (MiB) | participant peak RSS (MiB, max of 3) | block 0's session starts (s) | run (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    points: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="fedprune-bench-participant-") as scratch:
        root = Path(scratch)
        pki = make_pki(root / "pki", *NAMES)
        data = {name: make_data(root / f"{name}.jsonl", seed=i) for i, name in enumerate(NAMES)}
        for blocks in args.blocks:
            run_root = root / f"blocks-{blocks}"
            run_root.mkdir()
            weights = build_model_in_child(
                run_root / "model", blocks=blocks, hidden=args.hidden, intermediate=args.intermediate
            )
            federation = Federation(root=run_root, pki=pki, model=run_root / "model", data=data)
            federation.privacy = {"randomized_response": False, "record_level_dp": False}
            federation.run = {"mode": args.mode}
            federation.server = {"round_timeout_s": 300.0}
            peaks, first_session, whole = _participant_peaks(federation)
            peak = max(peaks)
            points.append((weights, peak))
            rows.append(
                f"| {blocks} | {weights / 2**20:.1f} | {peak / 2**20:.0f} | {first_session:.1f} | {whole:.1f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))
    if len(points) > 1:
        (w0, p0), (w1, p1) = points[0], points[-1]
        print(f"extra peak RSS per extra model byte: {(p1 - p0) / (w1 - w0):.2f}")
        print(
            f"fixed part (peak RSS - slope x weights at {args.blocks[0]} blocks): {(p0 - (p1 - p0) / (w1 - w0) * w0) / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
