"""Architecture adapters: where a causal LM keeps its decoder blocks and how its linear sublayers store weights.

All architecture knowledge of the pruning core lives here. Everything else sees a model as a list of
decoder blocks, each holding named linear sublayers whose weights are exposed as ``[out, in]`` matrices,
whatever the module stores (GPT-2's ``Conv1D`` stores ``[in, out]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from pruning.errors import PruningInputError


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """Where the decoder blocks of one model family live, as a dotted attribute path."""

    blocks_path: str


LLAMA_LIKE = DecoderLayout(blocks_path="model.layers")
OPT = DecoderLayout(blocks_path="model.decoder.layers")
GPT2 = DecoderLayout(blocks_path="transformer.h")

# config.model_type -> layout. Adding a family that keeps its blocks elsewhere is one line here.
LAYOUTS: dict[str, DecoderLayout] = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "opt": OPT,
    "gpt2": GPT2,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(LAYOUTS))


def layout_for(model_type: str) -> DecoderLayout:
    """Return the decoder layout of a ``config.model_type``, or raise naming the supported ones."""
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise PruningInputError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the model's decoder blocks in order."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "?"))
    layout = layout_for(model_type)
    module: object = model
    for attribute in layout.blocks_path.split("."):
        module = getattr(module, attribute, None)
        if module is None:
            raise PruningInputError(
                f"model of type {model_type!r} has no {layout.blocks_path!r}; "
                "is it a causal LM (…ForCausalLM) checkpoint?"
            )
    if not isinstance(module, nn.ModuleList):
        raise PruningInputError(f"{layout.blocks_path!r} is not a list of decoder blocks")
    return module


class LinearSublayer:
    """A prunable linear sublayer of a decoder block, seen as an ``[out, in]`` weight matrix."""

    def __init__(self, name: str, module: nn.Module) -> None:
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(f"{name} is a {type(module).__name__}, not a linear layer")
        self.name = name
        self.module = module
        self.transposed = isinstance(module, Conv1D)

    @property
    def in_features(self) -> int:
        """Return the input width (columns of the ``[out, in]`` matrix)."""
        return int(self.module.weight.shape[0 if self.transposed else 1])

    @property
    def out_features(self) -> int:
        """Return the output width (rows of the ``[out, in]`` matrix)."""
        return int(self.module.weight.shape[1 if self.transposed else 0])

    def weight(self) -> torch.Tensor:
        """Return the weight as an ``[out, in]`` view of the stored parameter (no copy)."""
        weight = self.module.weight.data
        return weight.t() if self.transposed else weight

    def set_weight(self, matrix: torch.Tensor) -> None:
        """Overwrite the stored weight from an ``[out, in]`` matrix, keeping dtype and device."""
        self.weight().copy_(matrix.to(dtype=self.module.weight.dtype, device=self.module.weight.device))

    def apply_pruned(self, pruned: torch.Tensor) -> None:
        """Set the weights where ``pruned`` (bool ``[out, in]``) is True to exactly zero."""
        if pruned.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"{self.name}: mask of shape {tuple(pruned.shape)} does not fit weight "
                f"[{self.out_features}, {self.in_features}]"
            )
        self.weight().masked_fill_(pruned.to(self.module.weight.device), 0)


def linear_sublayers(block: nn.Module) -> dict[str, LinearSublayer]:
    """Return the block's linear sublayers by their name inside the block, in module order."""
    return {
        name: LinearSublayer(name, module)
        for name, module in block.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }


def iter_prunable(model: nn.Module) -> Iterator[tuple[int, str, LinearSublayer]]:
    """Yield (block index, sublayer name, sublayer) for every prunable matrix of the model."""
    for index, block in enumerate(decoder_blocks(model)):
        for name, sublayer in linear_sublayers(block).items():
            yield index, name, sublayer


def qualified_name(block_index: int, sublayer_name: str) -> str:
    """Return the stable name of a prunable matrix, e.g. ``blocks.3.self_attn.q_proj``."""
    return f"blocks.{block_index}.{sublayer_name}"


def move_outside_blocks(model: nn.Module, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a decoder block to ``device``.

    These are the embeddings, rotary tables, final norm and head: small next to the blocks, and needed
    to compute what enters the first block.
    """
    in_blocks = {id(module) for module in decoder_blocks(model).modules()}
    for module in model.modules():
        if id(module) in in_blocks:
            continue
        for parameter in module.parameters(recurse=False):
            parameter.data = parameter.data.to(device)
        for name, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buffer.to(device)
