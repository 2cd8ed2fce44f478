"""SparseGPT federated on the demo model: centralized, FedPrLLM masks, FedSpaLLM, local-only, +/- privacy.

For each sparsity (default 50% and 70%) with 4 non-IID participants (topic shards of the demo corpus), each
holding the same local corpus of ``--documents`` documents (every 128-token window of each), prints the
perplexity on the union of the participants' held-out tails of:

- centralized SparseGPT (every participant's windows at one site, exact statistics),
- the FedPrLLM recipe with SparseGPT masks (keep-votes only, base weights under the voted mask),
- the FedSpaLLM recipe (SparseGPT masks and l0-norm averaged reconstructed weights),
- local-only SparseGPT (mean and worst participant),

without privacy, and with the privacy layers of ``fedprune simulate`` (record-level DP statistics at
``--target-epsilon``, randomized response at ``--epsilon0``, secure aggregation; FedSpaLLM's keep-votes and
fixed-point weight updates packed in the block's one session, as the service sends them). Local-only with
privacy uses the same DP statistics (no votes to randomize).
The DP noise comes from the OS CSPRNG and cannot be seeded: each private figure is one run.

    python bench/fedspallm_table.py [--sparsities 0.5,0.7] [--documents 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument(
        "--documents", type=int, default=32, help="documents per site (its local corpus) [32]"
    )
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument("--epsilon0", type=float, default=4.0)
    parser.add_argument("--privacy", default="off,on", help="which halves of the table to run [off,on]")
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
    from fedprune.demo import locate_or_build, participant_document_files
    from fedprune.demo.packaged import open_packaged
    from fedprune.private_votes import (
        PrivacySettings,
        PrivateBlockAggregation,
        PrivateVoteAggregation,
        statistic_aggregator,
    )
    from fedprune.simulate import (
        Recipe,
        SimulationSettings,
        centralized_model,
        load_participant_records,
        simulate,
    )
    from privacy.ledger import PrivacyLedger
    from pruning.adapters import decoder_blocks
    from pruning.data import CalibrationSet, evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.perplexity import perplexity

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
    blocks = len(decoder_blocks(base))

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, stream, seqlen=demo.seq_len, device=device, batch_size=16).perplexity

    files = participant_document_files(demo, args.participants)
    sites: list[CalibrationSet] = []
    for whole in load_participant_records(files, tokenizer, seqlen=demo.seq_len, vocab_size=vocab):
        ids = sorted(set(whole.record_of_window))
        # the chosen documents, renumbered 0..D-1 in file order
        chosen = {ids[int(i * len(ids) / args.documents)]: i for i in range(args.documents)}
        kept = [
            (w, chosen[r]) for w, r in zip(whole.windows, whole.record_of_window, strict=True) if r in chosen
        ]
        sites.append(
            CalibrationSet(
                windows=tuple(w for w, _ in kept),
                record_of_window=tuple(r for _, r in kept),
                documents=args.documents,
            )
        )
    n = len(sites)

    started = time.perf_counter()
    dense = ppl(base)
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        pattern = parse_pattern("unstructured", sparsity)
        for privacy_on in (part == "on" for part in args.privacy.split(",")):
            privacy = (
                PrivacySettings(epsilon0=args.epsilon0, target_epsilon=args.target_epsilon)
                if privacy_on
                else None
            )
            row: dict[str, object] = {"sparsity": sparsity, "privacy": privacy_on}
            settings = {
                recipe: SimulationSettings(
                    method=Method.SPARSEGPT, pattern=pattern, seqlen=demo.seq_len, recipe=recipe
                )
                for recipe in Recipe
            }
            if not privacy_on:
                row["centralized"] = ppl(
                    centralized_model(base, sites, settings=settings[Recipe.FEDPRLLM], device=device)
                )
            for recipe in Recipe:
                ledger = PrivacyLedger()
                stats = None
                aggregator: object = None
                if privacy is not None:
                    aggregator = (
                        PrivateBlockAggregation(privacy, ledger, participants=n)
                        if recipe is Recipe.FEDSPALLM
                        else PrivateVoteAggregation(privacy, ledger, participants=n)
                    )

                    def stats(i: int, ledger: PrivacyLedger = ledger, privacy: PrivacySettings = privacy):  # noqa: ANN202
                        return statistic_aggregator(privacy, ledger, participant=i, blocks=blocks)

                result = simulate(
                    base,
                    sites,
                    settings=settings[recipe],
                    device=device,
                    vote_aggregator=aggregator if recipe is Recipe.FEDPRLLM else None,  # type: ignore[arg-type]
                    block_aggregator=aggregator if recipe is Recipe.FEDSPALLM else None,  # type: ignore[arg-type]
                    statistic_aggregators=stats,
                    keep_local_models=recipe is Recipe.FEDSPALLM,
                    progress=False,
                )
                row[recipe.value] = ppl(result.model)
                if recipe is Recipe.FEDSPALLM:
                    row["clipped_updates"] = result.clipped_updates
                    local = [ppl(model) for model in result.local_models or []]
                    row["local-only mean"] = sum(local) / len(local)
                    row["local-only worst"] = max(local)
                del result
            rows.append(row)
            if not args.json:
                print(json.dumps(row), file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    if args.json:
        print(
            json.dumps({"demo_model": str(demo.directory), "dense": dense, "seconds": elapsed, "rows": rows})
        )
        return 0
    columns = ["centralized", "fedprllm", "fedspallm", "local-only mean", "local-only worst"]
    print(f"demo model {demo.directory.name}: dense perplexity {dense:.2f}; {elapsed:.0f} s")
    print(
        "| sparsity | privacy | centralized SparseGPT | FedPrLLM (SparseGPT masks) | FedSpaLLM | local-only mean | local-only worst |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{row[c]:.2f}" if c in row else "-" for c in columns)
        label = (
            f"RR eps0={args.epsilon0:g} + DP eps={args.target_epsilon:g} + secagg"
            if row["privacy"]
            else "off"
        )
        print(f"| {row['sparsity']:.0%} | {label} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
