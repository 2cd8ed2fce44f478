"""``fedprune simulate``: every participant and the coordinator in one process, no network.

Every run, privacy on or off, either recipe, either mode, runs the service's own coordinator and
participants in this process over an in-memory transport (``fedprune.inprocess``): one secure-aggregation
session per block, each site's signed statement and the coordinator's signed privacy report. With privacy
on (the default) the sites add record-level DP to their calibration statistics (the record is one
document; epsilon 8 at delta 1e-5 unless told otherwise) and randomized response to their keep-vote bits.
``--record-dp off`` keeps the statistics exact (no record-level guarantee, and the output says so);
``--privacy off`` also sends true keep-votes (no randomized response): the research baseline, still summed
by secure aggregation (exactly) and still reported, with a report that states no DP guarantee; it says so
loudly.
With ``--baselines`` it also builds the dense, magnitude, centralized (all data at one site) and each
participant's local-only model and, when privacy is on, runs the same federation without privacy
(``privacy_off``) on the same data, evaluates them all on ``--eval-data`` and prints the table: the
private and the no-privacy federated rows side by side.
``--recipe fedspallm`` (SparseGPT) also averages the kept weights over the participants that kept them
(l0-norm; each weight's keep-vote and fixed-point update packed in the block's one secure-aggregation
session) and, with ``--budgets``, lets each participant prune only as many blocks as it declares (its
``runtime.max_blocks``; every block still covered by t of them).
"""

from __future__ import annotations

import argparse
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
    "WARNING: --privacy off: research baseline with NO differential-privacy guarantee. OFF: randomized "
    "response (each site's true keep-votes enter the sum) and record-level DP (exact calibration statistics: "
    "nothing bounds what the mask reveals about one document). STILL ON: secure aggregation (the coordinator "
    "learns each block's exact vote sums, not one site's votes) and the signed privacy report, which states "
    "that the run makes no DP claim. Do not run this on data that needs protecting."
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
        choices=("fedprllm", "fedspallm", "stats"),
        help="fedprllm: keep-votes only; fedspallm: SparseGPT masks and l0-norm averaged weights; stats: "
        "summed calibration statistics, pruned at the coordinator (needs --mode iterative and "
        "--epsilon0 inf) [fedprllm]",
    )
    parser.add_argument(
        "--method", help="magnitude, wanda, ria or sparsegpt [wanda; sparsegpt with --recipe fedspallm]"
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
        "--owl",
        action="store_true",
        help="OWL: each block's own sparsity from its share of outlier scores, allocated from the sites' "
        "summed statistics of the dense model (one more secure-aggregation session and one more release "
        "of each site's statistics per block); unstructured patterns, recipes fedprllm and stats",
    )
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL's largest shift lambda [0.08]")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL's outlier multiple M [5]")
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
    privacy.add_argument(
        "--privacy",
        choices=("on", "off"),
        default="on",
        help="on: record-level DP and randomized response; off: neither (no DP guarantee), secure "
        "aggregation and the signed report stay [on]",
    )
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
        help="secure-aggregation threshold t, above (n + colluders)/2 (also with --privacy off: the votes are "
        "still summed by secure aggregation); fedspallm covers every block with t participants [floor(2n/3)+1]",
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
        help="also build dense/magnitude/centralized/local-only models (and, with privacy on, the same run without privacy) and compare",
    )
    evaluation.add_argument("--eval-data", help="held-out evaluation file for --baselines")
    parser.add_argument("--out", required=True, help="output directory for the global checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run)


def _privacy(args: argparse.Namespace) -> Any:
    """Return the simulation's ``[privacy]`` section (``coordinator.config.PrivacySection``) from the flags."""
    from pydantic import ValidationError

    from coordinator.config import PrivacySection
    from fedprune.errors import CommandError
    from fedprune.simulate import privacy_off

    if (args.privacy == "off" or args.record_dp == "off") and (
        args.sigma is not None or args.target_epsilon is not None
    ):
        raise CommandError("--sigma/--target-epsilon need --privacy on and --record-dp on")
    if args.privacy == "off":
        return privacy_off()
    flags = {
        "epsilon0": "--epsilon0",
        "noise_multiplier": "--sigma",
        "target_epsilon": "--target-epsilon",
        "delta": "--delta",
        "sample_rate": "--sample-rate",
        "colluders": "--colluders",
        "accountant_tolerance": "--accountant-tolerance",
    }
    section: dict[str, Any] = {
        "randomized_response": not math.isinf(args.epsilon0),
        "record_level_dp": args.record_dp == "on",
        "noise_multiplier": args.sigma,
        "target_epsilon": args.target_epsilon,
        "delta": args.delta,
        "sample_rate": args.sample_rate,
        "colluders": args.colluders,
        "accountant_tolerance": args.accountant_tolerance,
    }
    if not math.isinf(args.epsilon0):
        section["epsilon0"] = args.epsilon0
    try:
        return PrivacySection.model_validate({k: v for k, v in section.items() if v is not None})
    except ValidationError as error:
        problems = []
        for problem in error.errors(include_url=False):
            field = ".".join(str(part) for part in problem["loc"])
            message = str(problem["msg"]).removeprefix("Value error, ")
            problems.append(f"{flags.get(field, 'privacy')}: {message}" if field else message)
        raise CommandError("; ".join(problems)) from None


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


def _settings(args: argparse.Namespace, base: Any) -> Any:
    """Return the run's ``SimulationSettings`` from the flags (the recipe's rule checked here)."""
    from coordinator.aggregation import ComparisonGroup
    from fedprune.simulate import SimulationSettings
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import resolve_seqlen
    from pruning.owl import OwlSettings
    from pruning.recipes import Mode, Recipe

    recipe = Recipe.parse(args.recipe)
    # A recipe's conflict (fedspallm with wanda, say) raises PruningInputError naming what it needs.
    return SimulationSettings(
        method=Method.parse(args.method) if args.method else recipe.default_method,
        pattern=parse_pattern(args.pattern, args.sparsity),
        group=ComparisonGroup(args.group),
        mode=Mode.parse(args.mode),
        weight_scaling=args.weight_scaling,
        nsamples=args.nsamples,
        seqlen=resolve_seqlen(base, args.seqlen),
        seed=args.seed,
        recipe=recipe,
        budgets=_budgets(args),
        owl=OwlSettings(multiple=args.owl_m, lam=args.owl_lambda) if args.owl else None,
    )


def _checked_threshold(args: argparse.Namespace, settings: Any, privacy: Any, blocks: int, out: Path) -> int:
    """Return t after checking the whole coordinator config and the block assignment, before any work."""
    from coordinator.assignment import AssignmentError, assign_blocks
    from coordinator.config import ConfigError
    from fedprune.errors import CommandError
    from fedprune.simulate import simulation_config

    n = len(args.participant_data)
    try:
        config = simulation_config(
            args.model,
            participants=n,
            settings=settings,
            privacy=privacy,
            out=out,
            signing_key=out / "unused.key",
            state=out / "unused-state",
            threshold=args.threshold,
        )
    except ConfigError as error:
        raise CommandError(str(error).replace("run.threshold", "--threshold")) from None
    if settings.budgets is not None:
        # The coordinator assigns the blocks; checked here too, so that a budget too small is refused
        # before any participant computes anything.
        try:
            assign_blocks(settings.budgets, blocks=blocks, threshold=config.threshold)
        except AssignmentError as error:
            raise CommandError(f"--budgets: {error}") from None
    return config.threshold


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from fedprune.errors import CommandError
    from fedprune.simulate import (
        describe_privacy,
        load_participant_records,
        load_participant_samples,
        simulate_service,
    )
    from pruning.adapters import decoder_blocks
    from pruning.calibration import resolve_device
    from pruning.data import evaluation_stream
    from pruning.methods import Method
    from pruning.model_io import (
        check_model_dir,
        check_samples_fit,
        load_model,
        load_tokenizer,
        prepare_output_dir,
        vocabulary_size,
    )
    from pruning.recipes import Recipe
    from pruning.sparsity import sparsity_table

    if args.baselines and not args.eval_data:
        raise CommandError("--baselines needs --eval-data FILE (held-out text to evaluate on)")
    privacy = _privacy(args)
    check_model_dir(args.model)
    base = load_model(args.model)
    settings = _settings(args, base)
    out = prepare_output_dir(args.out, overwrite=args.overwrite)
    threshold = _checked_threshold(args, settings, privacy, len(decoder_blocks(base)), out)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.model)
    vocab = vocabulary_size(base)
    method = settings.method
    record_level = privacy.record_level_dp and method is not Method.MAGNITUDE
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
    if args.privacy == "off":
        print(PRIVACY_OFF_BANNER, file=sys.stderr)
    elif not privacy.record_level_dp:
        print(NO_RECORD_DP_BANNER, file=sys.stderr)
    elif record_level:
        _print_outlook(privacy, base, samples, method=method, owl=settings.owl is not None)

    # The coordinator builds and checks the report (with every site's signed statement) before it writes
    # the checkpoint and sparsity.json, as the service does.
    started = time.perf_counter()
    key_path = _signing_key_path(args.signing_key)
    served = simulate_service(
        args.model,
        args.participant_data,
        settings=settings,
        privacy=privacy,
        threshold=threshold,
        out=out,
        signing_key=key_path,
        device=str(device),
        participant_samples=samples,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        keep_local_models=args.baselines,
    )
    elapsed = time.perf_counter() - started
    _announce_report(served.report, key_path)
    table = sparsity_table(served.model)
    summary: dict[str, Any] = {
        "participants": n,
        "recipe": settings.recipe.value,
        "method": method.value,
        "pattern": str(settings.pattern),
        "group": args.group,
        "mode": args.mode,
        "weight_scaling": args.weight_scaling,
        "nsamples": None if record_level else args.nsamples,
        "seqlen": settings.seqlen,
        "privacy": describe_privacy(privacy),
        "threshold": served.threshold,
        "transport": "in process: the service's coordinator and participants, no network",
        "seconds": round(elapsed, 2),
        "sparsity": table["total"]["sparsity"],
        "privacy_report": str(served.report),
    }
    if settings.owl is not None:
        allocation = json.loads((out / "sparsity.json").read_text(encoding="utf-8"))["allocation"]
        summary["owl"] = {
            "lambda": settings.owl.lam,
            "outlier_multiple": settings.owl.multiple,
            "sparsities": [entry["sparsity"] for entry in allocation["blocks"]],
        }
    if settings.recipe is Recipe.FEDSPALLM:
        summary["participants_per_block"] = served.participants_per_block
        summary["budgets"] = list(settings.budgets) if settings.budgets is not None else None
        summary["clipped_weight_updates"] = served.clipped_updates
    print(
        f"federated {method.value} ({settings.recipe.value}, {settings.pattern}, {args.group} group, {args.mode}) "
        f"over {n} participants in {elapsed:.1f} s; total sparsity {table['total']['sparsity']:.4f}; "
        f"saved to {out}"
    )
    if eval_stream is not None:
        rows, local = _baseline_rows(
            args,
            base,
            samples,
            served,
            eval_stream,
            settings=settings,
            device=device,
            privacy=privacy,
            threshold=served.threshold,
        )
        print(_format_table(rows))
        summary["perplexity"] = dict(rows)
        summary["local_only"] = local
    (out / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


def _baseline_rows(
    args: argparse.Namespace,
    base: Any,
    samples: list[Any],
    served: Any,
    stream: Any,
    *,
    settings: Any,
    device: Any,
    privacy: Any,
    threshold: int,
) -> tuple[list[tuple[str, float]], list[float]]:
    """Return the table's rows (dense, magnitude, centralized, federated with and without privacy,
    local-only) and each site's figure.

    With privacy on, the same federation runs once more with :func:`fedprune.simulate.privacy_off` (true
    votes, exact statistics, secure aggregation) on the same calibration data and threshold, so the cost
    of privacy is the difference of two rows. That run signs its report with a throwaway key and writes
    nothing under ``--out``.
    """
    import tempfile

    from fedprune.baselines import centralized_model, evaluate, local_only_models, magnitude_model
    from fedprune.simulate import privacy_off, simulate_service
    from pruning.methods import Method

    def ppl(model: Any) -> float:
        return evaluate(model, stream, seqlen=settings.seqlen, device=device)

    method, pattern = settings.method, settings.pattern
    rows = [("dense", ppl(base)), ("magnitude", ppl(magnitude_model(base, pattern=pattern, device=device)))]
    if method is not Method.MAGNITUDE:
        centralized = centralized_model(
            base, samples, method=method, pattern=pattern, device=device, owl=settings.owl
        )
        rows.append(("centralized", ppl(centralized)))
    shape = f"({args.group}{', scaling' if args.weight_scaling else ''}{', owl' if args.owl else ''}, {args.mode})"
    private = args.privacy != "off"
    # Under OWL a site's own model in the run is pruned at the federation's allocation, not its own.
    local_models = None if privacy.record_level_dp or settings.owl is not None else served.local_models
    if private:
        rows.append((f"private federated {shape}", ppl(served.model)))
        with tempfile.TemporaryDirectory(prefix="fedprune-simulate-no-privacy-") as scratch:
            plain = simulate_service(
                args.model,
                args.participant_data,
                settings=settings,
                privacy=privacy_off(),
                threshold=threshold,
                out=Path(scratch) / "out",
                signing_key=Path(scratch) / "report.key",
                device=str(device),
                participant_samples=samples,
                progress=False,
                state_dir=Path(scratch) / "state",
                keep_local_models=True,
            )
        rows.append((f"federated, no privacy {shape}", ppl(plain.model)))
        local_models = None if settings.owl is not None else plain.local_models
    else:
        rows.append((f"federated, no privacy {shape}", ppl(served.model)))
    # A site's own model from a run with exact statistics is its local-only model (when it pruned every
    # block alone, one-shot); otherwise each site prunes a copy alone, with exact statistics.
    if local_models is None:
        local_models = local_only_models(
            base, samples, method=method, pattern=pattern, device=device, owl=settings.owl
        )
    local = [ppl(model) for model in local_models]
    rows.append(("local-only (mean)", sum(local) / len(local)))
    rows.append(("local-only (worst)", max(local)))
    return rows, local


def _print_outlook(privacy: Any, base: Any, samples: list[Any], *, method: Any, owl: bool = False) -> None:
    """Say before the run what the record-level noise will leave of each participant's statistics."""
    from participant.privacy import RunPrivacy, block_signal_outlook, planned_noise_multiplier
    from pruning.adapters import decoder_blocks

    blocks = len(decoder_blocks(base))
    releases = 2 * blocks if owl else blocks
    sigma = planned_noise_multiplier(
        RunPrivacy(
            randomized_response=privacy.randomized_response,
            epsilon0=privacy.epsilon0,
            record_level_dp=privacy.record_level_dp,
            noise_multiplier=privacy.noise_multiplier,
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=privacy.sample_rate,
            accountant_tolerance=privacy.accountant_tolerance,
        ),
        blocks=releases,
    )
    assert sigma is not None  # the outlook is printed with record-level DP only
    target = (
        f"epsilon {privacy.target_epsilon:g}" if privacy.target_epsilon is not None else f"sigma {sigma:.3g}"
    )
    outlooks = [
        block_signal_outlook(
            base,
            method=method,
            records=calibration.records,
            noise_multiplier=sigma,
            sample_rate=privacy.sample_rate,
        )
        for calibration in samples
    ]
    print(
        f"record-level DP: one document is the unit; {target} at delta {privacy.delta:g} over {releases} "
        f"releases ({blocks} blocks{', twice with OWL' if owl else ''}) -> noise multiplier {sigma:.3g}, sample rate {privacy.sample_rate:g}, "
        f"{outlooks[0].dimension} released coordinates per block"
    )
    for i, (calibration, outlook) in enumerate(zip(samples, outlooks, strict=True)):
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
