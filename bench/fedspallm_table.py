"""SparseGPT federated on the demo model: centralized, FedPrLLM masks, FedSpaLLM, local-only, +/- privacy.

For each sparsity (default 50% and 70%) with 4 non-IID participants (topic shards of the demo corpus), each
holding the same local corpus of ``--documents`` documents (every 128-token window of each), prints the
perplexity on the union of the participants' held-out tails of:

- centralized SparseGPT (every participant's windows at one site, exact statistics),
- the FedPrLLM recipe with SparseGPT masks (keep-votes only, base weights under the voted mask),
- the FedSpaLLM recipe (SparseGPT masks and l0-norm averaged reconstructed weights),
- local-only SparseGPT (mean and worst participant),

without DP (``fedprune simulate --privacy off``: exact statistics, true votes, secure aggregation) and
with the privacy layers of ``fedprune simulate`` (record-level DP statistics at ``--target-epsilon``,
randomized response at ``--epsilon0``, secure aggregation). Every federated figure is one run of the
service's own coordinator and participants in one process (``fedprune.simulate.simulate_service``), so
FedSpaLLM's keep-votes and fixed-point weight updates are packed in each block's one session, as the service
sends them. Local-only is each site's own model from the FedSpaLLM run (pruned alone with its own
statistics, DP ones with privacy on; no votes to randomize).
The DP noise comes from the OS CSPRNG and cannot be seeded: each private figure is one run.

    python bench/fedspallm_table.py [--sparsities 0.5,0.7] [--documents 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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
    from coordinator.config import PrivacySection
    from fedprune.baselines import centralized_model, evaluate
    from fedprune.demo import locate_or_build, participant_document_files
    from fedprune.demo.packaged import open_packaged
    from fedprune.simulate import (
        SimulationSettings,
        load_participant_records,
        privacy_off,
        simulate_service,
    )
    from pruning.data import CalibrationSet, evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.recipes import Recipe

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

    started = time.perf_counter()
    dense = ppl(base)
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        pattern = parse_pattern("unstructured", sparsity)
        for privacy_on in (part == "on" for part in args.privacy.split(",")):
            privacy = (
                PrivacySection.model_validate(
                    {"epsilon0": args.epsilon0, "target_epsilon": args.target_epsilon}
                )
                if privacy_on
                else privacy_off()
            )
            row: dict[str, object] = {"sparsity": sparsity, "privacy": privacy_on}
            if not privacy_on:
                row["centralized"] = ppl(
                    centralized_model(base, sites, method=Method.SPARSEGPT, pattern=pattern, device=device)
                )
            for recipe in Recipe:
                settings = SimulationSettings(
                    method=Method.SPARSEGPT, pattern=pattern, seqlen=demo.seq_len, recipe=recipe
                )
                with tempfile.TemporaryDirectory(prefix="fedprune-bench-") as scratch:
                    result = simulate_service(
                        demo.model_dir,
                        files,
                        settings=settings,
                        privacy=privacy,
                        out=Path(scratch) / "out",
                        signing_key=Path(scratch) / "report.key",
                        device="cpu",
                        participant_samples=sites,
                        progress=False,
                        state_dir=Path(scratch) / "state",
                        keep_local_models=recipe is Recipe.FEDSPALLM,
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
