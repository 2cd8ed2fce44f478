"""The per-matrix sparsity table of a model: what ``sparsity.json`` holds and the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from pruning.adapters import iter_prunable, qualified_name


def sparsity_table(model: nn.Module) -> dict[str, Any]:
    """Return per-matrix, per-block and total sparsity (the fraction of exactly-zero weights) of the prunable
    matrices."""
    matrices = []
    blocks: dict[int, dict[str, Any]] = {}
    zeros_total = weights_total = 0
    for block_index, name, sublayer in iter_prunable(model):
        weight = sublayer.weight()
        zeros = int((weight == 0).sum())
        total = weight.numel()
        matrices.append(
            {
                "name": qualified_name(block_index, name),
                "shape": [sublayer.out_features, sublayer.in_features],
                "zeros": zeros,
                "weights": total,
                "sparsity": zeros / total,
            }
        )
        block = blocks.setdefault(block_index, {"block": block_index, "zeros": 0, "weights": 0})
        block["zeros"] += zeros
        block["weights"] += total
        zeros_total += zeros
        weights_total += total
    for block in blocks.values():
        block["sparsity"] = block["zeros"] / block["weights"]
    return {
        "matrices": matrices,
        "blocks": list(blocks.values()),
        "total": {
            "zeros": zeros_total,
            "weights": weights_total,
            "sparsity": zeros_total / weights_total if weights_total else 0.0,
        },
    }


def write_sparsity_json(table: dict[str, Any], path: str | Path) -> None:
    """Write the sparsity table as indented JSON."""
    Path(path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


def format_sparsity_table(table: dict[str, Any]) -> str:
    """Return the sparsity table as aligned text."""
    width = max([len(row["name"]) for row in table["matrices"]] + [5])
    lines = [f"{'matrix':<{width}}  {'shape':>12}  {'sparsity':>8}"]
    for row in table["matrices"]:
        shape = "x".join(str(s) for s in row["shape"])
        lines.append(f"{row['name']:<{width}}  {shape:>12}  {row['sparsity']:>8.4f}")
    total = table["total"]
    lines.append(f"{'total':<{width}}  {total['weights']:>12}  {total['sparsity']:>8.4f}")
    return "\n".join(lines)
