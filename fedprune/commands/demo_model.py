"""``fedprune demo-model``: open the shipped demo model (or train the recipe locally) and say where it is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedprune.errors import CommandError


def register(subparsers: Any) -> None:
    """Add the ``demo-model`` parser to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo-model",
        help="open the shipped demo model (or train its recipe locally) and say where it is",
        description=(
            "Open the demo model shipped with fedprune (its SHA-256 fingerprints checked), a small Llama "
            "trained on the docstrings of the Python standard library, with non-IID participant shards and "
            "a held-out evaluation text; or, with --trained/--rebuild, the same recipe trained on this "
            "machine (minutes on CPU; not bit-for-bit the shipped one). Prints its directory, its files "
            "and its dense and unigram perplexity."
        ),
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache directory (default: $FEDPRUNE_CACHE, $XDG_CACHE_HOME/fedprune or ~/.cache/fedprune)",
    )
    parser.add_argument(
        "--trained",
        action="store_true",
        help="the recipe trained on this machine (built on first use) instead of the shipped model",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="train the recipe on this machine again (implies --trained)"
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="maintainers: write the trained build as shippable assets to DIR and print their SHA-256",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for training (default: all available cores)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Open the shipped demo model (or build/locate the trained one), print where it is; return the exit code."""
    from fedprune.demo import DEFAULT, build_demo_model, locate_or_build

    cache_dir: Path | None = args.cache_dir
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise CommandError(f"--cache-dir {cache_dir} exists and is not a directory")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    progress = not args.json
    try:
        if args.rebuild:
            demo = build_demo_model(DEFAULT, cache_dir, progress, num_threads=args.threads)
        elif args.trained or args.export is not None:
            demo = locate_or_build(DEFAULT, cache_dir=cache_dir, progress=progress, num_threads=args.threads)
        else:
            from fedprune.demo.packaged import open_packaged

            demo = open_packaged(cache_dir=cache_dir)
    except PermissionError as error:
        raise CommandError(f"cannot write the cache: {error}") from error
    if args.export is not None:
        from fedprune.demo.packaged import export_assets

        fingerprints = export_assets(demo, args.export)
        print(f"assets of {demo.directory} written to {args.export}; pin these in fedprune/demo/packaged.py:")
        print(json.dumps(fingerprints, indent=4, sort_keys=True))
        return 0
    summary = {
        "directory": str(demo.directory),
        "model": str(demo.model_dir),
        "shards": [str(path) for path in demo.shard_files],
        "heldout": [str(path) for path in demo.heldout_files],
        "eval": str(demo.eval_file),
        "centralized": str(demo.centralized_file),
        "seq_len": demo.seq_len,
        "dense_perplexity": demo.manifest["eval"]["dense_perplexity"],
        "unigram_perplexity": demo.manifest["eval"]["unigram_perplexity"],
        "training_seconds": demo.manifest["training"]["seconds"],
        "shipped": "packaged" in demo.manifest,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    shards = demo.manifest["shards"]
    print(demo.directory)
    print(f"  model        {demo.model_dir}  (Hugging Face checkpoint with tokenizer)")
    print(f"  shards       {len(shards)} files in {demo.directory / 'shards'}  (calibration text)")
    for shard in shards:
        topics = ", ".join(list(shard["topic_chars"])[:2])
        print(f"    {shard['file']}  {shard['train_tokens']:>7} tokens  {topics}")
    print(f"  eval         {demo.eval_file}  ({demo.manifest['eval']['tokens']} tokens, held-out tails)")
    print(f"  centralized  {demo.centralized_file}")
    print(
        f"  perplexity on eval: dense model {summary['dense_perplexity']:.2f}, "
        f"unigram {summary['unigram_perplexity']:.2f}"
    )
    return 0
