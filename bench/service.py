"""The networked service next to ``fedprune simulate``: coordinator peak memory and wall time by model depth.

    python bench/service.py [--blocks 4 16] [--hidden 256] [--intermediate 688] [--recipe fedprllm|fedspallm]

For each depth it builds a tiny-but-not-trivial Llama (random weights, ``--hidden`` x ``--intermediate``),
a trial CA with ``fedprune certs``, three sites with their own calibration documents, and runs a real
``fedprune coordinator`` and three ``fedprune participant`` processes on loopback over mutual TLS, then
``fedprune simulate`` on the same model and data: the same coordinator and participant roles in one
process over an in-memory transport. Both with randomized response and record-level DP off and secure
aggregation on (``simulate --privacy off`` and the service's setting whose masks the integration tests
prove equal), so the figures compare the same work. Prints the coordinator's peak resident set (``ru_maxrss`` of that one child, from ``wait4``),
the size of the model's weights it must hold to write the checkpoint, one block's accumulator (uint16
counts; under ``--recipe fedspallm`` uint64 sums of the packed keep-votes and weight updates, with SparseGPT
at every site), and the wall times.
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

from tests.integration.harness import (  # noqa: E402
    NAMES,
    NSAMPLES,
    SEQLEN,
    Federation,
    fedprune,
    make_data,
    make_pki,
    start_coordinator,
    start_participant,
)
from tests.tiny import build_tiny_model, build_word_tokenizer  # noqa: E402


def _model(directory: Path, *, blocks: int, hidden: int, intermediate: int) -> tuple[int, int]:
    """Save the model; return (bytes of its weights, coordinates of its largest block)."""
    model = build_tiny_model("llama", layers=blocks, hidden=hidden, intermediate=intermediate)
    model.save_pretrained(directory)
    build_word_tokenizer().save_pretrained(directory)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    layer = model.model.layers[0]
    block = sum(m.weight.numel() for m in layer.modules() if type(m).__name__ == "Linear")
    return weights, block


def _service(federation: Federation) -> tuple[float, int]:
    """Return (wall seconds, coordinator peak RSS in bytes) of one service run."""
    started = time.monotonic()
    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in NAMES]
    try:
        for process in participants:
            assert process.wait(timeout=1800) == 0, process.output()
        _, status, usage = os.wait4(coordinator.popen.pid, 0)
        coordinator.popen.returncode = os.waitstatus_to_exitcode(status)
        assert coordinator.popen.returncode == 0, coordinator.output()
        elapsed = time.monotonic() - started
    finally:
        for process in (coordinator, *participants):
            process.stop()
    return elapsed, usage.ru_maxrss * 1024  # Linux reports kilobytes


def _simulate(federation: Federation, out: Path, *, recipe: str) -> float:
    args = ["simulate", "--model", str(federation.model), "--sparsity", "0.5", "--nsamples", str(NSAMPLES)]
    args += ["--recipe", recipe]
    args += ["--seqlen", str(SEQLEN), "--privacy", "off", "--out", str(out), "--no-progress"]
    args += ["--device", "cpu"]
    for name in NAMES:
        args += ["--participant-data", str(federation.data[name])]
    started = time.monotonic()
    result = fedprune(*args, timeout=1800)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--recipe", choices=("fedprllm", "fedspallm"), default="fedprllm")
    args = parser.parse_args()
    sum_bytes = 8 if args.recipe == "fedspallm" else 2
    print(
        f"llama hidden {args.hidden}, intermediate {args.intermediate}; 3 participants; privacy off; cpu; "
        f"recipe {args.recipe}"
    )
    header = (
        "| blocks | weights (MiB) | one block's counts (MiB) | coordinator peak RSS (MiB) "
        "| service wall (s) | simulate wall (s) |"
    )
    rows = [header, "|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="fedprune-bench-service-") as scratch:
        root = Path(scratch)
        pki = make_pki(root / "pki", *NAMES)
        data = {name: make_data(root / f"{name}.jsonl", seed=i) for i, name in enumerate(NAMES)}
        for blocks in args.blocks:
            run_root = root / f"blocks-{blocks}"
            run_root.mkdir()
            weights, block = _model(
                run_root / "model", blocks=blocks, hidden=args.hidden, intermediate=args.intermediate
            )
            federation = Federation(root=run_root, pki=pki, model=run_root / "model", data=data)
            federation.privacy = {"randomized_response": False, "record_level_dp": False}
            if args.recipe == "fedspallm":
                federation.run = {"method": "sparsegpt", "recipe": "fedspallm"}
            federation.server = {"round_timeout_s": 120.0}
            service_s, peak = _service(federation)
            simulate_s = _simulate(federation, run_root / "simulated", recipe=args.recipe)
            rows.append(
                f"| {blocks} | {weights / 2**20:.1f} | {block * sum_bytes / 2**20:.2f} | {peak / 2**20:.0f} "
                f"| {service_s:.1f} | {simulate_s:.1f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
