"""``fedprune eval``: perplexity of a local model on a local data file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedprune.commands.common import add_device_argument, positive_int, quiet_transformers


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity of a local model on a data file",
        description="Perplexity over non-overlapping windows (exp of the mean next-token NLL).",
    )
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument("--data", required=True, help="evaluation data: .txt or .jsonl")
    parser.add_argument(
        "--seqlen", type=positive_int, help="window length [2048, capped at the model's context length]"
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass [1]")
    add_device_argument(parser)
    parser.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from pruning.calibration import resolve_device
    from pruning.data import evaluation_stream
    from pruning.model_io import load_model, load_tokenizer, resolve_seqlen, vocabulary_size
    from pruning.perplexity import perplexity

    device = resolve_device(args.device)
    model = load_model(args.model)
    stream = evaluation_stream(args.data, load_tokenizer(args.model), vocab_size=vocabulary_size(model))
    result = perplexity(
        model, stream, seqlen=resolve_seqlen(model, args.seqlen), device=device, batch_size=args.batch_size
    )
    print(
        f"perplexity {result.perplexity:.4f} (mean NLL {result.mean_nll:.4f} over {result.predicted_tokens} "
        f"tokens in {result.windows} windows of {result.seqlen})"
    )
    if args.json_out:
        record = {"model": str(args.model), "data": str(args.data), **result.__dict__}
        Path(args.json_out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0
