"""What a federation computes: the recipe (what sites send, how the coordinator builds the model) and the mode.

One enum each, shared by the configs, the protocol conversions, both roles and every host, and the one place
that says which combinations a recipe allows.
"""

from __future__ import annotations

import enum

from pruning.errors import PruningInputError
from pruning.methods import Method


class Recipe(enum.Enum):
    """What participants send and how the coordinator builds the global model."""

    FEDPRLLM = "fedprllm"
    """Keep-votes only; the global model is the public base weights under the voted mask (the default)."""
    FEDSPALLM = "fedspallm"
    """SparseGPT masks and reconstructed weights; kept weights are l0-norm averaged over the participants
    that kept them; each block is pruned by its assigned participants (resource-aware block assignment)."""
    STATISTICS = "stats"
    """Calibration statistics summed over the sites (Wanda's and RIA's per-input-column sum of x_j^2, or
    SparseGPT's X^T X; exact or record-level DP), block by block; the coordinator prunes each block from the
    sums with Wanda, RIA or SparseGPT and publishes its mask (and, for SparseGPT, the block's reconstructed
    weights), which every site applies before computing the next block's statistics."""

    @property
    def default_method(self) -> Method:
        """Return the local method a run of this recipe uses unless told otherwise."""
        return Method.SPARSEGPT if self is Recipe.FEDSPALLM else Method.WANDA

    @classmethod
    def parse(cls, value: str) -> Recipe:
        """Return the recipe named ``value``, or raise listing the choices."""
        try:
            return cls(value.lower())
        except ValueError:
            raise PruningInputError(
                f"unknown recipe {value!r}; choose one of {', '.join(r.value for r in cls)}"
            ) from None


class Mode(enum.Enum):
    """How often the coordinator aggregates."""

    ONE_SHOT = "one-shot"
    """Each participant prunes its own copy and votes on every block; one aggregation per block, no feedback."""
    ITERATIVE = "iterative"
    """Block l's global mask is applied at every site before block l+1 is scored."""

    @classmethod
    def parse(cls, value: str) -> Mode:
        """Return the mode named ``value``, or raise listing the choices."""
        try:
            return cls(value.lower())
        except ValueError:
            raise PruningInputError(
                f"unknown mode {value!r}; choose one of {', '.join(m.value for m in cls)}"
            ) from None


def recipe_conflicts(recipe: Recipe, *, method: Method, mode: Mode, weight_scaling: bool) -> list[str]:
    """Return what a run of ``recipe`` needs that these settings lack (empty when they fit).

    FedSpaLLM averages SparseGPT's reconstructed weights once per block: it needs method sparsegpt, one-shot
    mode and no weight scaling (the kept weights are averaged instead). The statistics recipe prunes from
    summed statistics: it needs a method that reads data (wanda, ria or sparsegpt), iterative mode (each block's statistics come
    from the globally pruned model) and no weight scaling (there are no votes to scale by). FedPrLLM takes
    any combination.
    """
    problems = []
    if recipe is Recipe.STATISTICS:
        if method is Method.MAGNITUDE:
            problems.append(f"method wanda, ria or sparsegpt (got {method.value})")
        if mode is not Mode.ITERATIVE:
            problems.append(f"mode iterative (got {mode.value})")
        if weight_scaling:
            problems.append("no weight scaling (no keep-votes are summed)")
    if recipe is Recipe.FEDSPALLM:
        if method is not Method.SPARSEGPT:
            problems.append(f"method sparsegpt (got {method.value})")
        if mode is not Mode.ONE_SHOT:
            problems.append(f"mode one-shot (got {mode.value})")
        if weight_scaling:
            problems.append("no weight scaling (the kept weights are averaged instead)")
    return problems


def owl_conflicts(recipe: Recipe, *, method: Method, n_m: bool) -> list[str]:
    """Return what a federated OWL run of ``recipe`` needs that these settings lack (empty when they fit).

    OWL allocates one unstructured sparsity per decoder block from the column statistics of the dense
    model (``pruning.owl``): it needs an unstructured pattern (an N:M pattern fixes every block's sparsity)
    and a method that reads calibration data (magnitude reads none, and the allocation would be the only
    release of the sites' data). FedSpaLLM is not offered with OWL: its block assignment and weight
    averaging are per block at one sparsity.
    """
    problems = []
    if recipe is Recipe.FEDSPALLM:
        problems.append("recipe fedprllm or stats (fedspallm has no OWL allocation)")
    if n_m:
        problems.append("an unstructured pattern (an N:M pattern fixes each block's sparsity)")
    if method is Method.MAGNITUDE:
        problems.append("a method that reads calibration data (wanda, ria or sparsegpt; not magnitude)")
    return problems


def check_recipe(recipe: Recipe, *, method: Method, mode: Mode, weight_scaling: bool) -> None:
    """Raise PruningInputError naming what ``recipe`` needs that these settings lack."""
    problems = recipe_conflicts(recipe, method=method, mode=mode, weight_scaling=weight_scaling)
    if problems:
        raise PruningInputError(f"recipe {recipe.value} needs " + ", ".join(problems))


__all__ = ["Mode", "Recipe", "check_recipe", "owl_conflicts", "recipe_conflicts"]
