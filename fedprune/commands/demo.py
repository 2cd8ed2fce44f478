"""``fedprune demo``: private federated pruning on this machine, with the real coordinator and sites.

Opens the demo model shipped with fedprune (its SHA-256 checked), gives each of N sites its own documents
(non-IID topics of the Python standard library's docstrings), makes a throwaway CA, and runs the real
``fedprune coordinator`` and ``fedprune participant`` processes on loopback over mutual TLS with the full
privacy stack: record-level DP on each site's calibration statistics (one document the unit), randomized
response on the keep-votes, secure aggregation. ``--recipe fedprllm`` (the default) federates Wanda
keep-votes only; ``--recipe fedspallm`` federates SparseGPT keep-votes and averages the kept weights over
the sites that kept them (l0-norm), the weight updates secret-shared with the votes. Meanwhile it prunes the
baselines (dense, magnitude, and centralized and local-only with the recipe's method); then it scores every
model on held-out text, verifies the signed privacy report against the signing key's fingerprint, prints
the table and writes summary.json and summary.html.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from fedprune.commands.common import positive_int
from fedprune.errors import CommandError

EXIT_INTERRUPTED = 130
EXIT_RUN_FAILED = 1


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="private federated pruning end to end: real coordinator and sites on loopback",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--recipe",
        default="fedprllm",
        choices=("fedprllm", "fedspallm"),
        help="fedprllm: Wanda keep-votes only (the FedPrLLM recipe); fedspallm: SparseGPT masks plus "
        "l0-norm averaged kept weights (the FedSpaLLM recipe; under record-level DP at the demo's scale "
        "SparseGPT's Hessian is mostly noise, see docs/BENCHMARKS.md); the centralized and local-only "
        "baselines use the same method [fedprllm]",
    )
    parser.add_argument("--sites", type=positive_int, default=4, help="number of sites, 2 to 16 [4]")
    parser.add_argument(
        "--documents", type=positive_int, default=128, help="documents (records) per site [128]"
    )
    parser.add_argument("--sparsity", type=float, default=0.8, help="fraction of weights to prune [0.8]")
    parser.add_argument(
        "--target-epsilon",
        type=_positive_float,
        default=8.0,
        help="record-level epsilon per site at --delta, one document the unit [8]",
    )
    parser.add_argument("--delta", type=_positive_float, default=1e-5, help="delta of the guarantees [1e-5]")
    parser.add_argument(
        "--epsilon0", type=_positive_float, default=4.0, help="randomized response per keep-vote bit [4]"
    )
    parser.add_argument(
        "--eval-windows",
        type=positive_int,
        default=128,
        help="score every model on this many of the 343 held-out windows of 128 tokens, evenly spread; "
        "343 scores on all of them (slower) [128]",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("fedprune-demo"), help="output folder [./fedprune-demo]"
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="the coordinator's report key, created if absent [.fedprune-demo-signing.key beside --out]",
    )
    parser.add_argument(
        "--trained-model",
        action="store_true",
        help="use the model trained on this machine (fedprune demo-model --rebuild) instead of the shipped one",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where the demo model is unpacked [$FEDPRUNE_CACHE or ~/.cache/fedprune]",
    )
    parser.add_argument("--device", default="cpu", help="compute device of every process: cpu or cuda [cpu]")
    parser.add_argument(
        "--timeout", type=positive_int, default=900, help="give up when the run takes longer, seconds [900]"
    )
    parser.set_defaults(handler=run)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from fedprune.commands.common import quiet_transformers
    from fedprune.demo.pipeline import DemoSettings, describe_result, run_demo
    from fedprune.demo.service import ServiceError

    quiet_transformers()
    if not getattr(args, "verbose", False):
        # The demo prints its own progress lines; library INFO logs (certificates written, keys created)
        # would bury them. The processes' full logs are in the output folder.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        settings = DemoSettings(
            out=args.out,
            sites=args.sites,
            documents=args.documents,
            sparsity=args.sparsity,
            epsilon0=args.epsilon0,
            target_epsilon=args.target_epsilon,
            delta=args.delta,
            device=args.device,
            eval_windows=args.eval_windows,
            signing_key=args.signing_key,
            cache_dir=args.cache_dir,
            trained_model=args.trained_model,
            timeout_s=float(args.timeout),
            recipe=args.recipe,
        )
    except ValueError as error:
        raise CommandError(_as_flag(str(error))) from None
    # A supervisor's SIGTERM stops the demo like Ctrl-C: every process it started is stopped first. Ctrl-C
    # itself is armed too: a shell that starts a job in the background hands it SIGINT ignored.
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        summary = run_demo(settings, write=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(
            f"fedprune demo: interrupted; stopped every process it started. Partial output in {args.out} "
            f"(logs in {args.out / 'service' / 'logs'})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    except ServiceError as error:
        print(f"fedprune demo: the federated run failed: {error}", file=sys.stderr, flush=True)
        return EXIT_RUN_FAILED
    except ValueError as error:
        raise CommandError(_as_flag(str(error))) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_interrupt)
    print(describe_result(summary), flush=True)
    return 0


_FLAGS = {
    "recipe": "--recipe",
    "sites": "--sites",
    "documents": "--documents",
    "sparsity": "--sparsity",
    "epsilon0": "--epsilon0",
    "target_epsilon": "--target-epsilon",
    "delta": "--delta",
    "out": "--out",
    "max_windows": "--eval-windows",
}


def _as_flag(message: str) -> str:
    """Return a library message with its leading parameter name replaced by the command's flag."""
    name, separator, rest = message.partition(":")
    flag = _FLAGS.get(name.strip())
    return f"{flag}:{rest}" if flag and separator else message
