"""The privacy-utility curve on the embedded demo model: perplexity of private federated pruning.

Every federated figure is one run of the service's own coordinator and participants in one process
(``fedprune.simulate.simulate_service``) with that row's privacy parameters, the coordinator's
``[privacy]`` section: each sweep point is a separate run of the roles. Secure aggregation sums the votes
in every row. At one sparsity (default 70%) and for each number of participants (default 4 and 16,
non-IID topic shards), prints the perplexity on the union of held-out tails of:
- magnitude pruning (no data: the eps = 0 baseline every private result must beat),
- the federated model without DP (exact statistics, true votes: ``simulate --privacy off``),
- randomized response on mask bits at each eps0 (exact statistics),
- record-level DP calibration statistics at each noise multiplier sigma (a record is one document, a
  docstring, with all of its 128-token windows; every document of the site's corpus is a candidate per
  block, sample rate 1), with its record-level epsilon at delta,
- record-level DP at a target epsilon (default 8) for several local corpus sizes N with Poisson sampling
  rate q = records / N (amplification by subsampling): how many records a site needs,
- with ``--sections default``: both layers at once (randomized response at the first eps0 and record-level
  DP at the target epsilon), the service's default privacy.
The record-level epsilon of a row is the largest of the sites' guarantees in the run's signed report.

    python bench/privacy_table.py [--participants 4,16] [--repeats 3] [--random-ties] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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
        "--sections",
        default="baseline,rr,sigma,target",
        help="which parts of the table to run (also: default, both layers at the first --epsilon0 and "
        "--target-epsilon)",
    )
    parser.add_argument(
        "--random-ties",
        action="store_true",
        help="ablation: break equal vote counts at random instead of by larger |W| (the shipped rule)",
    )
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
    from fedprune.baselines import evaluate, magnitude_model
    from fedprune.demo import locate_or_build, participant_document_files
    from fedprune.demo.packaged import open_packaged
    from fedprune.simulate import SimulationSettings, load_participant_records, privacy_off, simulate_service
    from pruning.data import CalibrationSet, evaluation_stream
    from pruning.masks import parse_pattern
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size

    if args.random_ties:
        # Ablation only: the coordinator keeps, among equal vote counts, the larger |W|. Ranking by random
        # numbers instead of |W| gives the random tie-break of the reference code, to measure what the rule
        # buys. The coordinator's recipes select (coordinator.recipes), so that module's function is swapped.
        import coordinator.recipes as coordinator_recipes
        from coordinator.aggregation import global_mask as selected_by_magnitude

        def random_ties(keep_votes: torch.Tensor, base_weight: torch.Tensor, **options: Any) -> torch.Tensor:
            return selected_by_magnitude(keep_votes, torch.rand(base_weight.shape), **options)

        coordinator_recipes.global_mask = random_ties  # type: ignore[assignment]

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
    pattern = parse_pattern("unstructured", args.sparsity)

    def ppl(model: torch.nn.Module) -> float:
        return evaluate(model, stream, seqlen=demo.seq_len, device=device, batch_size=16)

    def run(files, nsamples: int, privacy: dict[str, Any] | None) -> tuple[list[float], float | None]:
        """Return the perplexities of --repeats runs (one run when nothing is random) and the record-level eps."""
        section = privacy_off() if privacy is None else PrivacySection.model_validate(privacy)
        noisy = section.randomized_response or section.record_level_dp
        outcomes = [run_once(files, nsamples, section) for _ in range(args.repeats if noisy else 1)]
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

    def run_once(files, nsamples: int, privacy: PrivacySection) -> tuple[float, float | None]:
        # Every row calibrates on the same local corpora (nsamples documents per site), exact or private.
        settings = SimulationSettings(pattern=pattern, seqlen=demo.seq_len, seed=0)
        with tempfile.TemporaryDirectory(prefix="fedprune-bench-") as scratch:
            result = simulate_service(
                demo.model_dir,
                files,
                settings=settings,
                privacy=privacy,
                out=Path(scratch) / "out",
                signing_key=Path(scratch) / "report.key",
                device="cpu",
                participant_samples=local_corpora(files, nsamples),
                progress=False,
                state_dir=Path(scratch) / "state",
            )
            report = json.loads(result.report.read_text(encoding="utf-8"))
        record = [g["epsilon"] for g in report["guarantees"] if g["layer"] == "calibration_statistics"]
        assert bool(record) == privacy.record_level_dp
        return ppl(result.model), max(record) if record else None

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
            # True votes, exact statistics, secure aggregation: also the former "RR eps0=inf + secagg" row.
            add("federated, no DP (secagg)", run(files, args.records, None), records=args.records)
        for eps0 in args.epsilon0.split(",") if "rr" in sections else []:
            add(
                f"RR eps0={eps0} + secagg",
                run(files, args.records, {"epsilon0": float(eps0), "record_level_dp": False}),
                records=args.records,
            )
        if "default" in sections:
            # Both layers at once, as the service runs by default: RR at the first --epsilon0 and
            # record-level DP at --target-epsilon over the --records documents (sample rate 1).
            eps0 = float(args.epsilon0.split(",")[0])
            add(
                f"RR eps0={eps0:g} + DP stats eps={args.target_epsilon:g} + secagg",
                run(
                    files,
                    args.records,
                    {"epsilon0": eps0, "target_epsilon": args.target_epsilon, "delta": args.delta},
                ),
                records=args.records,
                sample_rate=1.0,
            )
        for sigma in args.sigmas.split(",") if "sigma" in sections else []:
            privacy = {"randomized_response": False, "noise_multiplier": float(sigma), "delta": args.delta}
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
        baselines = {args.records} if "baseline" in sections else set()
        for corpus, rate in targets if "target" in sections else []:
            if corpus not in baselines:
                baselines.add(corpus)
                try:
                    add("federated, no DP (secagg)", run(files, corpus, None), records=corpus)
                except ValueError as error:  # a site with fewer than N documents: said below
                    print(f"N={corpus}: {error}", file=sys.stderr)
            privacy = {
                "randomized_response": False,
                "target_epsilon": args.target_epsilon,
                "delta": args.delta,
                "sample_rate": rate,
                "accountant_tolerance": 0.1 if rate == 1.0 else 0.3,
            }
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
