"""The privacy-utility curve on the embedded demo model: perplexity of private federated pruning.

At one sparsity (default 70%) and for each number of participants (default 4 and 16, non-IID topic
shards), prints the perplexity on the union of held-out tails of:
- magnitude pruning (no data: the eps = 0 baseline every private result must beat),
- the non-private federated model (exact statistics, true votes),
- randomized response on mask bits at each eps0 (with secure aggregation, exact statistics),
- record-level DP calibration statistics at each noise multiplier sigma (a record is one document, a
  docstring, with all of its 128-token windows; every document of the site's corpus is a candidate per
  block, sample rate 1), with its record-level epsilon at delta,
- record-level DP at a target epsilon (default 8) for several local corpus sizes N with Poisson sampling
  rate q = records / N (amplification by subsampling): how many records a site needs.

    python bench/privacy_table.py [--participants 4,16] [--repeats 3] [--random-ties] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--participants", default="4,16")
    parser.add_argument("--records", type=int, default=32, help="documents per site (its local corpus) [32]")
    parser.add_argument("--epsilon0", default="8,4,2,1")
    parser.add_argument("--sigmas", default="0.5,1,2,4,8")
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument(
        "--corpus-sizes", default="32,128,512", help="local corpus sizes N for the target run"
    )
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per noisy setting (CSPRNG noise cannot be seeded) [1]"
    )
    parser.add_argument(
        "--sections", default="baseline,rr,sigma,target", help="which parts of the table to run"
    )
    parser.add_argument(
        "--random-ties",
        action="store_true",
        help="ablation: break equal vote counts at random instead of by larger |W| (the shipped rule)",
    )
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from fedprune.demo import locate_or_build, participant_document_files
    from fedprune.private_votes import PrivacySettings, PrivateVoteAggregation, statistic_aggregator
    from fedprune.simulate import SimulationSettings, load_participant_records, magnitude_model, simulate
    from privacy.accounting import gaussian_epsilon
    from privacy.ledger import Mechanism, PrivacyLedger
    from privacy.report import gaussian_releases
    from pruning.adapters import decoder_blocks
    from pruning.data import CalibrationSet, evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.perplexity import perplexity

    if args.random_ties:
        # Ablation only: the coordinator keeps, among equal vote counts, the larger |W|. Ranking by random
        # numbers instead of |W| gives the random tie-break of the reference code, to measure what the rule buys.
        import coordinator.aggregation as aggregation
        import fedprune.simulate as simulation

        selected_by_magnitude = aggregation.global_mask

        def random_ties(keep_votes: torch.Tensor, base_weight: torch.Tensor, **options: Any) -> torch.Tensor:
            return selected_by_magnitude(keep_votes, torch.rand(base_weight.shape), **options)

        simulation.global_mask = random_ties  # type: ignore[assignment]

    device = torch.device("cpu")
    demo = locate_or_build(cache_dir=args.cache_dir)
    base = load_model(demo.model_dir)
    tokenizer = load_tokenizer(demo.model_dir)
    vocab = vocabulary_size(base)
    blocks = len(decoder_blocks(base))
    stream = evaluation_stream(demo.eval_file, tokenizer, vocab_size=vocab)
    pattern = parse_pattern("unstructured", args.sparsity)

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, stream, seqlen=demo.seq_len, device=device, batch_size=16).perplexity

    def run(files, nsamples: int, privacy: PrivacySettings | None) -> tuple[list[float], float | None]:
        """Return the perplexities of --repeats runs (one run when nothing is random) and the record-level eps."""
        noisy = privacy is not None and (privacy.epsilon0 is not None or privacy.private_statistics)
        outcomes = [run_once(files, nsamples, privacy) for _ in range(args.repeats if noisy else 1)]
        return [value for value, _ in outcomes], outcomes[0][1]

    corpora: dict[tuple[str, ...], list[CalibrationSet]] = {}

    def local_corpora(files, documents: int) -> list[CalibrationSet]:
        """Return each site's local corpus: ``documents`` of its documents, evenly spread over its file."""
        key = tuple(map(str, files))
        if key not in corpora:
            corpora[key] = load_participant_records(files, tokenizer, seqlen=demo.seq_len, vocab_size=vocab)
        sites = []
        for whole in corpora[key]:
            ids = sorted(set(whole.record_of_window))
            if len(ids) < documents:
                raise ValueError(f"a site holds {len(ids)} documents, fewer than {documents}")
            chosen = {ids[int(i * len(ids) / documents)] for i in range(documents)}
            kept = [(w, r) for w, r in zip(whole.windows, whole.record_of_window, strict=True) if r in chosen]
            sites.append(
                CalibrationSet(
                    windows=tuple(w for w, _ in kept),
                    record_of_window=tuple(r for _, r in kept),
                    documents=documents,
                )
            )
        return sites

    def run_once(files, nsamples: int, privacy: PrivacySettings | None) -> tuple[float, float | None]:
        # Every row calibrates on the same local corpora (nsamples documents per site), exact or private.
        settings = SimulationSettings(pattern=pattern, seqlen=demo.seq_len, seed=0)
        samples = local_corpora(files, nsamples)
        ledger = PrivacyLedger()
        votes = PrivateVoteAggregation(privacy, ledger, participants=len(files)) if privacy else None
        stats = None
        if privacy is not None and privacy.private_statistics:

            def stats(i: int):  # noqa: ANN202
                return statistic_aggregator(privacy, ledger, participant=i, blocks=blocks)

        result = simulate(
            base,
            samples,
            settings=settings,
            device=device,
            vote_aggregator=votes,
            statistic_aggregators=stats,
            progress=False,
        )
        record_epsilon = None
        releases = gaussian_releases(ledger.entries)
        if releases:
            record_epsilon = max(
                gaussian_epsilon(r, delta=args.delta, tolerance=privacy.accountant_tolerance).epsilon  # type: ignore[union-attr]
                for r in releases.values()
            )
        assert privacy is None or not privacy.private_statistics or ledger.events(Mechanism.GAUSSIAN)
        return ppl(result.model), record_epsilon

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    magnitude = ppl(magnitude_model(base, pattern=pattern, device=device))
    for participants in (int(p) for p in args.participants.split(",")):
        files = participant_document_files(demo, participants)

        def add(
            label: str,
            value: tuple[list[float], float | None],
            participants: int = participants,
            **extra: object,
        ) -> None:
            runs = value[0]
            row = {
                "participants": participants,
                "setting": label,
                "perplexity": sum(runs) / len(runs),
                "runs": runs,
                "record_epsilon": value[1],
                **extra,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

        sections = set(args.sections.split(","))
        add("magnitude (eps = 0)", ([magnitude], 0.0))
        if "baseline" in sections:
            add("federated, no privacy", run(files, args.records, None), records=args.records)
        for eps0 in args.epsilon0.split(",") if "rr" in sections else []:
            add(
                f"RR eps0={eps0} + secagg",
                run(files, args.records, PrivacySettings(epsilon0=float(eps0), record_level_dp=False)),
                records=args.records,
            )
        if "rr" in sections:
            add(
                "RR eps0=inf + secagg",
                run(files, args.records, PrivacySettings(epsilon0=None, record_level_dp=False)),
                records=args.records,
            )
        for sigma in args.sigmas.split(",") if "sigma" in sections else []:
            privacy = PrivacySettings(epsilon0=None, noise_multiplier=float(sigma), delta=args.delta)
            add(
                f"DP stats sigma={sigma}",
                run(files, args.records, privacy),
                records=args.records,
                sample_rate=1.0,
            )
        # Each local corpus of N records either Poisson-subsampled to about --records per block
        # (amplification) or used whole (q = 1, more signal against the same noise).
        targets = [
            (corpus, rate)
            for corpus in (int(n) for n in args.corpus_sizes.split(","))
            for rate in sorted({min(1.0, args.records / corpus), 1.0})
        ]
        for corpus, rate in targets if "target" in sections else []:
            privacy = PrivacySettings(
                epsilon0=None,
                target_epsilon=args.target_epsilon,
                delta=args.delta,
                sample_rate=rate,
                accountant_tolerance=0.1 if rate == 1.0 else 0.3,
            )
            try:
                value = run(files, corpus, privacy)
            except Exception as error:  # a site with fewer than N documents: say so in the table
                print(f"N={corpus}: {error}", file=sys.stderr)
                continue
            add(
                f"DP stats eps={args.target_epsilon:g}, N={corpus}, q={rate:.3g}",
                value,
                records=corpus,
                sample_rate=rate,
            )
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"sparsity": args.sparsity, "delta": args.delta, "seconds": elapsed, "rows": rows}))
        return 0
    print(f"demo model, {args.sparsity:.0%} unstructured Wanda, delta {args.delta:g}, {elapsed:.0f} s")
    print("| sites | setting | records/site | record-level eps | perplexity (mean; min-max over runs) |")
    print("|---|---|---|---|---|")
    for row in rows:
        eps = "-" if row["record_epsilon"] is None else f"{row['record_epsilon']:.2f}"
        runs = row["runs"]
        spread = f"; {min(runs):.2f}-{max(runs):.2f} ({len(runs)} runs)" if len(runs) > 1 else ""
        print(
            f"| {row['participants']} | {row['setting']} | {row.get('records', '-')} | {eps} "
            f"| {row['perplexity']:.2f}{spread} |"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
