"""Tiny models of every supported architecture, built locally (no downloads), and calibration data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCHITECTURES = ("llama", "mistral", "qwen2", "opt", "gpt2")
VOCAB = 96
WORDS = [f"w{i}" for i in range(VOCAB - 2)]


def tiny_config(architecture: str, *, hidden: int = 32, layers: int = 2, intermediate: int = 64):
    """Return a tiny transformers config of the given family."""
    import transformers

    if architecture in ("llama", "mistral", "qwen2"):
        cls = {
            "llama": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
        }[architecture]
        return cls(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    if architecture == "opt":
        return transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            ffn_dim=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=hidden,
            dropout=0.0,
            attention_dropout=0.0,
        )
    if architecture == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_inner=intermediate,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=1,
        )
    raise ValueError(architecture)


def build_tiny_model(architecture: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes: int):
    """Return a randomly initialised tiny causal LM in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, **sizes))
    # Larger-than-default random weights make activations (and so Wanda's statistics) far from uniform.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def build_word_tokenizer():
    """Return a whitespace word-level fast tokenizer over the test vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{word: i + 2 for i, word in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")


def random_text(words: int, *, seed: int = 1) -> str:
    """Return text of ``words`` words from the test vocabulary, with a skewed word distribution."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.arange(1, len(WORDS) + 1, dtype=torch.float64).reciprocal()
    picks = torch.multinomial(weights, words, replacement=True, generator=generator)
    return " ".join(WORDS[i] for i in picks.tolist())


def write_input_ids(path: Path, rows: list[list[int]]) -> Path:
    """Write one ``{"input_ids": [...]}`` line per row and return the path."""
    path.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in rows), encoding="utf-8")
    return path


def random_ids(nsamples: int, seqlen: int, *, seed: int = 2) -> torch.Tensor:
    """Return ``[nsamples, seqlen]`` random token ids in the test vocabulary."""
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))
