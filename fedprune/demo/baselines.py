"""What the private federated model is compared with: dense, magnitude, centralized, local-only and the same
federation without privacy.

Every model is scored on the same held-out text (the union of the sites' held-out tails). The baselines
have no privacy layer, on purpose (the models are built by ``fedprune.baselines``, as for ``simulate
--baselines`` and the benchmarks): local-only is what a site gets alone with its own data (nothing leaves
it, so it needs none), and centralized is what pooling every site's documents at one place would give,
which is exactly what the sites cannot do. Centralized and local-only prune with the recipe's method
(Wanda under FedPrLLM, SparseGPT with its reconstructed weights under FedSpaLLM); magnitude uses no data.
"Federated, no privacy" is the demo's federation (same recipe, sites and documents) run by the service's
roles in this process without randomized response and without record-level DP, still under secure
aggregation: the private row minus it is the cost of privacy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

EVAL_BATCH = 16


@dataclasses.dataclass(frozen=True)
class EvaluationText:
    """The held-out token windows every model is scored on."""

    stream: torch.Tensor
    seqlen: int
    windows: int
    total_windows: int


def evaluation_text(
    model_dir: Path, eval_file: Path, *, seqlen: int, max_windows: int | None = None
) -> EvaluationText:
    """Return the evaluation windows of ``eval_file``: all, or ``max_windows`` evenly spread over it."""
    from pruning.data import evaluation_stream
    from pruning.model_io import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    vocab = int(tokenizer.backend_tokenizer.get_vocab_size()) if tokenizer is not None else 0
    stream = evaluation_stream(eval_file, tokenizer, vocab_size=max(vocab, 1))
    total = stream.numel() // seqlen
    windows = stream[: total * seqlen].reshape(total, seqlen)
    if max_windows is not None and max_windows < total:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        chosen = [int(i * total / max_windows) for i in range(max_windows)]
        windows = windows[chosen]
    return EvaluationText(
        stream=windows.reshape(-1), seqlen=seqlen, windows=int(windows.shape[0]), total_windows=total
    )


def perplexity_of(model: nn.Module, text: EvaluationText, *, device: torch.device) -> float:
    """Return the model's perplexity on the evaluation windows."""
    from pruning.perplexity import perplexity

    return perplexity(model, text.stream, seqlen=text.seqlen, device=device, batch_size=EVAL_BATCH).perplexity


@dataclasses.dataclass(frozen=True)
class Baselines:
    """Perplexities of the models the private federated one is compared with."""

    dense: float
    magnitude: float
    centralized: float
    local_only: dict[str, float]
    federated_no_privacy: float
    """The same federation (recipe, sites, documents, threshold rule) run without randomized response and
    without record-level DP, its votes still summed by secure aggregation: the private row minus this one
    is what privacy costs."""

    @property
    def local_only_mean(self) -> float:
        return sum(self.local_only.values()) / len(self.local_only)

    @property
    def local_only_worst(self) -> float:
        return max(self.local_only.values())


def compute_baselines(
    model_dir: Path,
    sites: dict[str, Path],
    text: EvaluationText,
    *,
    sparsity: float,
    device: torch.device,
    method: str = "wanda",
    recipe: str = "fedprllm",
    on_result: Callable[[str, float, float], None] | None = None,
) -> Baselines:
    """Return the baselines' perplexities; ``on_result(name, perplexity, seconds)`` follows each one.

    ``method`` (``wanda`` or ``sparsegpt``) prunes the centralized and local-only models; ``recipe`` is the
    federation's, run once more here without privacy by the service's own roles in this process
    (``fedprune.simulate.simulate_service`` with ``privacy_off()``) on the same documents.
    """
    import tempfile
    import time

    from fedprune.baselines import centralized_model, local_only_models, magnitude_model
    from fedprune.simulate import SimulationSettings, privacy_off, simulate_service
    from pruning.data import calibration_records
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size
    from pruning.recipes import Recipe

    base = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    vocab = vocabulary_size(base)
    pattern = parse_pattern("unstructured", sparsity)
    local_method = Method.parse(method)
    if local_method is Method.MAGNITUDE:
        raise ValueError(
            "method: centralized and local-only need a calibrated method (wanda, ria or sparsegpt)"
        )

    def scored(name: str, build: Callable[[], nn.Module]) -> float:
        started = time.perf_counter()
        value = perplexity_of(build(), text, device=device)
        if on_result is not None:
            on_result(name, value, time.perf_counter() - started)
        return value

    records = {
        name: calibration_records(path, tokenizer, seqlen=text.seqlen, vocab_size=vocab)
        for name, path in sites.items()
    }
    dense = scored("dense", lambda: base)
    magnitude = scored("magnitude", lambda: magnitude_model(base, pattern=pattern, device=device))
    centralized = scored(
        "centralized",
        lambda: centralized_model(
            base, list(records.values()), method=local_method, pattern=pattern, device=device
        ),
    )
    local = {
        name: scored(
            f"local-only {name}",
            lambda own=own: local_only_models(  # type: ignore[misc]
                base, [own], method=local_method, pattern=pattern, device=device
            )[0],
        )
        for name, own in records.items()
    }

    def without_privacy() -> nn.Module:
        settings = SimulationSettings(
            method=local_method, pattern=pattern, seqlen=text.seqlen, recipe=Recipe.parse(recipe)
        )
        with tempfile.TemporaryDirectory(prefix="fedprune-demo-no-privacy-") as scratch:
            return simulate_service(
                model_dir,
                list(sites.values()),
                settings=settings,
                privacy=privacy_off(),
                out=Path(scratch) / "out",
                signing_key=Path(scratch) / "report.key",
                device=str(device),
                participant_samples=list(records.values()),
                progress=False,
                state_dir=Path(scratch) / "state",
            ).model

    federated_no_privacy = scored("federated, no privacy", without_privacy)
    return Baselines(
        dense=dense,
        magnitude=magnitude,
        centralized=centralized,
        local_only=local,
        federated_no_privacy=federated_no_privacy,
    )


def federated_perplexity(checkpoint: Path, text: EvaluationText, *, device: torch.device) -> float:
    """Return the perplexity of the coordinator's pruned checkpoint."""
    from pruning.model_io import load_model

    return perplexity_of(load_model(checkpoint), text, device=device)


def site_names(count: int) -> Sequence[str]:
    """Return the demo's site names: ``site-1`` .. ``site-N``."""
    return [f"site-{i + 1}" for i in range(count)]
