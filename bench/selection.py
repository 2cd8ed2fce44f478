"""Benchmark: the coordinator's global-mask selection against the former two-sort selection, printed, never asserted.

Run: ``python bench/selection.py [--shapes 4096x4096,4096x11008] [--votes 4,16,64] [--groups layer,row,2:4]
[--dtype float16] [--all-tied] [--threads 1] [--no-reference] [--json]``. For each matrix shape, number of
participants n and comparison group it builds normal base weights (float16 unless ``--dtype``) and summed
keep-votes (binomial(n, 1/2) per weight: every count 0..n occurs, the middle ones millions of times;
``--all-tied``: every count n/2, so that the whole matrix is one tie to settle by |W| and index, the worst
case for memory), then runs the former selection (two full stable sorts with int64 indices, kept as
``tests/coordinator/reference_selection.py``) and the current one (``coordinator.aggregation.global_mask``)
at 50% sparsity, checks that the masks are equal, and prints:

- ``ns_per_weight``: process CPU time of one selection divided by the matrix's weights (CPU time, so that
  other processes on a shared machine do not distort it; ``wall_ns_per_weight`` is printed too);
- ``bytes_per_weight``: the peak resident memory the selection adds (its temporaries and the returned mask,
  the inputs excluded) divided by the weights, from the kernel's high-water mark (``VmHWM`` of
  ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each call, after ``malloc_trim``
  returned the heap's free memory), so torch's and numpy's allocations both count;
- ``traced_bytes_per_weight``: the peak of numpy's allocations as tracemalloc sees them (torch's own
  allocator is invisible to it, so the reference shows almost nothing there).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.aggregation import ComparisonGroup, global_mask  # noqa: E402
from pruning.masks import SparsityPattern  # noqa: E402
from tests.coordinator.reference_selection import reference_global_mask  # noqa: E402

SPARSITY = 0.5


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_resident_bytes(call: Callable[[], torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Return (bytes the call added to the resident high-water mark, its result)."""
    # Memory an earlier call freed can stay in the heap, resident, and be reused unseen: hand it back first.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    result = call()
    return (_status_kib("VmHWM") - before) * 1024, result


def _traced_peak(call: Callable[[], torch.Tensor]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _measure(call: Callable[[], torch.Tensor], weights: int) -> tuple[dict[str, float], torch.Tensor]:
    cpu, wall = time.process_time(), time.perf_counter()
    mask = call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    del mask
    resident, mask = _peak_resident_bytes(call)
    figures = {
        "ns_per_weight": cpu / weights * 1e9,
        "wall_ns_per_weight": wall / weights * 1e9,
        "bytes_per_weight": resident / weights,
        "traced_bytes_per_weight": _traced_peak(call) / weights,
    }
    return figures, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008")
    parser.add_argument("--votes", default="4,16,64", help="numbers of participants n")
    parser.add_argument("--groups", default="layer,row,2:4", help="layer, row, column, or N:M")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the reference's sorts use them)"
    )
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument(
        "--all-tied",
        action="store_true",
        help="every vote count n/2: the worst case, one boundary of all weights",
    )
    parser.add_argument("--no-reference", action="store_true", help="time the current selection only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows_out: list[dict[str, Any]] = []
    for shape_text in args.shapes.split(","):
        rows, columns = (int(part) for part in shape_text.split("x"))
        weights = rows * columns
        base = torch.randn(rows, columns, generator=torch.Generator().manual_seed(0)).to(
            getattr(torch, args.dtype)
        )
        for participants in (int(n) for n in args.votes.split(",")):
            if args.all_tied:
                generated = np.full((rows, columns), participants // 2)
            else:
                generated = np.random.default_rng(participants).binomial(
                    participants, 0.5, size=(rows, columns)
                )
            votes = torch.from_numpy(generated.astype(np.int32))
            del generated
            for group_text in args.groups.split(","):
                if ":" in group_text:
                    n, m = (int(part) for part in group_text.split(":"))
                    pattern, group = SparsityPattern(sparsity=n / m, n=n, m=m), ComparisonGroup.LAYER
                    reference_group = "layer"
                else:
                    n = m = 0
                    pattern, group = SparsityPattern(sparsity=SPARSITY), ComparisonGroup(group_text)
                    reference_group = group_text

                current = functools.partial(global_mask, votes, base, pattern=pattern, group=group)
                former = functools.partial(
                    reference_global_mask,
                    votes,
                    base,
                    sparsity=pattern.sparsity,
                    group=reference_group,
                    n=n,
                    m=m,
                )
                row: dict[str, Any] = {"shape": shape_text, "n": participants, "group": group_text}
                row["current"], mask = _measure(current, weights)
                if not args.no_reference:
                    row["former"], expected = _measure(former, weights)
                    if not torch.equal(mask, expected):
                        raise SystemExit(f"{shape_text} n={participants} {group_text}: the masks differ")
                    row["speedup"] = row["former"]["ns_per_weight"] / row["current"]["ns_per_weight"]
                del mask
                rows_out.append(row)
                if not args.json:
                    _print_row(row)
    if args.json:
        print(json.dumps(rows_out, indent=2))


def _print_row(row: dict[str, Any]) -> None:
    def figures(name: str) -> str:
        if name not in row:
            return ""
        f = row[name]
        return (
            f" | {name}: {f['ns_per_weight']:6.1f} ns/w (wall {f['wall_ns_per_weight']:6.1f}),"
            f" {f['bytes_per_weight']:5.2f} B/w resident, {f['traced_bytes_per_weight']:5.2f} B/w traced"
        )

    speedup = f" | x{row['speedup']:.1f}" if "speedup" in row else ""
    print(
        f"{row['shape']:>10} n={row['n']:<3} {row['group']:>6}{figures('current')}{figures('former')}{speedup}",
        flush=True,
    )


if __name__ == "__main__":
    main()
