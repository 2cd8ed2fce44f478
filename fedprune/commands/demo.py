"""``fedprune demo``: the whole pipeline on one machine with the embedded demo model.

Builds (or finds in the cache) the small Llama the project trains on the Python standard library's
docstrings, splits its corpus into non-IID participant shards (one document per docstring), runs private
federated Wanda pruning (record-level DP statistics at a stated epsilon, randomized response, secure
aggregation, signed privacy report), compares it with the dense, magnitude, centralized and local-only
models on the union of the participants' held-out text, and verifies the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedprune.commands.common import add_device_argument, positive_int


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run private federated pruning end to end on the embedded demo model",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--participants", type=positive_int, default=4, help="number of sites [4]")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of weights to prune [0.5]")
    parser.add_argument(
        "--target-epsilon",
        default="8",
        help="record-level epsilon per site at delta 1e-5, one document the unit [8]",
    )
    parser.add_argument("--epsilon0", default="4", help="randomized response per coordinate [4]")
    parser.add_argument(
        "--recipe",
        default="fedprllm",
        choices=("fedprllm", "fedspallm"),
        help="fedprllm (Wanda keep-votes) or fedspallm (SparseGPT, averaged weights) [fedprllm]",
    )
    parser.add_argument(
        "--cache-dir", help="where the demo model is cached [$FEDPRUNE_CACHE or ~/.cache/fedprune]"
    )
    parser.add_argument("--out", default="fedprune-demo", help="output directory [./fedprune-demo]")
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="the demo's long-term report key [<out>/../.fedprune-demo-signing.key]",
    )
    add_device_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedprune.cli import main
    from fedprune.demo import locate_or_build, participant_document_files

    if args.signing_key is None:
        # Outside the output folder: the key that signs a report never ships beside it.
        args.signing_key = Path(args.out).resolve().parent / ".fedprune-demo-signing.key"
    demo = locate_or_build(cache_dir=args.cache_dir)
    print(f"demo model: {demo.model_dir}")
    sites = participant_document_files(demo, args.participants)
    out = Path(args.out)
    command = [
        "simulate",
        "--model",
        str(demo.model_dir),
        "--sparsity",
        str(args.sparsity),
        "--target-epsilon",
        args.target_epsilon,
        "--seqlen",
        str(demo.seq_len),
        "--epsilon0",
        args.epsilon0,
        "--recipe",
        args.recipe,
        "--device",
        args.device,
        "--baselines",
        "--eval-data",
        str(demo.eval_file),
        "--out",
        str(out),
        "--overwrite",
        "--signing-key",
        str(args.signing_key),
    ]
    for site in sites:
        command += ["--participant-data", str(site)]
    print("running: fedprune " + " ".join(command))
    code = main(command)
    if code:
        return code
    from privacy.signing import key_fingerprint, load_or_create_signing_key

    report = out / "privacy_report.json"
    fingerprint = key_fingerprint(load_or_create_signing_key(args.signing_key))
    return main(["audit", "verify", str(report), "--trusted-key", fingerprint])
