"""``fedprune simulate``: every participant and the aggregation in one process, no network.

With privacy on (the default) both recipes run the service's own coordinator and participants in
this process over an in-memory transport (``fedprune.inprocess``): record-level DP on the calibration
statistics (the record is one document; epsilon 8 at delta 1e-5 unless told otherwise), randomized response
on each participant's keep-vote bits, one secure-aggregation session per block, each site's signed
statement, and the coordinator's signed privacy report.
``--record-dp off`` keeps the statistics exact (no record-level guarantee, and the output says so);
``--privacy off`` is the research baseline and says so loudly.
With ``--baselines`` it also builds the dense, magnitude, centralized (all data at one site) and each
participant's local-only model, evaluates them all on ``--eval-data`` and prints the table.
``--recipe fedspallm`` (SparseGPT) also averages the kept weights over the participants that kept them
(l0-norm; each weight's keep-vote and fixed-point update packed in the block's one secure-aggregation
session) and, with ``--budgets``, lets each participant prune only as many blocks as it declares (its
``runtime.max_blocks``; every block still covered by t of them).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from fedprune.commands.common import add_device_argument, positive_int, quiet_transformers

logger = logging.getLogger(__name__)

PRIVACY_OFF_BANNER = (
    "WARNING: --privacy off: research baseline. Participants' raw keep-votes are summed in the clear, "
    "no randomized response, no secure aggregation, no privacy report. Do not run this on real data."
)
NO_RECORD_DP_BANNER = (
    "WARNING: --record-dp off: calibration statistics are exact. Randomized response and secure "
    "aggregation hide individual votes, but nothing bounds what the votes reveal about one document: "
    "this run makes no record-level privacy claim."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="federated pruning with every participant in one process",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--model", required=True, help="local base model directory")
    parser.add_argument(
        "--participant-data",
        action="append",
        required=True,
        metavar="FILE",
        help="one participant's calibration file (repeat once per participant)",
    )
    parser.add_argument("--sparsity", type=float, help="fraction of weights to prune, in (0, 1)")
    parser.add_argument(
        "--recipe",
        default="fedprllm",
        choices=("fedprllm", "fedspallm"),
        help="fedprllm: keep-votes only; fedspallm: SparseGPT masks and l0-norm averaged weights [fedprllm]",
    )
    parser.add_argument(
        "--method", help="magnitude, wanda or sparsegpt [wanda; sparsegpt with --recipe fedspallm]"
    )
    parser.add_argument(
        "--budgets",
        metavar="B1,B2,...",
        help="fedspallm: decoder blocks each participant can prune, one per --participant-data [every block]",
    )
    parser.add_argument("--pattern", default="unstructured", help="unstructured or N:M [unstructured]")
    parser.add_argument(
        "--group",
        default="layer",
        choices=("layer", "row", "column"),
        help="comparison group for the global selection [layer]",
    )
    parser.add_argument("--mode", default="one-shot", choices=("one-shot", "iterative"), help="[one-shot]")
    parser.add_argument("--weight-scaling", action="store_true", help="scale kept weights by keep_votes/n")
    parser.add_argument(
        "--nsamples",
        type=positive_int,
        default=128,
        help="calibration windows per participant with exact statistics (with record-level DP every "
        "document of the file is a candidate) [128]",
    )
    parser.add_argument("--seqlen", type=positive_int, help="tokens per sample [2048, capped at the context]")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing calibration windows [0]")
    add_device_argument(parser)
    privacy = parser.add_argument_group("privacy")
    privacy.add_argument("--privacy", choices=("on", "off"), default="on", help="privacy pipeline [on]")
    privacy.add_argument(
        "--epsilon0",
        type=float,
        default=4.0,
        help="randomized response on mask bits, per coordinate; 'inf' disables it [4]",
    )
    privacy.add_argument(
        "--record-dp",
        choices=("on", "off"),
        default="on",
        help="record-level DP on the calibration statistics, the record being one document [on]",
    )
    privacy.add_argument(
        "--sigma", type=float, help="record-level DP noise multiplier for calibration statistics"
    )
    privacy.add_argument(
        "--target-epsilon",
        type=float,
        help="record-level epsilon at --delta; the noise multiplier is derived from it [8]",
    )
    privacy.add_argument(
        "--max-windows-per-document",
        type=positive_int,
        help="with record-level DP, read at most this many windows of each document (evenly spread) [all]",
    )
    privacy.add_argument(
        "--signing-key",
        type=Path,
        help="long-term Ed25519 key that signs the privacy report, created (0600) if absent "
        "[$FEDPRUNE_SIGNING_KEY or ~/.config/fedprune/signing.key]",
    )
    privacy.add_argument("--delta", type=float, default=1e-5, help="delta of the reported guarantees [1e-5]")
    privacy.add_argument(
        "--sample-rate",
        type=float,
        default=1.0,
        help="Poisson sampling rate of documents per block, with record-level DP [1]",
    )
    privacy.add_argument(
        "--accountant-tolerance",
        type=float,
        default=0.1,
        help="largest relative RDP/PRV disagreement accepted; subsampled runs need about 0.2 [0.1]",
    )
    privacy.add_argument(
        "--threshold",
        type=int,
        help="secure-aggregation threshold t, above (n + colluders)/2; with --privacy off, fedspallm still covers "
        "every block with t participants [floor(2n/3)+1]",
    )
    privacy.add_argument(
        "--colluders",
        type=int,
        help="participants assumed to collude with the coordinator [the most the threshold tolerates]",
    )
    evaluation = parser.add_argument_group("baselines")
    evaluation.add_argument(
        "--baselines",
        action="store_true",
        help="also build dense/magnitude/centralized/local-only models and compare",
    )
    evaluation.add_argument("--eval-data", help="held-out evaluation file for --baselines")
    parser.add_argument("--out", required=True, help="output directory for the global checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run)


def _privacy_settings(args: argparse.Namespace) -> Any:
    from fedprune.errors import CommandError
    from fedprune.private_votes import PrivacySettings

    if (args.privacy == "off" or args.record_dp == "off") and (
        args.sigma is not None or args.target_epsilon is not None
    ):
        raise CommandError("--sigma/--target-epsilon need --privacy on and --record-dp on")
    if args.privacy == "off":
        return None
    return PrivacySettings(
        epsilon0=None if math.isinf(args.epsilon0) else args.epsilon0,
        record_level_dp=args.record_dp == "on",
        noise_multiplier=args.sigma,
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        sample_rate=args.sample_rate,
        threshold=args.threshold,
        colluders=args.colluders,
        accountant_tolerance=args.accountant_tolerance,
    )


def _budgets(args: argparse.Namespace) -> tuple[int, ...] | None:
    from fedprune.errors import CommandError

    if args.budgets is None:
        return None
    if args.recipe != "fedspallm":
        raise CommandError("--budgets needs --recipe fedspallm")
    try:
        budgets = tuple(int(part) for part in args.budgets.split(","))
    except ValueError:
        raise CommandError(f"--budgets must be comma-separated integers, got {args.budgets!r}") from None
    if len(budgets) != len(args.participant_data):
        raise CommandError(
            f"--budgets has {len(budgets)} entries for {len(args.participant_data)} --participant-data files"
        )
    return budgets


def _format_table(rows: list[tuple[str, float]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [f"{'model':<{width}}  perplexity"] + [f"{name:<{width}}  {ppl:10.3f}" for name, ppl in rows]
    )


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from coordinator.aggregation import ComparisonGroup
    from coordinator.assignment import AssignmentError
    from fedprune.errors import CommandError
    from fedprune.simulate import (
        Mode,
        PlainBlockSum,
        Recipe,
        SimulationSettings,
        centralized_model,
        evaluate,
        load_participant_records,
        load_participant_samples,
        magnitude_model,
        resolve_assignment,
        simulate,
        simulate_service,
    )
    from pruning.calibration import resolve_device
    from pruning.data import evaluation_stream
    from pruning.local import prune_model
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
    from pruning.sparsity import sparsity_table, write_sparsity_json

    recipe = Recipe(args.recipe)
    method = Method.parse(args.method or ("sparsegpt" if recipe is Recipe.FEDSPALLM else "wanda"))
    if recipe is Recipe.FEDSPALLM:
        if method is not Method.SPARSEGPT:
            raise CommandError("--recipe fedspallm needs --method sparsegpt")
        if args.mode != "one-shot" or args.weight_scaling:
            raise CommandError("--recipe fedspallm runs one-shot without --weight-scaling")
    budgets = _budgets(args)
    pattern = parse_pattern(args.pattern, args.sparsity)
    if args.baselines and not args.eval_data:
        raise CommandError("--baselines needs --eval-data FILE (held-out text to evaluate on)")
    privacy = _privacy_settings(args)
    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    check_model_dir(args.model)
    device = resolve_device(args.device)
    base = load_model(args.model)
    tokenizer = load_tokenizer(args.model)
    settings = SimulationSettings(
        method=method,
        pattern=pattern,
        group=ComparisonGroup(args.group),
        mode=Mode(args.mode),
        weight_scaling=args.weight_scaling,
        nsamples=args.nsamples,
        seqlen=resolve_seqlen(base, args.seqlen),
        seed=args.seed,
        recipe=recipe,
        budgets=budgets,
    )
    vocab = vocabulary_size(base)
    record_level = privacy is not None and privacy.private_statistics and method is not Method.MAGNITUDE
    samples: list[Any]
    if method is Method.MAGNITUDE:
        samples = [None] * len(args.participant_data)
    elif record_level:
        samples = load_participant_records(
            args.participant_data,
            tokenizer,
            seqlen=settings.seqlen,
            vocab_size=vocab,
            max_windows_per_record=args.max_windows_per_document,
        )
    else:
        samples = load_participant_samples(
            args.participant_data, tokenizer, settings=settings, vocab_size=vocab
        )
    for participant_samples in samples:
        if participant_samples is not None:
            check_samples_fit(base, participant_samples)
    eval_stream = evaluation_stream(args.eval_data, tokenizer, vocab_size=vocab) if args.baselines else None
    n = len(samples)
    # With privacy the service's own coordinator and participants run in this process; the research
    # baseline (--privacy off) runs the library path with plain sums.
    service = privacy is not None

    block_aggregator: Any = None
    assignment: Any = None
    if privacy is None:
        print(PRIVACY_OFF_BANNER, file=sys.stderr)
        if recipe is Recipe.FEDSPALLM:
            from privacy.secagg import default_threshold

            # Blocks are still covered by t participants, so that a budgeted run compares with the service's.
            if args.threshold is not None and not 1 <= args.threshold <= n:
                raise CommandError(f"--threshold must be in [1, {n}] (the participants), got {args.threshold}")
            block_aggregator = PlainBlockSum(coverage=args.threshold or default_threshold(n))
            try:
                assignment = resolve_assignment(
                    base, participants=n, budgets=budgets, coverage=block_aggregator.coverage
                )
            except AssignmentError as error:
                raise CommandError(f"--budgets: {error}") from None
    else:
        from fedprune.private_votes import threshold_and_colluders

        threshold, _ = threshold_and_colluders(privacy, participants=n)  # refused before any work
        if budgets is not None:
            # The coordinator assigns the blocks; checked here too, so that a budget too small is refused
            # before any participant computes anything.
            try:
                resolve_assignment(base, participants=n, budgets=budgets, coverage=threshold)
            except AssignmentError as error:
                raise CommandError(f"--budgets: {error}") from None
        if not privacy.private_statistics:
            print(NO_RECORD_DP_BANNER, file=sys.stderr)
        elif record_level:
            _print_outlook(privacy, base, samples, method=method, args=args)

    started = time.perf_counter()
    report_path = None
    result: Any = None
    if service:
        # The coordinator builds and checks the report (with every site's signed statement) before it
        # writes the checkpoint and sparsity.json, as the service does.
        key_path = _signing_key_path(args.signing_key)
        served = simulate_service(
            args.model,
            args.participant_data,
            settings=settings,
            privacy=privacy,
            out=out,
            signing_key=key_path,
            device=str(device),
            participant_samples=samples,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        elapsed = time.perf_counter() - started
        global_model, report_path = served.model, served.report
        _announce_report(report_path, key_path)
        table = sparsity_table(global_model)
        served_assignment = served.participants_per_block
    else:
        result = simulate(
            base,
            samples,
            settings=settings,
            device=device,
            block_aggregator=block_aggregator,
            assignment=assignment,
            keep_local_models=args.baselines and settings.mode is Mode.ONE_SHOT and budgets is None,
            progress=not args.no_progress,
        )
        elapsed = time.perf_counter() - started
        global_model = result.model
        served_assignment = (
            [len(members) for members in result.assignment.blocks] if result.assignment is not None else None
        )
        save_model(global_model, tokenizer, out)
        table = sparsity_table(global_model)
        write_sparsity_json(table, out / "sparsity.json")
    summary: dict[str, Any] = {
        "participants": n,
        "recipe": recipe.value,
        "method": method.value,
        "pattern": str(pattern),
        "group": args.group,
        "mode": args.mode,
        "weight_scaling": args.weight_scaling,
        "nsamples": None if record_level else args.nsamples,
        "seqlen": settings.seqlen,
        "privacy": privacy.describe() if privacy is not None else "off: research baseline, no privacy",
        "seconds": round(elapsed, 2),
        "sparsity": table["total"]["sparsity"],
    }
    if service:
        summary["transport"] = "in process: the service's coordinator and participants, no network"
    if recipe is Recipe.FEDSPALLM:
        summary["participants_per_block"] = served_assignment
        summary["budgets"] = list(budgets) if budgets is not None else None
        if result is not None:
            summary["clipped_weight_updates"] = result.clipped_updates
    print(
        f"federated {method.value} ({recipe.value}, {pattern}, {args.group} group, {args.mode}) over {n} participants "
        f"in {elapsed:.1f} s; total sparsity {table['total']['sparsity']:.4f}; saved to {out}"
    )
    if report_path is not None:
        summary["privacy_report"] = str(report_path)

    if eval_stream is not None:
        rows: list[tuple[str, float]] = []
        ppl = lambda model: evaluate(model, eval_stream, seqlen=settings.seqlen, device=device)  # noqa: E731
        rows.append(("dense", ppl(base)))
        rows.append(("magnitude", ppl(magnitude_model(base, pattern=pattern, device=device))))
        if method is not Method.MAGNITUDE:
            calibrated = [own for own in samples if own is not None]
            rows.append(
                ("centralized", ppl(centralized_model(base, calibrated, settings=settings, device=device)))
            )
        rows.append(
            (
                f"federated ({args.group}{', scaling' if args.weight_scaling else ''}, {args.mode})",
                ppl(global_model),
            )
        )
        local_models = result.local_models if result is not None else None
        if local_models is None:
            local_models = []
            for own in samples:
                model = copy.deepcopy(base)
                prune_model(model, own, method=method, pattern=pattern, device=device, progress=False)
                local_models.append(model)
        local = [ppl(model) for model in local_models]
        rows.append(("local-only (mean)", sum(local) / len(local)))
        rows.append(("local-only (worst)", max(local)))
        print(_format_table(rows))
        summary["perplexity"] = dict(rows)
        summary["local_only"] = local
    (out / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


def _print_outlook(
    privacy: Any, base: Any, samples: list[Any], *, method: Any, args: argparse.Namespace
) -> None:
    """Say before the run what the record-level noise will leave of each participant's statistics."""
    from participant.privacy import planned_noise_multiplier, released_dimension
    from privacy.calibration_dp import signal_outlook
    from pruning.adapters import decoder_blocks
    from pruning.statistics import StatisticKind

    blocks = decoder_blocks(base)
    sigma = planned_noise_multiplier(privacy.run_privacy(), blocks=len(blocks))
    assert sigma is not None  # the outlook is printed with record-level DP only
    dimension = released_dimension(blocks[0], gram=method.statistic is StatisticKind.GRAM)
    target = (
        f"epsilon {privacy.target_epsilon:g}" if privacy.target_epsilon is not None else f"sigma {sigma:.3g}"
    )
    print(
        f"record-level DP: one document is the unit; {target} at delta {privacy.delta:g} over {len(blocks)} "
        f"blocks -> noise multiplier {sigma:.3g}, sample rate {privacy.sample_rate:g}, {dimension} released "
        "coordinates per block"
    )
    for i, calibration in enumerate(samples):
        outlook = signal_outlook(
            records=calibration.records,
            noise_multiplier=sigma,
            sample_rate=privacy.sample_rate,
            dimension=dimension,
        )
        print(
            f"  participant {i}: {calibration.documents} document{'s' if calibration.documents != 1 else ''}, "
            f"{len(calibration.windows)} windows; "
            f"signal/noise {outlook.ratio:.2f}: {outlook.verdict}"
        )


def _signing_key_path(signing_key: Path | None) -> Path:
    """Return the long-term report key's path: --signing-key, $FEDPRUNE_SIGNING_KEY, or the user's default."""
    import os

    return signing_key or Path(
        os.environ.get("FEDPRUNE_SIGNING_KEY") or Path.home() / ".config" / "fedprune" / "signing.key"
    )


def _announce_report(path: Path, key_path: Path) -> None:
    """Say where the report is, which key signed it, and how an auditor verifies it."""
    from privacy.signing import grouped_fingerprint, load_or_create_signing_key

    fingerprint = grouped_fingerprint(load_or_create_signing_key(key_path))
    print(
        f"privacy report: {path}, signed by the key {key_path} (fingerprint {fingerprint}); auditors verify "
        f"with: fedprune audit verify {path} --trusted-key FINGERPRINT, the fingerprint obtained from you "
        "out of band"
    )
