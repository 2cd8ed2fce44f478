"""The training recipe of the embedded demo model and the cache key derived from it.

The recipe is everything that decides what the build produces: which stdlib sources feed the corpus, how
it is sharded, the tokenizer, the architecture and the optimisation schedule. Its hash, together with the
interpreter version and a hash of the stdlib sources that were read, names the cache directory, so a
cached model is never reused for a different recipe or a different standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass

# Bump when the corpus extraction, sharding or file layout changes in a way the recipe fields do not show.
BUILD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DemoRecipe:
    """How to build one demo model; immutable and validated when created."""

    name: str
    # Corpus: every ``module_stride``-th stdlib source file (1 = all of them) feeds the corpus.
    module_stride: int = 1
    min_docstring_chars: int = 24
    n_shards: int = 16
    heldout_fraction: float = 0.1
    # Tokenizer.
    vocab_size: int = 4096
    # Architecture (Llama).
    hidden_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 688
    seq_len: int = 128
    tie_embeddings: bool = True
    # Optimisation: AdamW with linear warm-up and cosine decay to ``min_lr_ratio`` of the peak.
    train_steps: int = 600
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive_ints = (
            "module_stride",
            "n_shards",
            "vocab_size",
            "hidden_size",
            "n_layers",
            "n_heads",
            "intermediate_size",
            "seq_len",
            "train_steps",
            "batch_size",
        )
        for field_name in positive_ints:
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DemoRecipe.{field_name}: must be a positive integer, got {value!r}")
        if not self.name:
            raise ValueError("DemoRecipe.name: must not be empty")
        if self.min_docstring_chars < 0:
            raise ValueError(f"DemoRecipe.min_docstring_chars: must be >= 0, got {self.min_docstring_chars}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"DemoRecipe.heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")
        if self.vocab_size < 300:
            # 256 byte symbols plus the special tokens must fit, with room for merges.
            raise ValueError(f"DemoRecipe.vocab_size: must be at least 300, got {self.vocab_size}")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"DemoRecipe.n_heads: hidden_size {self.hidden_size} is not a multiple of n_heads {self.n_heads}"
            )
        if self.seq_len < 2:
            raise ValueError(f"DemoRecipe.seq_len: must be at least 2, got {self.seq_len}")
        if not self.learning_rate > 0:
            raise ValueError(f"DemoRecipe.learning_rate: must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"DemoRecipe.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_steps < self.train_steps:
            raise ValueError(f"DemoRecipe.warmup_steps: must be in [0, train_steps), got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("DemoRecipe.weight_decay must be >= 0 and DemoRecipe.grad_clip > 0")

    def as_dict(self) -> dict[str, object]:
        """Return the recipe as a JSON-ready dictionary (field name -> value)."""
        return dataclasses.asdict(self)


def recipe_hash(recipe: DemoRecipe, *, source_sha256: str) -> str:
    """Return the 16-hex-digit cache key of ``recipe`` built from stdlib sources hashing to ``source_sha256``.

    The key binds the recipe fields, the build format, the interpreter (implementation and full version:
    the stdlib and hence the corpus differ between versions) and the hash of the source files read.
    """
    payload = {
        "build_format": BUILD_FORMAT_VERSION,
        "recipe": recipe.as_dict(),
        "python": f"{platform.python_implementation()}-{platform.python_version()}",
        "stdlib_sources_sha256": source_sha256,
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


# 4.2 M parameters, 1.64 M training tokens seen (~4 passes). Many small-batch steps at a high learning rate
# without weight decay grow the outlier input channels that make Wanda beat magnitude pruning, as on real LLMs
# (docs/DEMO_MODEL.md, "Why this recipe"); about 6 minutes of training on two idle cores.
DEFAULT = DemoRecipe(
    name="default",
    train_steps=1600,
    batch_size=8,
    learning_rate=4e-3,
    warmup_steps=60,
    weight_decay=0.0,
)

# Seconds to build: a tenth of the stdlib, a toy model; for tests only (its perplexity means nothing).
TINY = DemoRecipe(
    name="tiny",
    module_stride=10,
    n_shards=4,
    heldout_fraction=0.2,
    vocab_size=320,
    hidden_size=32,
    n_layers=2,
    n_heads=2,
    intermediate_size=64,
    seq_len=32,
    train_steps=12,
    batch_size=4,
    learning_rate=3e-3,
    warmup_steps=2,
)
