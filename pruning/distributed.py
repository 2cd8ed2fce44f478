"""Data-parallel calibration: one site's calibration records split over several ``torch.distributed`` ranks.

A site whose calibration outgrows one device runs the same command on several processes (``torchrun
--nproc-per-node N fedprune prune ...``); ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address, and :func:`init_from_environment` joins the process group (NCCL on CUDA, gloo on the
CPU). Every rank loads the whole model and walks the decoder blocks in the same order; it runs only its
shard of the records (:func:`shard_samples`: whole records, record r on rank r mod N, so a record's windows
never straddle two ranks). A block's statistics are the sum over the ranks' partial sums (``all_reduce``),
then broadcast from rank 0 so that every rank decides on the very same tensor and prunes its copy of the
block identically; the next block's inputs are computed from that pruned block, rank by rank, on the
rank's own windows.

Without an initialized process group of more than one rank every function here is the identity: one
process is the data-parallel run of one rank.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from pruning.data import CalibrationSet, as_windows
from pruning.errors import PruningInputError
from pruning.statistics import ExactSum, StatisticKind

logger = logging.getLogger(__name__)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Return True when this process is one rank of an initialized process group of two or more ranks."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    """Return this process's rank (0 when not data-parallel)."""
    return int(_dist().get_rank()) if active() else 0


def world_size() -> int:
    """Return the number of ranks (1 when not data-parallel)."""
    return int(_dist().get_world_size()) if active() else 1


def is_leader() -> bool:
    """Return True on rank 0, the one rank that writes outputs, adds noise and talks to a coordinator."""
    return rank() == 0


def init_from_environment(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment; return True when data-parallel.

    ``WORLD_SIZE`` unset or 1: nothing happens (False). Otherwise the group is initialized once (NCCL when
    ``device`` is CUDA, gloo otherwise) and, on CUDA, the rank uses device ``LOCAL_RANK``.
    """
    dist = _dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_available():
        raise PruningInputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("data-parallel calibration: rank %d of %d (%s)", rank(), world_size(), backend)
    return active()


def local_device(device: torch.device) -> torch.device:
    """Return the device this rank computes on: its ``LOCAL_RANK`` GPU under CUDA, else ``device``."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard_samples(samples: torch.Tensor | CalibrationSet) -> torch.Tensor | CalibrationSet:
    """Return this rank's records of ``samples`` (all of them when not data-parallel).

    Whole records go to one rank (record r to rank r mod N) and keep their ids, so a record-level
    aggregator clips each record exactly as one process would and no two ranks share a record id. A rank
    may get no window (fewer records than ranks): refused, since its block inputs would be undefined.
    """
    if not active():
        return samples
    me, ranks = rank(), world_size()
    windows, records = as_windows(samples)
    mine = [i for i, record in enumerate(records) if record % ranks == me]
    if not mine:
        raise PruningInputError(
            f"rank {me} of {ranks} has no calibration record: {len(set(records))} records cannot feed "
            f"{ranks} ranks"
        )
    documents = samples.documents if isinstance(samples, CalibrationSet) else len(windows)
    return CalibrationSet(
        windows=tuple(windows[i] for i in mine),
        record_of_window=tuple(records[i] for i in mine),
        documents=documents,
    )


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``tensor`` over every rank, the same bits on every rank (a copy; the identity
    without data parallelism).

    Summed with ``all_reduce`` and then broadcast from rank 0: a reduction may round differently on
    different ranks, and every rank must decide its mask on the very same statistic.
    """
    if not active():
        return tensor
    dist = _dist()
    summed = _for_collective(tensor)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.broadcast(summed, src=0)
    return summed.to(tensor.device)


def from_leader(tensor: torch.Tensor) -> torch.Tensor:
    """Return rank 0's ``tensor`` on every rank (its shape and dtype must agree; the identity on one rank)."""
    if not active():
        return tensor
    received = _for_collective(tensor)
    _dist().broadcast(received, src=0)
    return received.to(tensor.device)


def _for_collective(tensor: torch.Tensor) -> torch.Tensor:
    """Return a contiguous copy of ``tensor`` where the backend reduces: this rank's GPU for NCCL, else the CPU.

    A rank may hold a statistic on the CPU (zeros, when none of its records was sampled) while another
    holds it on its GPU: the collective needs them on the backend's device alike.
    """
    dist = _dist()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    return tensor.detach().to(device, copy=True).contiguous()


class DistributedExactSum(ExactSum):
    """The exact sum over every rank's records: each rank's partial sum (integer steps), all-reduced in
    ``result``, the same total whatever rank holds which record.

    Every rank must ask for the same sublayers in the same order (the block runner does). A rank none of
    whose records reached a sublayer adds zeros of the statistic's shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self._widths: dict[str, int] = {}

    def begin_block(self, *, block_index: int, kind: StatisticKind, sublayers: dict[str, int]) -> None:
        super().begin_block(block_index=block_index, kind=kind, sublayers=sublayers)
        self._widths = dict(sublayers)

    def _summed(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._widths:
            raise KeyError(f"no sublayer {name!r} in this block")
        if name in self._totals:
            local, magnitude = self._totals[name], self._magnitudes[name]
        elif not active():
            raise KeyError(f"no calibration records reached sublayer {name!r}")
        else:
            width = self._widths[name]
            shape = (width,) if self._kind is StatisticKind.COLUMN_SQUARES else (width, width)
            local = torch.zeros(shape, dtype=torch.int64)
            magnitude = torch.zeros(width, dtype=torch.float64)
        return sum_over_ranks(local), sum_over_ranks(magnitude)


class RanksReduction:
    """``privacy.calibration_dp.RankReduction`` over ``torch.distributed``: sum over ranks, rank 0 leads."""

    def __init__(self) -> None:
        self.leader = is_leader()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(tensor)

    def from_leader(self, tensor: torch.Tensor) -> torch.Tensor:
        return from_leader(tensor)


def ranks_reduction() -> RanksReduction | None:
    """Return the reduction a record-level DP aggregator needs when data-parallel, else None."""
    return RanksReduction() if active() else None


def exact_aggregator() -> ExactSum:
    """Return the exact aggregator for this process: summed over the ranks when data-parallel."""
    return DistributedExactSum() if active() else ExactSum()


__all__ = [
    "DistributedExactSum",
    "RanksReduction",
    "active",
    "exact_aggregator",
    "from_leader",
    "init_from_environment",
    "is_leader",
    "local_device",
    "rank",
    "ranks_reduction",
    "shard_samples",
    "sum_over_ranks",
    "world_size",
]
