"""Loading a local causal-LM checkpoint and saving the pruned one."""

from __future__ import annotations

import json
import logging
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


def load_model(path: str | Path) -> nn.Module:
    """Return the causal LM in a local directory, on the CPU, in the checkpoint's dtype, in eval mode."""
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", local_files_only=True)
    except (OSError, ValueError) as error:
        raise PruningInputError(f"cannot load the model in {str(path)!r}: {error}") from None
    model.eval()
    decoder_blocks(model)
    return model


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
