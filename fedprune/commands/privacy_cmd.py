"""``fedprune privacy rr|gaussian``: privacy planning figures for operators and checks for auditors.

``rr`` composes eps0-randomized response exactly over K coordinates; ``gaussian`` composes R Gaussian
releases (Opacus RDP and PRV, the larger reported), or with ``--target-epsilon`` finds the noise
multiplier. ``--json`` prints one JSON object whose ``epsilon`` is the composed epsilon at ``--delta``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fedprune.commands.common import positive_int


def _probability(value: str) -> float:
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return number


def _nonnegative(value: str) -> float:
    number = float(value)
    if not number >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "privacy",
        help="privacy planning: composed epsilon of randomized response or Gaussian releases",
        description="Compute composed (epsilon, delta) guarantees, as the privacy report does.",
    )
    commands = parser.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND", required=True)

    rr = commands.add_parser("rr", help="randomized response composed over K coordinates (exact)")
    rr.add_argument("--epsilon0", type=_nonnegative, required=True, help="per-coordinate epsilon0")
    rr.add_argument("--coordinates", type=positive_int, required=True, help="coordinates K one unit can move")
    rr.add_argument("--delta", type=_probability, required=True)
    rr.add_argument(
        "--honest-voters", type=positive_int, help="also show the shuffle-model bound for n voters"
    )
    rr.add_argument("--json", action="store_true", help="print one JSON object")
    rr.set_defaults(handler=run_rr)

    gaussian = commands.add_parser("gaussian", help="Gaussian releases (Opacus RDP and PRV)")
    noise = gaussian.add_mutually_exclusive_group(required=True)
    noise.add_argument("--sigma", type=float, help="noise multiplier (std / clip norm)")
    noise.add_argument("--target-epsilon", type=float, help="find the smallest sigma reaching this epsilon")
    gaussian.add_argument("--releases", type=positive_int, required=True, help="number of releases R")
    gaussian.add_argument("--delta", type=_probability, required=True)
    gaussian.add_argument("--sample-rate", type=float, default=1.0, help="Poisson sample rate q [1]")
    gaussian.add_argument(
        "--accountant-tolerance",
        type=float,
        default=None,
        help="largest accepted RDP/PRV disagreement, relative [0.10]",
    )
    gaussian.add_argument("--json", action="store_true", help="print one JSON object")
    gaussian.set_defaults(handler=run_gaussian)


def _extra_deltas(delta: float) -> list[float]:
    return [float(f"{d:.6g}") for d in (delta * 10, delta / 10, delta / 100) if 0 < d < 1]


def _emit(figures: dict[str, Any], lines: list[str], as_json: bool) -> None:
    print(json.dumps(figures, sort_keys=True) if as_json else "\n".join(lines))


def run_rr(args: argparse.Namespace) -> int:
    from privacy.accounting import rr_composition, rr_epsilon, shuffle_amplification
    from privacy.randomized_response import epsilon0_from_threshold, threshold_for_epsilon0

    threshold = threshold_for_epsilon0(args.epsilon0)
    effective = epsilon0_from_threshold(threshold)
    composed = rr_composition(epsilon0=effective, coordinates=args.coordinates, delta=args.delta)
    others = {
        repr(d): rr_epsilon(d, epsilon0=effective, coordinates=args.coordinates)
        for d in _extra_deltas(args.delta)
    }
    figures: dict[str, Any] = {
        "mechanism": "randomized_response",
        "requested_epsilon0": args.epsilon0,
        "epsilon0": effective,
        "threshold": threshold,
        "flip_probability": threshold / 2**32,
        "coordinates": args.coordinates,
        "delta": args.delta,
        "epsilon": composed.epsilon,
        "naive_epsilon": composed.naive_epsilon,
        "epsilon_at": {repr(args.delta): composed.epsilon, **others},
        "composition": composed.method,
    }
    lines = [
        f"randomized response, eps0 = {effective:.6f} per coordinate (requested {args.epsilon0}, "
        f"32-bit threshold {threshold}, flip probability {threshold / 2**32:.6g})",
        f"composed over K = {args.coordinates:,} coordinates ({composed.method}):",
        f"  epsilon = {composed.epsilon:.4f} at delta = {args.delta:g}",
        *(f"  epsilon = {value:.4f} at delta = {float(key):g}" for key, value in others.items()),
        f"  (pure DP, delta = 0: K * eps0 = {composed.naive_epsilon:.4f})",
    ]
    if args.honest_voters:
        bound = shuffle_amplification(epsilon0=effective, honest_voters=args.honest_voters, delta=args.delta)
        figures["amplification"] = {
            "honest_voters": bound.honest_voters,
            "valid": bound.valid,
            "epsilon_per_coordinate": bound.epsilon,
            "delta": bound.delta,
            "reason": bound.reason,
            "method": bound.method,
        }
        lines.append(
            f"secure aggregation, n = {bound.honest_voters} honest voters, per coordinate: "
            + (f"epsilon = {bound.epsilon:.4f} at delta = {args.delta:g}" if bound.valid else bound.reason)
        )
    _emit(figures, lines, args.json)
    return 0


def run_gaussian(args: argparse.Namespace) -> int:
    from privacy.accounting import (
        DEFAULT_ACCOUNTANT_TOLERANCE,
        GaussianRelease,
        gaussian_epsilon,
        noise_multiplier_for_epsilon,
    )

    tolerance = (
        DEFAULT_ACCOUNTANT_TOLERANCE if args.accountant_tolerance is None else args.accountant_tolerance
    )
    sigma = args.sigma
    if sigma is None:
        sigma = noise_multiplier_for_epsilon(
            target_epsilon=args.target_epsilon,
            delta=args.delta,
            releases=args.releases,
            sample_rate=args.sample_rate,
            tolerance=tolerance,
        )
    releases = [GaussianRelease(noise_multiplier=sigma, sample_rate=args.sample_rate, count=args.releases)]
    main = gaussian_epsilon(releases, delta=args.delta, tolerance=tolerance)
    others = {
        repr(d): gaussian_epsilon(releases, delta=d, tolerance=tolerance).epsilon
        for d in _extra_deltas(args.delta)
    }
    figures = {
        "mechanism": "gaussian",
        "noise_multiplier": sigma,
        "target_epsilon": args.target_epsilon,
        "releases": args.releases,
        "sample_rate": args.sample_rate,
        "delta": args.delta,
        "epsilon": main.epsilon,
        "rdp": main.rdp,
        "prv": main.prv,
        "accountant_tolerance": tolerance,
        "epsilon_at": {repr(args.delta): main.epsilon, **others},
        "composition": main.method,
    }
    lines = [
        f"Gaussian, noise multiplier {sigma:.6g}"
        + (f" (smallest reaching epsilon {args.target_epsilon:g})" if args.target_epsilon else "")
        + f", {args.releases} releases, Poisson sample rate {args.sample_rate:g}",
        f"  epsilon = {main.epsilon:.4f} at delta = {args.delta:g}  (RDP {main.rdp:.4f}, PRV {main.prv:.4f}; larger)",
        *(f"  epsilon = {value:.4f} at delta = {float(key):g}" for key, value in others.items()),
    ]
    _emit(figures, lines, args.json)
    return 0
