"""How the service's memory and block latency grow with the model, and what that says of 7B and 70B.

    python bench/scale.py [--blocks 4 8 16 32] [--hidden 512] [--intermediate 1376]
                          [--widths 1024x2752] [--privacy default|off] [--json]

For each model it builds a random float16 Llama (tests/tiny.py: ``--hidden`` x ``--intermediate`` at every
depth of ``--blocks``, then each ``HIDDENxINTERMEDIATE`` of ``--widths`` at the smallest depth), a trial CA,
three sites with their own calibration documents (tests/integration/harness.py: 4 windows of 16 tokens
each), and runs a real ``fedprune coordinator`` and three ``fedprune participant`` processes on loopback
over mutual TLS: one-shot FedPrLLM, Wanda at 50%, privacy as in the examples (record-level DP,
randomized response, secure aggregation) unless ``--privacy off``. It reports, per model: the weight bytes,
each role's peak resident set (``ru_maxrss`` from ``wait4``; the participants' largest), and the block
latency: the wall time between successive "block k/N complete" lines of the coordinator's log, the median
over blocks 2..N (block 1 also waits for every site's start-up, load and Join).

It then fits, by least squares over every run, peak RSS = a + b x model bytes for each role and block
latency = c + d x prunable weights of one block, and extrapolates both to the shapes of Llama-2-7B
(32 blocks of 4096 x 11008, 6.74 G parameters) and Llama-2-70B (80 blocks of 8192 x 28672 with 8 KV heads,
69.0 G parameters) in float16. The latency fit holds for this calibration size and 3 sites only: the
calibration a site runs per block grows with its data, which is tiny here. ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import (  # noqa: E402
    NAMES,
    Federation,
    Process,
    make_data,
    make_pki,
    reap,
    start_coordinator,
    start_participant,
)

COMPLETE = re.compile(r"block (\d+)/(\d+) complete")


_BUILD = """
import sys
import torch
from tests.tiny import build_tiny_model, build_word_tokenizer
directory, blocks, hidden, intermediate = sys.argv[1], *map(int, sys.argv[2:5])
model = build_tiny_model("llama", layers=blocks, hidden=hidden, intermediate=intermediate, dtype=torch.float16)
model.save_pretrained(directory)
build_word_tokenizer().save_pretrained(directory)
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def build_model_in_child(directory: Path, *, blocks: int, hidden: int, intermediate: int) -> int:
    """Save a random float16 Llama from a child process; return the bytes of its weights.

    Not in this process: a child's ``ru_maxrss`` starts from the peak of the process that spawned it
    (Linux carries the parent's high-water mark over ``vfork`` and ``exec``), so a benchmark that built
    a large model itself would read its own peak in every role it starts afterwards.
    """
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(directory), str(blocks), str(hidden), str(intermediate)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Shape:
    """A Llama's shape: what its weight bytes and one block's prunable weights follow from."""

    blocks: int
    hidden: int
    intermediate: int
    vocab: int = 96
    kv_fraction: float = 0.5
    """Key/value projection width over ``hidden`` (grouped-query attention; tests/tiny.py: 2 of 4 heads)."""

    @property
    def block_weights(self) -> int:
        """Prunable weights of one decoder block: q, k, v, o and gate, up, down."""
        h, i = self.hidden, self.intermediate
        return int(2 * h * h + 2 * h * h * self.kv_fraction + 3 * h * i)

    @property
    def parameters(self) -> int:
        """Every parameter: the blocks (with their two norms), the embeddings, the head and the final norm."""
        return (
            self.blocks * (self.block_weights + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden
        )


LLAMA_7B = Shape(blocks=32, hidden=4096, intermediate=11008, vocab=32000, kv_fraction=1.0)
LLAMA_70B = Shape(blocks=80, hidden=8192, intermediate=28672, vocab=32000, kv_fraction=0.125)


@dataclass
class Measured:
    blocks: int
    hidden: int
    intermediate: int
    model_bytes: int
    block_weights: int
    coordinator_peak: int
    participant_peak: int
    block_latency_s: float
    run_s: float


class CompletionClock:
    """Follows the coordinator's log; notes the wall time when each block's "complete" line appears."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            text = self.process.output() if self.process.log.exists() else ""
            now = time.monotonic()
            for match in COMPLETE.finditer(text):
                self.at.setdefault(int(match.group(1)), now)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def latency(self) -> float:
        """Return the median wall time between successive completions after the first block."""
        times = [self.at[k] for k in sorted(self.at)]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return statistics.median(gaps) if gaps else float("nan")


def run_once(root: Path, pki: Path, data: dict[str, Path], shape: Shape, *, privacy: str) -> Measured:
    model_dir = root / "model"
    model_bytes = build_model_in_child(
        model_dir, blocks=shape.blocks, hidden=shape.hidden, intermediate=shape.intermediate
    )
    federation = Federation(root=root, pki=pki, model=model_dir, data=data)
    if privacy == "off":
        federation.privacy = {"randomized_response": False, "record_level_dp": False}
    federation.server = {"round_timeout_s": 300.0}
    started = time.monotonic()
    coordinator, address = start_coordinator(federation)
    participants = [start_participant(federation, name, address) for name in NAMES]
    clock = CompletionClock(coordinator)
    deadline = started + 600
    try:
        peaks = []
        for name, process in zip(NAMES, participants, strict=True):
            code, usage = reap(process, deadline)
            if code != 0:
                raise SystemExit(f"participant {name} exited {code}:\n{process.output()[-3000:]}")
            peaks.append(usage.ru_maxrss * 1024)  # Linux reports kilobytes
        code, usage = reap(coordinator, deadline)
        if code != 0:
            raise SystemExit(f"the coordinator exited {code}:\n{coordinator.output()[-3000:]}")
        run_s = time.monotonic() - started
    finally:
        clock.stop()
        for process in (coordinator, *participants):
            process.stop()
    return Measured(
        blocks=shape.blocks,
        hidden=shape.hidden,
        intermediate=shape.intermediate,
        model_bytes=model_bytes,
        block_weights=shape.block_weights,
        coordinator_peak=usage.ru_maxrss * 1024,
        participant_peak=max(peaks),
        block_latency_s=clock.latency(),
        run_s=run_s,
    )


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Return (intercept, slope) of the least-squares line through the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def extrapolate(runs: list[Measured]) -> dict[str, object]:
    """Return the fitted formulas and what they say of Llama-2-7B and 70B in float16."""
    bytes_ = [float(r.model_bytes) for r in runs]
    formulas: dict[str, tuple[float, float]] = {
        "coordinator_peak_bytes": fit(bytes_, [float(r.coordinator_peak) for r in runs]),
        "participant_peak_bytes": fit(bytes_, [float(r.participant_peak) for r in runs]),
        "block_latency_s": fit([float(r.block_weights) for r in runs], [r.block_latency_s for r in runs]),
    }
    targets = {}
    for label, shape in (("llama-2-7b", LLAMA_7B), ("llama-2-70b", LLAMA_70B)):
        model_bytes = 2 * shape.parameters
        a_c, b_c = formulas["coordinator_peak_bytes"]
        a_p, b_p = formulas["participant_peak_bytes"]
        c, d = formulas["block_latency_s"]
        targets[label] = {
            "parameters": shape.parameters,
            "model_bytes": model_bytes,
            "block_weights": shape.block_weights,
            "coordinator_peak_bytes": a_c + b_c * model_bytes,
            "participant_peak_bytes": a_p + b_p * model_bytes,
            "block_latency_s": c + d * shape.block_weights,
            "run_s": shape.blocks * (c + d * shape.block_weights),
        }
    return {
        "formulas": {k: {"intercept": v[0], "slope": v[1]} for k, v in formulas.items()},
        "targets": targets,
    }


def report(runs: list[Measured], fitted: dict[str, object]) -> str:
    gib, mib = 2**30, 2**20
    lines = [
        "| blocks | hidden x intermediate | weights (MiB) | coordinator peak (MiB) | participant peak (MiB, max of 3) "
        "| block latency (s) | run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.blocks} | {r.hidden} x {r.intermediate} | {r.model_bytes / mib:.1f} | "
            f"{r.coordinator_peak / mib:.0f} | {r.participant_peak / mib:.0f} | {r.block_latency_s:.2f} | "
            f"{r.run_s:.1f} |"
        )
    formulas = fitted["formulas"]
    assert isinstance(formulas, dict)
    lines.append("")
    for name in ("coordinator_peak_bytes", "participant_peak_bytes"):
        f = formulas[name]
        lines.append(f"{name}: {f['intercept'] / mib:.0f} MiB + {f['slope']:.2f} x model bytes")
    f = formulas["block_latency_s"]
    lines.append(
        f"block_latency_s: {f['intercept']:.3f} s + {f['slope'] * 1e9:.2f} ns x prunable weights of a block"
    )
    lines += [
        "",
        "| model (float16) | weights (GiB) | coordinator RAM (GiB) | participant RAM (GiB) | block (s) | run (min) |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|")
    targets = fitted["targets"]
    assert isinstance(targets, dict)
    for label, t in targets.items():
        lines.append(
            f"| {label} | {t['model_bytes'] / gib:.1f} | {t['coordinator_peak_bytes'] / gib:.1f} | "
            f"{t['participant_peak_bytes'] / gib:.1f} | {t['block_latency_s']:.1f} | {t['run_s'] / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument(
        "--widths", nargs="*", default=["1024x2752"], help="HIDDENxINTERMEDIATE at the least depth"
    )
    parser.add_argument("--privacy", choices=("default", "off"), default="default")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    shapes = [Shape(blocks=b, hidden=args.hidden, intermediate=args.intermediate) for b in args.blocks]
    for width in args.widths:
        hidden, intermediate = (int(v) for v in width.lower().split("x"))
        shapes.append(Shape(blocks=min(args.blocks), hidden=hidden, intermediate=intermediate))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedprune-bench-scale-") as scratch:
        root = Path(scratch)
        pki = make_pki(root / "pki", *NAMES)
        data = {name: make_data(root / f"{name}.jsonl", seed=i) for i, name in enumerate(NAMES)}
        for index, shape in enumerate(shapes):
            run_root = root / f"run-{index}"
            run_root.mkdir()
            runs.append(run_once(run_root, pki, data, shape, privacy=args.privacy))
            if not args.json:
                r = runs[-1]
                print(
                    f"{r.blocks} blocks {r.hidden}x{r.intermediate}: {r.model_bytes / 2**20:.1f} MiB, coordinator "
                    f"{r.coordinator_peak / 2**20:.0f} MiB, participant {r.participant_peak / 2**20:.0f} MiB, "
                    f"block {r.block_latency_s:.2f} s, run {r.run_s:.1f} s",
                    flush=True,
                )
    fitted = extrapolate(runs)
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs], "privacy": args.privacy, **fitted}, indent=2))
    else:
        print(report(runs, fitted))


if __name__ == "__main__":
    main()
