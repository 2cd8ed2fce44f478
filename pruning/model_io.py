"""Loading a local causal-LM checkpoint and saving the pruned one."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.adapters import decoder_blocks, layout_for
from pruning.data import CalibrationSet
from pruning.errors import PruningInputError

logger = logging.getLogger(__name__)


def check_model_dir(path: str | Path) -> dict[str, Any]:
    """Return the ``config.json`` of a model directory after checking it holds a supported checkpoint."""
    path = Path(path)
    if not path.exists():
        raise PruningInputError(f"model directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise PruningInputError(f"model path {str(path)!r} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PruningInputError(f"{str(path)!r} is not a model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PruningInputError(f"{config_file}: not valid JSON ({error.msg})") from None
    layout_for(str(config.get("model_type", "?")))
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise PruningInputError(f"{str(path)!r} has a config.json but no weights (*.safetensors or *.bin)")
    return config


# transformers builds a model under ``torch.set_default_dtype(<the load's dtype>)`` and restores the previous
# default afterwards. That default is process-wide, so two loads in two threads of one process (``fedprune
# simulate`` runs every site as a thread) interleave: one thread builds its model after the other has
# restored float32, some parameters come out float32 instead of float16, the base-model fingerprint differs
# and the coordinator refuses the Join; and the thread that restores last can leave float16 as the process's
# default. Every load in this code base holds this lock. It cannot stop code outside it from changing the
# default mid-load, so ``load_model`` also checks every tensor's dtype afterwards.
transformers_load_lock = threading.RLock()
"""Held while transformers builds a model, which changes torch's process-wide default dtype."""

# safetensors header dtype codes -> torch dtypes, for the floating-point codes a checkpoint's weights use.
_SAFETENSORS_FLOATS: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
_HEADER_LIMIT = 100_000_000  # safetensors' own bound on the JSON header


def _safetensors_dtypes(file: Path) -> dict[torch.dtype, int]:
    """Return the element count stored per floating-point dtype in one safetensors file (header only)."""
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise PruningInputError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _HEADER_LIMIT:
            raise PruningInputError(f"{file}: safetensors header of {length} bytes exceeds {_HEADER_LIMIT}")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PruningInputError(f"{file}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise PruningInputError(f"{file}: the safetensors header is not a JSON object")
    counts: dict[torch.dtype, int] = {}
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        code, shape = entry.get("dtype"), entry.get("shape")
        if code in _SAFETENSORS_FLOATS and isinstance(shape, list):
            dtype = _SAFETENSORS_FLOATS[code]
            counts[dtype] = counts.get(dtype, 0) + math.prod(int(size) for size in shape)
        elif isinstance(code, str) and code.startswith("F8"):
            raise PruningInputError(f"{file}: tensor {name!r} is stored as {code}, which is not supported")
    return counts


def _pickled_dtypes(file: Path) -> dict[torch.dtype, int]:
    """Return the element count stored per floating-point dtype in one ``*.bin`` file (no data read)."""
    try:
        state = torch.load(file, map_location="meta", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad pickle; all mean the same
        raise PruningInputError(f"{file}: cannot read the checkpoint ({error})") from None
    counts: dict[torch.dtype, int] = {}
    for tensor in state.values() if isinstance(state, dict) else ():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return counts


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """Return the floating-point dtype a model directory's weights are stored in.

    Read from the weight files themselves (safetensors headers, or the ``*.bin`` files without their data
    when there is no safetensors file), never from torch's default dtype. When the files mix floating-point
    dtypes, ``config.json``'s ``dtype`` (or ``torch_dtype``) decides if it is one of them, otherwise the
    dtype that most elements are stored in.
    """
    config = check_model_dir(path)
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    counts: dict[torch.dtype, int] = {}
    for file in files:
        for dtype, count in _safetensors_dtypes(file).items():
            counts[dtype] = counts.get(dtype, 0) + count
    if not files:
        for file in sorted(path.glob("*.bin")):
            for dtype, count in _pickled_dtypes(file).items():
                counts[dtype] = counts.get(dtype, 0) + count
    if not counts:
        raise PruningInputError(f"{str(path)!r}: the weight files hold no floating-point tensor")
    if len(counts) == 1:
        return next(iter(counts))
    declared = config.get("dtype") or config.get("torch_dtype")
    for dtype in counts:
        if declared == str(dtype).removeprefix("torch."):
            return dtype
    return max(counts, key=lambda dtype: counts[dtype])


def load_model(path: str | Path) -> nn.Module:
    """Return the causal LM in a local directory, on the CPU, in the checkpoint's dtype, in eval mode.

    The dtype is the one the weights are stored in (``checkpoint_dtype``), so the base-model fingerprint
    covers the weights as stored. Safe to call from several threads at once (``transformers_load_lock``);
    raises PruningInputError naming the first floating-point tensor that came out in another dtype.
    """
    from transformers import AutoModelForCausalLM

    dtype = checkpoint_dtype(path)
    try:
        with transformers_load_lock:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        raise PruningInputError(f"cannot load the model in {str(path)!r}: {error}") from None
    check_dtype(model, dtype, where=repr(str(path)))
    model.eval()
    decoder_blocks(model)
    return model


def check_dtype(model: nn.Module, dtype: torch.dtype, *, where: str) -> None:
    """Raise PruningInputError naming the first floating-point state-dict tensor not in ``dtype``.

    Modules an architecture keeps in float32 on purpose (transformers' ``_keep_in_fp32_modules``) are
    left out: transformers loads them so whatever the dtype, in every thread alike.
    """
    kept = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    kept |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, tensor in model.state_dict().items():
        if kept and any(part in kept for part in name.split(".")):
            continue
        if tensor.is_floating_point() and tensor.dtype != dtype:
            raise PruningInputError(
                f"the model in {where} loaded {name} as {tensor.dtype}, not the checkpoint's {dtype}: torch's "
                "default dtype changed during the load (torch.set_default_dtype in another thread)"
            )


def load_tokenizer(path: str | Path) -> Any | None:
    """Return the tokenizer saved with a model, or None when the directory has none."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    try:
        if _declares_plain_fast_tokenizer(path):
            # AutoTokenizer substitutes the model family's own tokenizer class for some families (Qwen2),
            # which silently mis-tokenizes a custom tokenizer.json; honour what the checkpoint declares.
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        logger.warning("tokenizer in %s could not be loaded: %s", path, error)
        return None


def _declares_plain_fast_tokenizer(path: Path) -> bool:
    config_file = path / "tokenizer_config.json"
    if not (path / "tokenizer.json").is_file() or not config_file.is_file():
        return False
    try:
        declared = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    except json.JSONDecodeError:
        return False
    return declared in ("TokenizersBackend", "PreTrainedTokenizerFast")


def vocabulary_size(model: nn.Module) -> int:
    """Return the number of token ids the model's input embedding accepts."""
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    return int(embedding.weight.shape[0])


def context_length(model: nn.Module) -> int | None:
    """Return the longest sequence the model's position embeddings allow, when the config says."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if limit else None


def resolve_seqlen(model: nn.Module, requested: int | None, *, default: int = 2048) -> int:
    """Return ``requested`` after checking it fits the context, or ``default`` capped at the context."""
    limit = context_length(model)
    if requested is None:
        return min(default, limit) if limit else default
    if limit is not None and requested > limit:
        raise PruningInputError(f"--seqlen {requested} exceeds the model's context length {limit}")
    return requested


def check_samples_fit(model: nn.Module, samples: torch.Tensor | CalibrationSet) -> None:
    """Raise if calibration samples are longer than the model's context."""
    limit = context_length(model)
    longest = samples.longest if isinstance(samples, CalibrationSet) else samples.shape[-1]
    if limit is not None and longest > limit:
        raise PruningInputError(
            f"calibration samples have {longest} tokens, more than the model's context length {limit}"
        )


def prepare_output_dir(path: str | Path, *, overwrite: bool) -> Path:
    """Return the output directory after checking it is absent, empty, or may be overwritten."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PruningInputError(f"output path {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PruningInputError(f"output directory {str(path)!r} exists and is not empty (use --overwrite)")
    return path


def save_model(model: nn.Module, tokenizer: Any | None, out: str | Path) -> Path:
    """Save a Hugging Face checkpoint (safetensors) and the tokenizer, and return the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(str(out))  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
