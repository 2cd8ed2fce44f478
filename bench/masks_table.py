"""Better masks: Wanda vs RIA votes, OWL, and the statistics recipe, without and with privacy.

For each pattern (default 50%, 2:4, 70%) prints the perplexity on the union of the sites' held-out tails of:
magnitude; centralized Wanda and RIA (all sites' documents at one place), with OWL per-block sparsity on
unstructured rows; local-only Wanda (mean over the sites, each alone with its documents), with OWL; FedPrLLM
votes with Wanda and RIA scorers (one-shot, layer group); the statistics recipe with Wanda and RIA
(iterative); on unstructured rows both again with federated OWL (the allocation from the sites' dense
statistics summed by secure aggregation before block 0). The "private" columns repeat the federated runs with record-level DP on the calibration
statistics at the coordinator's default target epsilon (8 at delta 1e-5, a record being one document, sample
rate 1) and, for the votes, randomized response at eps0 = 4 as well (the statistics recipe sends no votes to
randomize). Every federated figure is one run of the service's own coordinator and participants in one
process (``fedprune.simulate.simulate_service``); every site calibrates on the same ``--records`` documents
in every column. Private figures are one run each (CSPRNG noise cannot be seeded). ``--sparsegpt`` adds
centralized SparseGPT, the statistics recipe with SparseGPT (summed X^T X, the coordinator's reconstruction;
also private) and the FedSpaLLM recipe (SparseGPT at every site, averaged kept weights).

The model is the shipped demo model, or ``--model DIR``, any safetensors causal LM directory with its
tokenizer (e.g. the SmolLM2-135M directory ``bench/real_model.py`` converts into its cache): the sites and the
held-out text are then the demo's docstrings tokenized with that model's tokenizer, in windows of
``--seqlen`` tokens (default 128), scored on ``--eval-windows`` windows (default 16) spread over the
held-out union, as ``bench/real_model.py`` scores them.

    python bench/masks_table.py [--patterns 0.5,2:4,0.7] [--participants 4] [--records 32] [--json]
    python bench/masks_table.py --model ~/.cache/fedprune/real-model/smollm2-135m-instruct.q4_1-*-float32
"""

# ruff: noqa: B023 (each figure is a lambda that measure() calls at once, inside its loop iteration)

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patterns", default="0.5,2:4,0.7", help="sparsities or N:M patterns, comma-separated"
    )
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--records", type=int, default=32, help="documents per site [32]")
    parser.add_argument(
        "--epsilon0", type=float, default=4.0, help="randomized response of the private votes [4]"
    )
    parser.add_argument(
        "--target-epsilon",
        type=float,
        default=8.0,
        help="record-level DP target epsilon per document of the private columns [8, the coordinator's default]",
    )
    parser.add_argument("--no-private", action="store_true", help="skip the private columns")
    parser.add_argument(
        "--eval-windows", type=int, help="evaluate on N windows evenly spread over the held-out union [all]"
    )
    parser.add_argument("--cache-dir")
    parser.add_argument("--model", type=Path, help="a safetensors model directory [the demo model]")
    parser.add_argument("--seqlen", type=int, help="tokens per window [the demo's; 128 with --model]")
    parser.add_argument(
        "--sparsegpt",
        action="store_true",
        help="add centralized SparseGPT, the statistics recipe with SparseGPT and the FedSpaLLM recipe",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads [1]")
    parser.add_argument(
        "--only", help="measure only the columns this regular expression finds in their names (e.g. 'OWL')"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coordinator.config import PrivacySection
    from fedprune.baselines import centralized_model, evaluate, local_only_models, magnitude_model
    from fedprune.demo import participant_document_files
    from fedprune.demo.baselines import evaluation_text
    from fedprune.demo.packaged import open_packaged
    from fedprune.simulate import SimulationSettings, load_participant_records, privacy_off, simulate_service
    from pruning.data import CalibrationSet, evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.owl import OwlSettings
    from pruning.recipes import Mode, Recipe

    device = torch.device("cpu")
    only = re.compile(args.only) if args.only else None

    def wanted(column: str) -> bool:
        return only is None or only.search(column) is not None

    demo = open_packaged(cache_dir=args.cache_dir)
    model_dir = args.model if args.model is not None else demo.model_dir
    seqlen = args.seqlen or (128 if args.model is not None else demo.seq_len)
    base = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    vocab = vocabulary_size(base)
    if args.model is not None:
        text = evaluation_text(model_dir, demo.eval_file, seqlen=seqlen, max_windows=args.eval_windows or 16)
        stream, scored = text.stream, f"{text.windows} held-out windows of {seqlen} tokens"
    else:
        stream = evaluation_stream(demo.eval_file, tokenizer, vocab_size=vocab)
        if args.eval_windows is not None:
            # Evenly spread over the union of the sites' tails (every topic), each window whole.
            windows = stream.numel() // seqlen
            chosen = [int(i * windows / args.eval_windows) for i in range(min(args.eval_windows, windows))]
            stream = torch.cat([stream[i * seqlen : (i + 1) * seqlen] for i in chosen])
        scored = f"{stream.numel():,} held-out tokens"
    files = participant_document_files(demo, args.participants)

    sites: list[CalibrationSet] = []
    for whole in load_participant_records(files, tokenizer, seqlen=seqlen, vocab_size=vocab):
        ids = sorted(set(whole.record_of_window))
        if len(ids) < args.records:
            raise ValueError(f"a site holds {len(ids)} documents, fewer than {args.records}")
        # Renumbered 0..records-1 (in file order), so that pooled sites' record ids stay distinct.
        chosen = {ids[int(i * len(ids) / args.records)]: i for i in range(args.records)}
        kept = [
            (w, chosen[r]) for w, r in zip(whole.windows, whole.record_of_window, strict=True) if r in chosen
        ]
        sites.append(
            CalibrationSet(
                windows=tuple(w for w, _ in kept),
                record_of_window=tuple(r for _, r in kept),
                documents=args.records,
            )
        )

    def ppl(model: torch.nn.Module) -> float:
        return evaluate(model, stream, seqlen=seqlen, device=device, batch_size=16)

    def federated(settings: Any, privacy: PrivacySection) -> Any:
        with tempfile.TemporaryDirectory(prefix="fedprune-bench-") as scratch:
            result = simulate_service(
                model_dir,
                files,
                settings=settings,
                privacy=privacy,
                out=Path(scratch) / "out",
                signing_key=Path(scratch) / "report.key",
                device="cpu",
                participant_samples=sites,
                progress=False,
                state_dir=Path(scratch) / "state",
            )
            return result.model

    private_votes = PrivacySection.model_validate(
        {"epsilon0": args.epsilon0, "target_epsilon": args.target_epsilon}
    )
    private_statistics = PrivacySection.model_validate(
        {"randomized_response": False, "target_epsilon": args.target_epsilon}
    )
    started = time.perf_counter()
    dense = ppl(base)
    rows = []
    for text in args.patterns.split(","):
        pattern = parse_pattern(text, None) if ":" in text else parse_pattern("unstructured", float(text))
        owl = None if pattern.is_n_m else OwlSettings()
        row: dict[str, Any] = {"pattern": str(pattern), "dense": dense}

        def measure(column: str, model: Callable[[], Any], row: dict[str, Any] = row) -> None:
            # Each figure is printed as it is measured: a long table still shows what it has.
            if not wanted(column):
                return
            row[column] = ppl(model())
            print(json.dumps({"pattern": row["pattern"], column: row[column]}), file=sys.stderr, flush=True)

        def mean_of(column: str, models: Callable[[], list[Any]], row: dict[str, Any] = row) -> None:
            if not wanted(column):
                return
            computed = models()
            row[column] = sum(ppl(m) for m in computed) / len(computed)
            print(json.dumps({"pattern": row["pattern"], column: row[column]}), file=sys.stderr, flush=True)

        def votes_settings(method: Method, owl: OwlSettings | None = None) -> SimulationSettings:
            return SimulationSettings(method=method, pattern=pattern, seqlen=seqlen, owl=owl)

        def statistics_settings(method: Method, owl: OwlSettings | None = None) -> SimulationSettings:
            return SimulationSettings(
                method=method,
                pattern=pattern,
                seqlen=seqlen,
                mode=Mode.ITERATIVE,
                recipe=Recipe.STATISTICS,
                owl=owl,
            )

        measure("magnitude", lambda: magnitude_model(base, pattern=pattern, device=device))
        for method in (Method.WANDA, Method.RIA):
            votes, statistics = votes_settings(method), statistics_settings(method)
            measure(
                f"centralized {method.value}",
                lambda: centralized_model(base, sites, method=method, pattern=pattern, device=device),
            )
            measure(f"stats {method.value}", lambda: federated(statistics, privacy_off()))
            measure(f"votes {method.value}", lambda: federated(votes, privacy_off()))
        mean_of(
            "local-only wanda",
            lambda: local_only_models(base, sites, method=Method.WANDA, pattern=pattern, device=device),
        )
        if args.sparsegpt:
            measure(
                "centralized sparsegpt",
                lambda: centralized_model(
                    base, sites, method=Method.SPARSEGPT, pattern=pattern, device=device
                ),
            )
            measure(
                "stats sparsegpt", lambda: federated(statistics_settings(Method.SPARSEGPT), privacy_off())
            )
            fedspallm = SimulationSettings(
                method=Method.SPARSEGPT, pattern=pattern, seqlen=seqlen, recipe=Recipe.FEDSPALLM
            )
            measure("fedspallm", lambda: federated(fedspallm, privacy_off()))
        if owl is not None:
            for method in (Method.WANDA, Method.RIA):
                measure(
                    f"centralized {method.value}+OWL",
                    lambda: centralized_model(
                        base, sites, method=method, pattern=pattern, device=device, owl=owl
                    ),
                )
            mean_of(
                "local-only wanda+OWL",
                lambda: local_only_models(
                    base, sites, method=Method.WANDA, pattern=pattern, device=device, owl=owl
                ),
            )
            # Federated OWL: the allocation from the sites' dense statistics summed by secure aggregation.
            for method in (Method.WANDA, Method.RIA):
                measure(
                    f"stats {method.value}+OWL",
                    lambda: federated(statistics_settings(method, owl), privacy_off()),
                )
                measure(
                    f"votes {method.value}+OWL",
                    lambda: federated(votes_settings(method, owl), privacy_off()),
                )
        if not args.no_private:
            for method in (Method.WANDA, Method.RIA):
                votes, statistics = votes_settings(method), statistics_settings(method)
                measure(f"private stats {method.value}", lambda: federated(statistics, private_statistics))
                measure(f"private votes {method.value}", lambda: federated(votes, private_votes))
            if args.sparsegpt:
                measure(
                    "private stats sparsegpt",
                    lambda: federated(statistics_settings(Method.SPARSEGPT), private_statistics),
                )
            if owl is not None:
                # One more DP release per block (the allocation's), calibrated into the same epsilon.
                measure(
                    "private votes wanda+OWL",
                    lambda: federated(votes_settings(Method.WANDA, owl), private_votes),
                )
        rows.append(row)
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"model": str(model_dir), "seconds": elapsed, "rows": rows}))
        return 0
    columns = [c for c in rows[0] if c not in ("pattern", "dense")]
    for row in rows[1:]:
        columns += [c for c in row if c not in columns and c not in ("pattern", "dense")]
    print(
        f"{Path(model_dir).name}: dense perplexity {dense:.2f}; {args.participants} sites x "
        f"{args.records} documents; evaluated on {scored}; {elapsed:.0f} s"
    )
    print("| column | " + " | ".join(row["pattern"] for row in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for column in columns:
        cells = " | ".join(f"{row[column]:.2f}" if column in row else "n/a" for row in rows)
        print(f"| {column} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
