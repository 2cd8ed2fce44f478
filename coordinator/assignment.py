"""Resource-aware block assignment (FedSpaLLM's layer sampling): which participants prune which blocks.

Each participant declares a compute budget: the number of decoder blocks it can prune. The coordinator
gives every block a subset of participants so that

- every block is covered by at least ``threshold`` participants (the secure-aggregation threshold t: a
  block's session runs over its own subset and needs t survivors),
- no participant gets more blocks than its budget,
- the spare capacity is spread evenly: the total usable capacity C = sum_i min(budget_i, L) is split into
  per-block coverages that differ by at most one, so every participant with enough budget prunes every
  block when budgets allow (the FedPrLLM recipe's full participation).

Existence: with capacities c_i = min(budget_i, L) (nobody can prune a block twice), an assignment with
coverage k_l for block l exists iff sum_l k_l <= sum_i c_i and every k_l <= n (a bipartite degree-sequence
argument); it is built greedily, each block (most demanding first) taking the participants with the
most remaining capacity, which never gets stuck under that condition. So the coverages above exist iff
C >= t * L and t <= n; otherwise :func:`assign_blocks` raises :class:`AssignmentError` saying how much
budget is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


class AssignmentError(ValueError):
    """No assignment satisfies the coverage and the budgets; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class BlockAssignment:
    """Which participants (0-based positions) prune each decoder block; each tuple is sorted."""

    blocks: tuple[tuple[int, ...], ...]
    participants: int

    def coverage(self, block: int) -> int:
        """Return how many participants prune ``block``."""
        return len(self.blocks[block])

    def blocks_of(self, participant: int) -> tuple[int, ...]:
        """Return the blocks ``participant`` prunes, in order."""
        return tuple(index for index, members in enumerate(self.blocks) if participant in members)

    def load(self, participant: int) -> int:
        """Return the number of blocks ``participant`` prunes."""
        return len(self.blocks_of(participant))

    @property
    def is_full(self) -> bool:
        """Return True when every participant prunes every block."""
        return all(len(members) == self.participants for members in self.blocks)


def full_assignment(*, participants: int, blocks: int) -> BlockAssignment:
    """Return the assignment in which every participant prunes every block."""
    return BlockAssignment(
        blocks=tuple(tuple(range(participants)) for _ in range(blocks)), participants=participants
    )


def assign_blocks(budgets: Sequence[int], *, blocks: int, threshold: int) -> BlockAssignment:
    """Return an assignment covering every block by at least ``threshold`` participants within ``budgets``.

    ``budgets[i]`` is the number of blocks participant i can prune. Deterministic: ties go to the lower
    participant index.
    """
    n = len(budgets)
    if n < 1:
        raise AssignmentError("budgets must name at least one participant")
    if blocks < 1:
        raise AssignmentError(f"blocks must be >= 1, got {blocks}")
    if not 1 <= threshold <= n:
        raise AssignmentError(f"threshold must be in [1, {n}] (the number of participants), got {threshold}")
    for index, budget in enumerate(budgets):
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise AssignmentError(f"budgets[{index}] must be a non-negative integer, got {budget!r}")
    capacity = [min(budget, blocks) for budget in budgets]
    total = sum(capacity)
    if total < threshold * blocks:
        raise AssignmentError(
            f"budgets cover {total} block-prunings (each capped at {blocks} blocks), but {blocks} blocks "
            f"x threshold {threshold} need {threshold * blocks}: {threshold * blocks - total} more are missing"
        )
    base, extra = divmod(total, blocks)
    # Spread the capacity evenly: the first `extra` blocks get one more participant.
    demand = [base + (1 if index < extra else 0) for index in range(blocks)]
    remaining = list(capacity)
    members: list[tuple[int, ...]] = [()] * blocks
    for block in sorted(range(blocks), key=lambda index: (-demand[index], index)):
        ranked = sorted(range(n), key=lambda i: (-remaining[i], i))
        chosen = ranked[: demand[block]]
        if any(remaining[i] == 0 for i in chosen):  # impossible under total >= demand; a guard, not a path
            raise AssignmentError(f"block {block} cannot be given {demand[block]} participants")
        for i in chosen:
            remaining[i] -= 1
        members[block] = tuple(sorted(chosen))
    assignment = BlockAssignment(blocks=tuple(members), participants=n)
    check_assignment(assignment, budgets, threshold=threshold)
    return assignment


def check_assignment(assignment: BlockAssignment, budgets: Sequence[int], *, threshold: int) -> None:
    """Return None when every block has >= ``threshold`` distinct participants and no budget is exceeded."""
    if len(budgets) != assignment.participants:
        raise AssignmentError(f"{len(budgets)} budgets for {assignment.participants} participants")
    for block, members in enumerate(assignment.blocks):
        if len(set(members)) != len(members) or not all(0 <= i < assignment.participants for i in members):
            raise AssignmentError(f"block {block}: participants {members} are not distinct positions")
        if len(members) < threshold:
            raise AssignmentError(
                f"block {block} is covered by {len(members)} participants, below {threshold}"
            )
    for participant, budget in enumerate(budgets):
        if assignment.load(participant) > budget:
            raise AssignmentError(
                f"participant {participant} is given {assignment.load(participant)} blocks, over its budget {budget}"
            )
