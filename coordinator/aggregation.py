"""From summed keep-votes to the global mask: pure functions over tensors, no transport.

Each participant votes *keep* (1) or *prune* (0) for every weight; the coordinator learns only the sum of
the votes per weight (``keep_votes``, between 0 and n). Within each comparison group it keeps the (1-s)
fraction of weights with the most keep-votes and prunes ``int(size * s)`` of them. Ties are broken
deterministically: first by the larger |W| of the public base weight (kept), then by the lower flat index
(kept). N:M patterns select within each aligned group of M inputs of a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from coordinator.selection import select_in_one_group, select_per_group, vote_array
from privacy.errors import PrivacyError
from privacy.secagg.fixed_point import VoteValueCodec
from pruning.layout import VoteLayout
from pruning.masks import ComparisonGroup, SparsityPattern, pruned_count
from pruning.updates import update_bound

VOTE_DTYPE = torch.int32
"""Keep-vote counts: exact for any realistic number of participants (up to 2^31 - 1)."""


class VoteTally:
    """Sums keep-votes for one matrix, exactly, across any number of participants."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.keep_votes = torch.zeros(shape, dtype=VOTE_DTYPE)
        self.participants = 0

    def add(self, keep: torch.Tensor) -> None:
        """Add one participant's keep-votes (bool or 0/1 ints shaped like the matrix)."""
        if tuple(keep.shape) != tuple(self.keep_votes.shape):
            raise ValueError(
                f"votes of shape {tuple(keep.shape)} for a matrix of {tuple(self.keep_votes.shape)}"
            )
        self.keep_votes += keep.to(device="cpu", dtype=VOTE_DTYPE)
        self.participants += 1


def global_mask(
    keep_votes: torch.Tensor,
    base_weight: torch.Tensor,
    *,
    pattern: SparsityPattern,
    group: ComparisonGroup = ComparisonGroup.LAYER,
) -> torch.Tensor:
    """Return the global mask (True = pruned) of one ``[out, in]`` matrix from its summed keep-votes.

    Linear in the matrix size, with temporaries of a few bytes a weight at most (:mod:`coordinator.selection`).
    """
    if keep_votes.shape != base_weight.shape or keep_votes.ndim != 2:
        raise ValueError(
            f"keep_votes {tuple(keep_votes.shape)} and base weight {tuple(base_weight.shape)} must be one 2-D shape"
        )
    votes = vote_array(keep_votes)
    weight = base_weight.detach()
    out_features, in_features = votes.shape
    mask = np.zeros(votes.shape, dtype=np.bool_)
    if pattern.is_n_m:
        if in_features % pattern.m:
            raise ValueError(
                f"{pattern.n}:{pattern.m} needs the input width ({in_features}) to be a multiple of {pattern.m}"
            )
        shape = (out_features * (in_features // pattern.m), pattern.m)
        select_per_group(votes.reshape(shape), weight.reshape(shape), pattern.n, mask.reshape(shape))
    elif group is ComparisonGroup.LAYER:
        select_in_one_group(votes, weight, pruned_count(votes.size, pattern.sparsity), mask)
    elif group is ComparisonGroup.ROW:
        select_per_group(votes, weight, pruned_count(in_features, pattern.sparsity), mask)
    else:
        select_per_group(votes, weight, pruned_count(out_features, pattern.sparsity), mask, columns=True)
    return torch.from_numpy(mask)


def scaled_weight(base_weight: torch.Tensor, keep_votes: torch.Tensor, participants: int) -> torch.Tensor:
    """Return ``W * keep_votes / n``: the optional weight scaling of FedPrLLM (off by default)."""
    if participants < 1:
        raise ValueError("weight scaling needs at least one participant")
    factor = keep_votes.to(device=base_weight.device, dtype=torch.float32) / participants
    return (base_weight.to(torch.float32) * factor).to(base_weight.dtype)


def check_counts(keep_votes: torch.Tensor, contributors: int, *, name: str) -> None:
    """Raise if any count lies outside [0, contributors]: the sign of an invalid (malicious or corrupt) input."""
    low, high = int(keep_votes.min()), int(keep_votes.max())
    if low < 0 or high > contributors:
        raise ValueError(
            f"{name}: keep-vote counts span [{low}, {high}] but only {contributors} participants contributed"
        )


# --------------------------------------------------------------------------- FedSpaLLM: l0-norm averaging
def true_keepers_estimate(
    keep_votes: torch.Tensor, *, participants: int, flip_probability: float = 0.0
) -> torch.Tensor:
    """Return, per weight, the estimated number of keep-votes that are true keeps (float64).

    Under randomized response with flip probability p, a weight that k of the n participants truly keep
    receives S = A + F keep-votes: A ~ Bin(k, 1 - p) true keeps that stayed keeps, F ~ Bin(n - k, p) prunes
    flipped to keep. Only the A true keeps carry a weight update (a flipped vote adds a zero update), so
    dividing the update sum by S shrinks the average toward W0 by A/S. The moment estimate
    k^ = (S - n p)/(1 - 2p), A^ = (1 - p) k^ is unbiased for E[A]; it is clipped to [min(1, S), S] (a
    count cannot exceed the votes, and a single vote is taken at its word). Without randomization A = S.
    """
    votes = keep_votes.to(torch.float64)
    if not 0.0 <= flip_probability < 0.5:
        raise ValueError(f"flip_probability must lie in [0, 0.5), got {flip_probability}")
    if flip_probability == 0.0:
        return votes
    p = flip_probability
    estimate = (1.0 - p) * (votes - participants * p) / (1.0 - 2.0 * p)
    return torch.minimum(torch.maximum(estimate, votes.clamp(max=1.0)), votes)


def averaged_weight(
    base_weight: torch.Tensor,
    pruned: torch.Tensor,
    update_sums: torch.Tensor,
    contributors: torch.Tensor,
) -> torch.Tensor:
    """Return the l0-norm average of the participants' kept weights, zero where ``pruned``.

    With m_i participant i's keep bit and w_i its reconstructed weight, the global weight of a kept
    position is sum_i m_i w_i / sum_i m_i = W0 + sum_i m_i (w_i - W0) / sum_i m_i: ``update_sums`` is the
    numerator's sum of updates (w_i - W0) and ``contributors`` its divisor (the keep-vote count, or its
    randomized-response correction :func:`true_keepers_estimate`). A kept position nobody voted for (a
    row or column group can need one) keeps the public base weight W0.
    """
    if not (base_weight.shape == pruned.shape == update_sums.shape == contributors.shape):
        raise ValueError("base_weight, pruned, update_sums and contributors must have one shape")
    base = base_weight.detach().to(device="cpu", dtype=torch.float64)
    divisor = contributors.to(torch.float64)
    update = torch.where(divisor > 0, update_sums.to(torch.float64) / divisor.clamp(min=1e-12), 0.0)
    averaged = torch.where(pruned.to("cpu"), 0.0, base + update)
    return averaged.to(base_weight.dtype)


@dataclasses.dataclass(frozen=True)
class MatrixSums:
    """What FedSpaLLM's secure sum says about one matrix: the votes, the updates' sum, its divisor."""

    keep_votes: torch.Tensor
    """Summed keep-votes S (int32), checked to lie in [0, contributors]."""
    update_sums: torch.Tensor
    """Sum of the keep-voters' weight updates (float64)."""
    divisor: torch.Tensor
    """The l0-norm average's divisor: S, or its randomized-response correction (float64)."""


def decode_votes_and_updates(
    codec: VoteValueCodec,
    layout: VoteLayout,
    sums: np.ndarray,
    base_weights: Mapping[str, torch.Tensor],
    *,
    contributors: int,
    flip_probability: float,
) -> dict[str, MatrixSums]:
    """Return each matrix's :class:`MatrixSums` from one block's packed secure sums (``layout`` order).

    Raises ValueError naming the matrix when a sum is not one that ``contributors`` encoded inputs make.
    """
    decoded_block = {}
    for entry in layout:
        try:
            decoded = codec.decode(
                np.asarray(sums[entry.coordinates]),
                bound=update_bound(base_weights[entry.name]),
                contributors=contributors,
            )
        except PrivacyError as error:
            raise ValueError(f"{entry.name}: {error}") from None
        keep_votes = torch.from_numpy(decoded.counts.astype(np.int32).reshape(entry.shape))
        check_counts(keep_votes, contributors, name=entry.name)
        decoded_block[entry.name] = MatrixSums(
            keep_votes=keep_votes,
            update_sums=torch.from_numpy(decoded.value_sums.reshape(entry.shape)),
            divisor=true_keepers_estimate(
                keep_votes, participants=contributors, flip_probability=flip_probability
            ),
        )
    return decoded_block
