"""Training and measuring the demo model: a small Llama trained from scratch on CPU."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from fedprune.demo.recipe import DemoRecipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingReport:
    """What a training run did: steps, tokens, time, the loss at the end."""

    steps: int
    tokens_seen: int
    seconds: float
    threads: int
    final_loss: float


def model_config(recipe: DemoRecipe, *, bos_token_id: int, eos_token_id: int) -> LlamaConfig:
    """Return the Llama configuration the recipe describes."""
    return LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_heads,
        max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=recipe.tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        rms_norm_eps=1e-5,
        use_cache=False,
    )


def _learning_rate(step: int, recipe: DemoRecipe) -> float:
    """Return the learning rate at ``step``: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.train_steps - recipe.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return recipe.learning_rate * (recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine)


def train_language_model(
    config: LlamaConfig,
    train_ids: torch.Tensor,
    recipe: DemoRecipe,
    *,
    num_threads: int,
    progress: bool = True,
) -> tuple[LlamaForCausalLM, TrainingReport]:
    """Return a model trained on random ``seq_len`` windows of the 1-D token stream ``train_ids``, and a report.

    Initialisation and window sampling are seeded by ``recipe.seed`` without touching the caller's global
    torch RNG state; the thread count is restored afterwards.
    """
    if train_ids.ndim != 1 or train_ids.numel() <= recipe.seq_len:
        raise ValueError(
            f"training stream has {train_ids.numel()} tokens; need more than seq_len={recipe.seq_len}"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = LlamaForCausalLM(config)
            generator = torch.Generator().manual_seed(recipe.seed)
            return _run_optimisation(model, train_ids, recipe, generator, num_threads, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run_optimisation(
    model: LlamaForCausalLM,
    train_ids: torch.Tensor,
    recipe: DemoRecipe,
    generator: torch.Generator,
    num_threads: int,
    progress: bool,
) -> tuple[LlamaForCausalLM, TrainingReport]:
    # Norm gains and biases are not decayed, as in the usual LLM recipes.
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    not_decayed = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": recipe.weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
    )
    offsets = torch.arange(recipe.seq_len)
    highest_start = train_ids.numel() - recipe.seq_len
    model.train()
    started = time.perf_counter()
    smoothed_loss = float("nan")
    bar = tqdm(range(recipe.train_steps), desc="training demo model", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, recipe)
        starts = torch.randint(0, highest_start + 1, (recipe.batch_size, 1), generator=generator)
        batch = train_ids[starts + offsets]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        smoothed_loss = value if math.isnan(smoothed_loss) else 0.95 * smoothed_loss + 0.05 * value
        bar.set_postfix(loss=f"{smoothed_loss:.3f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    report = TrainingReport(
        steps=recipe.train_steps,
        tokens_seen=recipe.train_steps * recipe.batch_size * recipe.seq_len,
        seconds=seconds,
        threads=num_threads,
        final_loss=smoothed_loss,
    )
    logger.info("trained %d steps in %.0f s, loss %.3f", report.steps, seconds, smoothed_loss)
    return model, report


def evaluation_windows(token_ids: torch.Tensor, *, seq_len: int) -> torch.Tensor:
    """Return the non-overlapping ``seq_len`` windows of 1-D ``token_ids`` as rows (a partial tail is dropped)."""
    n_windows = token_ids.numel() // seq_len
    if n_windows == 0:
        raise ValueError(f"evaluation text has {token_ids.numel()} tokens, fewer than seq_len={seq_len}")
    return token_ids[: n_windows * seq_len].view(n_windows, seq_len)


def unigram_perplexity(
    train_ids: torch.Tensor, eval_ids: torch.Tensor, *, vocab_size: int, seq_len: int
) -> float:
    """Return the perplexity on ``eval_ids`` of an add-one-smoothed unigram model fitted on ``train_ids``.

    It scores exactly the tokens ``pruning.perplexity.perplexity`` scores (every window position but the first), so
    the two numbers are comparable.
    """
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    scored = evaluation_windows(eval_ids, seq_len=seq_len)[:, 1:].reshape(-1)
    return math.exp(float(-log_probs[scored].mean()))
