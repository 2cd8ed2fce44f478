"""Which weights of one matrix the summed keep-votes prune, in linear time and small memory.

Every comparison group keeps the weights with the most keep-votes; equal counts prefer the larger |W| of
the public base weight, then the lower flat index. |W| is compared as float32 (float16 and bfloat16
weights convert exactly; float64 weights are rounded to float32 first), every NaN counting as one value
above +inf. A float's bits without the sign order like its magnitude, so |W| becomes an integer key: the
weight's own 15 bits for float16 and bfloat16, the float32's 31 bits otherwise.

Nothing is sorted. In one big group (a whole matrix) a histogram of the vote values finds the boundary
count: every weight below it is pruned, every weight above it kept, and only the weights at the boundary
count are ranked, by selection (``np.partition``) on their |W| keys; equal |W| at the cut go to the lower
index. Small groups (rows, columns, N:M) pack (votes, |W|, reversed position) into one unique int64 key
per weight and select the ``prune``-th smallest key of every group at once. Both walk the matrix a slice
of rows (or columns) at a time, so the temporary arrays stay a few tens of MiB whatever the matrix size;
besides the returned mask (1 byte a weight), the one array that grows with the matrix is the boundary's
|W| keys: 2 bytes (4 for float32 weights) a weight at the boundary count, at most every weight.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 20
"""Weights processed per step: the temporaries (up to about 30 bytes a weight of a step) stay a few tens of MiB."""

_SMALL_GROUP = 8
"""Groups up to this size rank by pairwise comparison; bigger ones by ``np.partition``."""
_HISTOGRAM_LIMIT = 1 << 16
"""A wider vote range finds the boundary count by selection instead of a histogram."""

# |W| keys by weight dtype: (same-width integer type, unsigned key type, the bits below the sign, NaN key).
# A float's bits without the sign order like its magnitude; float16 and bfloat16 convert to float32
# exactly and monotonically, so their own 15 bits order like the float32 |W|. Every NaN gets one key just
# above +inf, as a sort treats NaN as larger than any number.
_HALF_KEYS = {
    torch.float16: (torch.int16, np.uint16, 0x7FFF, 0x7C01),
    torch.bfloat16: (torch.int16, np.uint16, 0x7FFF, 0x7F81),
}
_SINGLE_KEYS = (torch.int32, np.uint32, 0x7FFFFFFF, 0x7F800001)


def magnitude_bits(dtype: torch.dtype) -> int:
    """Return how many bits the |W| keys of a weight of ``dtype`` use."""
    return 15 if dtype in _HALF_KEYS else 31


def magnitude_keys(weight: torch.Tensor) -> np.ndarray:
    """Return |W| of a weight slice as unsigned integer keys that order like the float32 magnitudes."""
    integer, unsigned, magnitude_mask, nan_key = _HALF_KEYS.get(weight.dtype, _SINGLE_KEYS)
    if weight.dtype not in _HALF_KEYS:
        weight = weight.detach().to(dtype=torch.float32)  # as the comparison is float32 (float64 rounds)
    bits = weight.detach().to(device="cpu").contiguous().view(integer).numpy().view(unsigned)
    keys = np.bitwise_and(bits, unsigned(magnitude_mask))
    return np.minimum(keys, unsigned(nan_key), out=keys)


def vote_array(keep_votes: torch.Tensor) -> np.ndarray:
    """Return the keep-votes as a CPU integer array, sharing memory with an integer CPU tensor."""
    votes = keep_votes.detach().to(device="cpu")
    if votes.dtype == torch.bool or votes.is_floating_point() or votes.is_complex():
        votes = votes.to(torch.int64)
    return votes.numpy()


def _row_spans(rows: int, columns: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, columns))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _boundary_vote(votes: np.ndarray, spans: list[tuple[int, int]], prune: int) -> tuple[int, int, int]:
    """Return (v, fewer, at): the ``prune``-th fewest-voted weight's count, how many have fewer, how many v."""
    low, high = int(votes.min()), int(votes.max())
    if high - low < _HISTOGRAM_LIMIT:
        histogram = np.zeros(high - low + 1, dtype=np.int64)
        for start, stop in spans:
            part = votes[start:stop].ravel()
            shifted = part - low if low else part
            histogram += np.bincount(shifted, minlength=high - low + 1)
        below_or_at = np.cumsum(histogram)
        index = int(np.searchsorted(below_or_at, prune))
        return low + index, int(below_or_at[index - 1]) if index else 0, int(histogram[index])
    boundary = int(np.partition(votes.ravel(), prune - 1)[prune - 1])
    fewer = sum(int(np.count_nonzero(votes[start:stop] < boundary)) for start, stop in spans)
    at = sum(int(np.count_nonzero(votes[start:stop] == boundary)) for start, stop in spans)
    return boundary, fewer, at


def select_in_one_group(votes: np.ndarray, weight: torch.Tensor, prune: int, out: np.ndarray) -> None:
    """Set ``out`` (bool, shaped like ``votes``) True at the ``prune`` weights the whole matrix prunes.

    ``votes`` and ``weight`` are ``[rows, columns]``; the flat index is row-major.
    """
    out[...] = False
    if prune <= 0:
        return
    rows, columns = votes.shape
    spans = _row_spans(rows, columns)
    boundary, fewer, at_boundary = _boundary_vote(votes, spans, prune)
    from_boundary = prune - fewer  # how many boundary weights are pruned: 1 .. at_boundary
    if from_boundary == at_boundary:
        for start, stop in spans:
            np.less_equal(votes[start:stop], boundary, out=out[start:stop])
        return
    keys = np.empty(at_boundary, dtype=_HALF_KEYS.get(weight.dtype, _SINGLE_KEYS)[1])
    filled = 0
    for start, stop in spans:
        tied = votes[start:stop] == boundary
        np.less(votes[start:stop], boundary, out=out[start:stop])
        chosen = magnitude_keys(weight[start:stop])[tied]
        keys[filled : filled + chosen.size] = chosen
        filled += chosen.size
    keys.partition(from_boundary - 1)
    cut = keys[from_boundary - 1]
    # Counted a slice at a time: a comparison over all the keys would be another byte a boundary weight.
    smaller = equal = 0
    for start in range(0, keys.size, CHUNK_ELEMENTS):
        part = keys[start : start + CHUNK_ELEMENTS]
        smaller += int(np.count_nonzero(part < cut))
        equal += int(np.count_nonzero(part == cut))
    del keys
    # Of the ``equal`` boundary weights whose |W| is exactly the cut, the lowest indices are kept.
    kept_at_cut = equal - (from_boundary - smaller)
    seen = 0
    for start, stop in spans:
        tied = votes[start:stop] == boundary
        magnitude = magnitude_keys(weight[start:stop]).reshape(tied.shape)
        slice_out = out[start:stop]
        slice_out |= tied & (magnitude < cut)
        at_cut = np.flatnonzero(tied & (magnitude == cut))
        first_pruned = max(0, kept_at_cut - seen)
        if first_pruned < at_cut.size:
            slice_out[np.unravel_index(at_cut[first_pruned:], tied.shape)] = True
        seen += at_cut.size


def select_per_group(
    votes: np.ndarray, weight: torch.Tensor, prune: int, out: np.ndarray, *, columns: bool = False
) -> None:
    """Set ``out`` True at the ``prune`` weights each group prunes: a group is a row of ``votes`` (or a column).

    Position within a group breaks the last ties (lower position kept). ``votes``, ``weight`` and ``out``
    share one 2-D shape; with ``columns`` the matrix is walked in blocks of whole columns, each
    transposed on its own, so the big arrays are read in their own order.
    """
    out[...] = False
    rows, width = votes.shape
    groups, size = (width, rows) if columns else (rows, width)
    if prune <= 0 or groups == 0:
        return

    def block(array: np.ndarray, start: int, stop: int) -> np.ndarray:
        return array[:, start:stop].T if columns else array[start:stop]

    def weight_block(start: int, stop: int) -> torch.Tensor:
        return weight[:, start:stop] if columns else weight[start:stop]

    low, high = int(votes.min()), int(votes.max())
    position_bits = max(1, (size - 1).bit_length())
    vote_bits = (high - low).bit_length()
    if vote_bits + magnitude_bits(weight.dtype) + position_bits > 63:
        # Beyond any realistic number of participants: each group on its own, still linear.
        for group in range(groups):
            one = weight_block(group, group + 1)
            select_in_one_group(
                block(votes, group, group + 1),
                one.t() if columns else one,
                prune,
                block(out, group, group + 1),
            )
        return
    # Ascending key = pruned first: fewer votes, then smaller |W|, then higher position.
    reversed_position = np.arange(size - 1, -1, -1, dtype=np.int64)
    for start, stop in _row_spans(groups, size):
        key = block(votes, start, stop).astype(np.int64, order="C")
        if low:
            key -= low
        key <<= magnitude_bits(weight.dtype) + position_bits
        magnitude = magnitude_keys(weight_block(start, stop))
        magnitude_key = (magnitude.T if columns else magnitude).astype(np.int64, order="C")
        del magnitude
        magnitude_key <<= position_bits
        key |= magnitude_key
        del magnitude_key
        key |= reversed_position
        if size <= _SMALL_GROUP:
            # Rank of each key in its group: how many of the group's keys are smaller (keys are unique).
            rank = np.zeros(key.shape, dtype=np.int8)
            for other in range(size):
                rank += key[:, other : other + 1] < key
            np.less(rank, prune, out=block(out, start, stop))
        else:
            cut = np.partition(key, prune - 1, axis=1)[:, prune - 1 : prune]
            np.less_equal(key, cut, out=block(out, start, stop))
