"""Benchmark: randomized-response throughput on one core (bits per second), printed, never asserted.

Run: ``python bench/randomized_response.py [--bits N] [--repeats R]``. Pins torch/numpy/OpenSSL to one
thread by running in a single Python thread (numpy elementwise ops and AES-CTR are single-threaded).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from privacy.randomized_response import RandomizedResponse


def main() -> None:
    """Print the best-of-R throughput of RandomizedResponse.randomize over N random bits."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", type=int, default=200_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epsilon0", type=float, default=1.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    bits = np.frombuffer(os.urandom(args.bits // 8 + 1), dtype=np.uint8)
    bits = np.unpackbits(bits)[: args.bits].astype(np.bool_)
    rr = RandomizedResponse(epsilon0=args.epsilon0)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        noisy = rr.randomize(bits)
        best = min(best, time.perf_counter() - start)
    flipped = np.count_nonzero(noisy != bits) / bits.size
    print(f"randomized response, eps0={rr.epsilon0:.6f} (p={rr.flip_probability:.6f}), one core")
    print(
        f"bits: {args.bits:,}  best of {args.repeats}: {best:.3f} s  -> {args.bits / best / 1e6:,.0f} Mbit/s"
    )
    print(f"observed flip rate of last run: {flipped:.6f}")


if __name__ == "__main__":
    main()
