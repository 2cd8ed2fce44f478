"""``fedprune prune``: prune a local model with local calibration data (the single-site baseline)."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from fedprune.commands.common import add_device_argument, positive_int, quiet_transformers

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="prune a local model with local calibration data",
        description="Prune the decoder-block linear layers of a local causal LM and save the pruned checkpoint.",
    )
    parser.add_argument("--model", required=True, help="local model directory (Hugging Face checkpoint)")
    parser.add_argument(
        "--data", help="calibration data: .txt, or .jsonl with 'text' or 'input_ids' per line"
    )
    parser.add_argument("--sparsity", type=float, help="fraction of weights to prune, in (0, 1)")
    parser.add_argument("--method", default="wanda", help="magnitude, wanda, ria or sparsegpt [wanda]")
    parser.add_argument(
        "--pattern", default="unstructured", help="unstructured, or N:M such as 2:4 [unstructured]"
    )
    parser.add_argument(
        "--owl",
        action="store_true",
        help="OWL: give each decoder block its own sparsity from its share of outlier scores, keeping the "
        "model's average (unstructured only; needs --data)",
    )
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL's largest shift lambda [0.08]")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL's outlier multiple M [5]")
    parser.add_argument("--nsamples", type=positive_int, default=128, help="calibration samples [128]")
    parser.add_argument(
        "--seqlen", type=positive_int, help="tokens per sample [2048, capped at the model's context length]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing calibration windows [0]")
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="output directory for the pruned checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from pruning import distributed
    from pruning.calibration import resolve_device
    from pruning.data import calibration_samples
    from pruning.errors import PruningInputError
    from pruning.local import check_pattern_fits, prune_model
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import (
        check_model_dir,
        check_samples_fit,
        load_model,
        load_tokenizer,
        prepare_output_dir,
        resolve_seqlen,
        save_model,
        vocabulary_size,
    )
    from pruning.owl import OwlSettings, owl_allocation
    from pruning.sparsity import format_sparsity_table, sparsity_table, write_sparsity_json

    method = Method.parse(args.method)
    pattern = parse_pattern(args.pattern, args.sparsity)
    # Under torchrun (WORLD_SIZE > 1) every rank calibrates on its share of the samples; rank 0 writes.
    device = resolve_device(args.device)
    distributed.init_from_environment(device)
    device = distributed.local_device(device)
    leader = distributed.is_leader()
    out = prepare_output_dir(args.out, overwrite=args.overwrite) if leader else None
    check_model_dir(args.model)
    if method is not Method.MAGNITUDE and not args.data:
        raise PruningInputError(f"--method {method.value} needs calibration data (--data FILE)")
    owl = OwlSettings(multiple=args.owl_m, lam=args.owl_lambda) if args.owl else None
    if owl is not None:
        if pattern.is_n_m:
            raise PruningInputError(
                f"--owl gives blocks different unstructured sparsities; not for {pattern}"
            )
        if not args.data:
            raise PruningInputError("--owl needs calibration data (--data FILE) for the outlier ratios")
    model = load_model(args.model)
    check_pattern_fits(model, pattern)
    tokenizer = load_tokenizer(args.model)
    samples = None
    if method is not Method.MAGNITUDE or owl is not None:
        samples = calibration_samples(
            args.data,
            tokenizer,
            nsamples=args.nsamples,
            seqlen=resolve_seqlen(model, args.seqlen),
            seed=args.seed,
            vocab_size=vocabulary_size(model),
        )
        check_samples_fit(model, samples)
        logger.info(
            "calibration: %d samples of %d tokens from %s", samples.shape[0], samples.shape[1], args.data
        )
    started = time.perf_counter()
    allocation = None
    if owl is not None:
        assert samples is not None
        # Every rank computes the same allocation from the whole sample set (no collective needed).
        allocation = owl_allocation(model, samples, target=pattern.sparsity, device=device, settings=owl)
    prune_model(
        model,
        None if method is Method.MAGNITUDE or samples is None else distributed.shard_samples(samples),
        method=method,
        pattern=pattern,
        device=device,
        progress=not args.no_progress and leader,
        block_sparsities=None if allocation is None else allocation.sparsities,
    )
    elapsed = time.perf_counter() - started
    if out is None:  # another rank than 0: its copy is rank 0's, which writes it
        return 0
    save_model(model, tokenizer, out)
    table = sparsity_table(model)
    if allocation is not None:
        table["allocation"] = allocation.as_dict()
    write_sparsity_json(table, out / "sparsity.json")
    print(format_sparsity_table(table))
    if allocation is not None:
        print(
            "OWL per-block sparsity: "
            + ", ".join(f"{s:.4f}" for s in allocation.sparsities)
            + f" (lambda {allocation.settings.lam:g}, M {allocation.settings.multiple:g}; weighted mean {pattern.sparsity:g})"
        )
    print(f"pruned with {method.value} ({pattern}) in {elapsed:.1f} s on {device}; saved to {out}")
    return 0
