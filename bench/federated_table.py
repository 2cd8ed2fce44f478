"""Federated vs centralized vs local-only pruning on the demo model (privacy off: the research table).

For each sparsity and federation shape (participants x calibration samples each, non-IID topic shards),
prints the perplexity on the union of the participants' held-out tails of: magnitude, centralized (all
samples at one site), federated with layer / row / column comparison, layer + weight scaling, iterative
(layer), and local-only (mean and worst participant). Every federated figure comes from the service's own
coordinator and participants in one process (``fedprune.simulate.simulate_service``, ``--privacy off``:
true keep-votes summed by secure aggregation); row, column and weight scaling re-select from the keep-vote
sums the coordinator reported for the layer run (its ``BlockAggregated`` events) with the coordinator's
own selection functions, so the one-shot variants share one set of votes. Perplexity is computed by
``pruning.perplexity``, the function ``fedprune eval`` runs.

    python bench/federated_table.py [--sparsities 0.5,0.7,0.8] [--shapes 4x2,8x1] [--seeds 1] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _shape(text: str) -> tuple[int, int]:
    participants, samples = text.lower().split("x")
    return int(participants), int(samples)


def reselected_model(
    base: Any,
    keep_votes: dict[str, Any],
    *,
    participants: int,
    pattern: Any,
    group: Any,
    weight_scaling: bool,
) -> Any:
    """Return the global model the coordinator writes from these keep-vote sums under ``group``/``weight_scaling``.

    The selection and the scaling are the coordinator's own (``coordinator.aggregation``), in the order its
    ``_apply_block`` uses them; ``base`` is not modified.
    """
    from coordinator.aggregation import global_mask, scaled_weight
    from pruning.adapters import iter_prunable, qualified_name

    model = copy.deepcopy(base)
    for block, name, sublayer in iter_prunable(model):
        votes = keep_votes[qualified_name(block, name)]
        mask = global_mask(votes, sublayer.weight(), pattern=pattern, group=group)
        if weight_scaling:
            sublayer.set_weight(scaled_weight(sublayer.weight(), votes, participants))
        sublayer.apply_pruned(mask)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.8")
    parser.add_argument("--shapes", default="4x2,8x1", help="participants x samples each, comma-separated")
    parser.add_argument("--seeds", type=int, default=1, help="calibration draws to average over [1]")
    parser.add_argument("--cache-dir")
    parser.add_argument(
        "--trained-model",
        action="store_true",
        help="the build trained on this machine (fedprune demo-model --rebuild) instead of the shipped one",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from coordinator.aggregation import ComparisonGroup
    from fedprune.baselines import centralized_model, evaluate, magnitude_model
    from fedprune.demo import locate_or_build, participant_files
    from fedprune.demo.packaged import open_packaged
    from fedprune.simulate import SimulationSettings, load_participant_samples, privacy_off, simulate_service
    from pruning.data import evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.recipes import Mode

    device = torch.device("cpu")
    demo = (
        locate_or_build(cache_dir=args.cache_dir)
        if args.trained_model
        else open_packaged(cache_dir=args.cache_dir)
    )
    base = load_model(demo.model_dir)
    tokenizer = load_tokenizer(demo.model_dir)
    vocab = vocabulary_size(base)
    stream = evaluation_stream(demo.eval_file, tokenizer, vocab_size=vocab)

    def ppl(model: torch.nn.Module) -> float:
        return evaluate(model, stream, seqlen=demo.seq_len, device=device, batch_size=16)

    def federate(files: list[Path], samples: list[Any], settings: Any, scratch: Path, **extra: Any) -> Any:
        """Return the roles' run (privacy off) over these sites' samples."""
        run = scratch / f"run-{len(list(scratch.iterdir()))}"
        return simulate_service(
            demo.model_dir,
            files,
            settings=settings,
            privacy=privacy_off(),
            out=run / "out",
            signing_key=scratch / "report.key",
            device="cpu",
            participant_samples=samples,
            progress=False,
            state_dir=run / "state",
            **extra,
        )

    started = time.perf_counter()
    dense = ppl(base)
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        pattern = parse_pattern("unstructured", sparsity)
        magnitude = ppl(magnitude_model(base, pattern=pattern, device=device))
        for participants, nsamples in (_shape(s) for s in args.shapes.split(",")):
            files = participant_files(demo, participants)
            figures: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                settings = SimulationSettings(
                    pattern=pattern, nsamples=nsamples, seqlen=demo.seq_len, seed=seed
                )
                samples = load_participant_samples(files, tokenizer, settings=settings, vocab_size=vocab)
                with tempfile.TemporaryDirectory(prefix="fedprune-bench-") as scratch:
                    result = federate(files, samples, settings, Path(scratch), keep_local_models=True)
                    local = [ppl(model) for model in result.local_models or []]
                    measured = {
                        "centralized": ppl(
                            centralized_model(
                                base, samples, method=Method.WANDA, pattern=pattern, device=device
                            )
                        ),
                        "federated-layer": ppl(result.model),
                    }
                    for name, group, scaling in (
                        ("federated-row", "row", False),
                        ("federated-column", "column", False),
                        ("federated-layer+scaling", "layer", True),
                    ):
                        measured[name] = ppl(
                            reselected_model(
                                base,
                                result.keep_votes,
                                participants=participants,
                                pattern=pattern,
                                group=ComparisonGroup(group),
                                weight_scaling=scaling,
                            )
                        )
                    del result
                    iterative = SimulationSettings(
                        pattern=pattern,
                        mode=Mode.ITERATIVE,
                        nsamples=nsamples,
                        seqlen=demo.seq_len,
                        seed=seed,
                    )
                    measured["iterative"] = ppl(federate(files, samples, iterative, Path(scratch)).model)
                measured["local-only mean"] = sum(local) / len(local)
                measured["local-only worst"] = max(local)
                for key, value in measured.items():
                    figures.setdefault(key, []).append(value)
            row = {
                "sparsity": sparsity,
                "participants": participants,
                "samples_each": nsamples,
                "dense": dense,
                "magnitude": magnitude,
            }
            row.update({key: sum(values) / len(values) for key, values in figures.items()})
            rows.append(row)
            if not args.json:
                print(json.dumps(row), file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {"demo_model": str(demo.directory), "seeds": args.seeds, "seconds": elapsed, "rows": rows}
            )
        )
        return 0
    columns = [
        "magnitude",
        "centralized",
        "federated-layer",
        "federated-row",
        "federated-column",
        "federated-layer+scaling",
        "iterative",
        "local-only mean",
        "local-only worst",
    ]
    print(
        f"demo model {demo.directory.name}: dense perplexity {dense:.2f}; {args.seeds} calibration draw(s); "
        f"{elapsed:.0f} s"
    )
    print("| sparsity | sites x samples | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in rows:
        cells = " | ".join(f"{row[c]:.2f}" for c in columns)
        print(f"| {row['sparsity']:.0%} | {row['participants']} x {row['samples_each']} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
