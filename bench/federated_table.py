"""Federated vs centralized vs local-only pruning on the embedded demo model (privacy off: the research table).

For each sparsity and federation shape (participants x calibration samples each, non-IID topic shards),
prints the perplexity on the union of the participants' held-out tails of: magnitude, centralized (all
samples at one site), federated with layer / row / column comparison, layer + weight scaling, iterative
(layer), and local-only (mean and worst participant). Perplexity is computed by ``pruning.perplexity``,
the function ``fedprune eval`` runs.

    python bench/federated_table.py [--sparsities 0.5,0.7,0.8] [--shapes 4x2,8x1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _shape(text: str) -> tuple[int, int]:
    participants, samples = text.lower().split("x")
    return int(participants), int(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.8")
    parser.add_argument("--shapes", default="4x2,8x1", help="participants x samples each, comma-separated")
    parser.add_argument("--seeds", type=int, default=1, help="calibration draws to average over [1]")
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from coordinator.aggregation import ComparisonGroup
    from fedprune.demo import locate_or_build, participant_files
    from fedprune.simulate import (
        Mode,
        SimulationSettings,
        centralized_model,
        global_model_from_votes,
        load_participant_samples,
        magnitude_model,
        simulate,
    )
    from pruning.data import evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.perplexity import perplexity

    device = torch.device("cpu")
    demo = locate_or_build(cache_dir=args.cache_dir)
    base = load_model(demo.model_dir)
    tokenizer = load_tokenizer(demo.model_dir)
    vocab = vocabulary_size(base)
    stream = evaluation_stream(demo.eval_file, tokenizer, vocab_size=vocab)

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, stream, seqlen=demo.seq_len, device=device, batch_size=16).perplexity

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
                result = simulate(
                    base, samples, settings=settings, device=device, keep_local_models=True, progress=False
                )
                local = [ppl(model) for model in result.local_models or []]
                measured = {
                    "centralized": ppl(centralized_model(base, samples, settings=settings, device=device)),
                    "federated-layer": ppl(result.model),
                }
                for name, group, scaling in (
                    ("federated-row", "row", False),
                    ("federated-column", "column", False),
                    ("federated-layer+scaling", "layer", True),
                ):
                    variant = SimulationSettings(
                        pattern=pattern,
                        group=ComparisonGroup(group),
                        weight_scaling=scaling,
                        nsamples=nsamples,
                        seqlen=demo.seq_len,
                        seed=seed,
                    )
                    measured[name] = ppl(
                        global_model_from_votes(
                            base, result.keep_votes, settings=variant, participants=participants
                        )
                    )
                iterative = SimulationSettings(
                    pattern=pattern, mode=Mode.ITERATIVE, nsamples=nsamples, seqlen=demo.seq_len, seed=seed
                )
                measured["iterative"] = ppl(
                    simulate(base, samples, settings=iterative, device=device, progress=False).model
                )
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
