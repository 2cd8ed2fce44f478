"""Building, locating and opening the embedded demo model, and cutting its data for n participants."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

import fedprune.demo.cache as cache
import fedprune.demo.corpus as corpus
import fedprune.demo.training as training
from fedprune.demo.recipe import DEFAULT, DemoRecipe, recipe_hash
from fedprune.demo.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
HELDOUT_DIR = "heldout"
MODEL_DIR = "model"
EVAL_FILE = "eval.txt"
CENTRALIZED_FILE = "centralized.txt"
PSF_LICENSE_FILE = "LICENSE-PSF.txt"


def shard_file_name(index: int) -> str:
    """Return the file name of participant ``index``'s text (``participant-03.txt``)."""
    return f"participant-{index:02d}.txt"


@dataclass(frozen=True)
class DemoModel:
    """A finished demo model build in the cache: its directory and its manifest."""

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: Path) -> DemoModel:
        """Return the build in ``directory``; raises ``FileNotFoundError`` when it is not a finished build."""
        if not cache.is_complete(directory):
            raise FileNotFoundError(f"{directory} is not a finished demo model build")
        manifest = json.loads((directory / cache.MANIFEST_NAME).read_text(encoding="utf-8"))
        return cls(directory=directory, manifest=manifest)

    @property
    def model_dir(self) -> Path:
        """Return the Hugging Face checkpoint directory (model and tokenizer)."""
        return self.directory / MODEL_DIR

    @property
    def n_shards(self) -> int:
        """Return how many participant shards the corpus was split into."""
        return len(self.manifest["shards"])

    @property
    def shard_files(self) -> list[Path]:
        """Return each shard's training text, which is also that participant's calibration data."""
        return [self.directory / SHARDS_DIR / shard_file_name(i) for i in range(self.n_shards)]

    @property
    def heldout_files(self) -> list[Path]:
        """Return each shard's held-out tail."""
        return [self.directory / HELDOUT_DIR / shard_file_name(i) for i in range(self.n_shards)]

    @property
    def eval_file(self) -> Path:
        """Return the evaluation text: the union of all held-out tails."""
        return self.directory / EVAL_FILE

    @property
    def centralized_file(self) -> Path:
        """Return all shards' calibration text pooled (the centralized baseline's data)."""
        return self.directory / CENTRALIZED_FILE

    @property
    def seq_len(self) -> int:
        """Return the sequence length the model was trained with."""
        return int(self.manifest["recipe"]["seq_len"])

    def load_model(self, *, device: str | torch.device = "cpu") -> transformers.PreTrainedModel:
        """Return the dense model in evaluation mode on ``device`` (float32)."""
        from pruning.model_io import transformers_load_lock

        with transformers_load_lock:  # from_pretrained changes torch's process-wide default dtype meanwhile
            model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        # transformers wraps ``to`` in a decorator whose signature mypy misreads.
        model.to(device)  # type: ignore[arg-type]
        return model.eval()

    def load_tokenizer(self) -> transformers.PreTrainedTokenizerBase:
        """Return the model's tokenizer."""
        return transformers.AutoTokenizer.from_pretrained(self.model_dir)


def _resolve(cache_dir: Path | str | None) -> Path:
    return cache.default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def cache_key(recipe: DemoRecipe = DEFAULT) -> str:
    """Return the cache key of ``recipe`` on this interpreter (reads and hashes the stdlib sources)."""
    return recipe_hash(recipe, source_sha256=corpus.sources_sha256(corpus.stdlib_source_files()))


def locate_demo_model(
    recipe: DemoRecipe = DEFAULT, *, cache_dir: Path | str | None = None
) -> DemoModel | None:
    """Return the cached build of ``recipe``, or ``None`` when there is none."""
    directory = cache.model_directory(_resolve(cache_dir), cache_key(recipe))
    return DemoModel.open(directory) if cache.is_complete(directory) else None


def locate_or_build(
    recipe: DemoRecipe = DEFAULT,
    *,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> DemoModel:
    """Return the cached build of ``recipe``, building it first when it is missing."""
    return _build(recipe, _resolve(cache_dir), progress=progress, num_threads=num_threads, rebuild=False)


def build_demo_model(
    recipe: DemoRecipe = DEFAULT,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    *,
    num_threads: int | None = None,
) -> DemoModel:
    """Return a fresh build of ``recipe``, replacing a cached one atomically."""
    return _build(recipe, _resolve(cache_dir), progress=progress, num_threads=num_threads, rebuild=True)


def available_cores() -> int:
    """Return how many CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _build(
    recipe: DemoRecipe, cache_dir: Path, *, progress: bool, num_threads: int | None, rebuild: bool
) -> DemoModel:
    files = corpus.stdlib_source_files()
    source_sha256 = corpus.sources_sha256(files)
    key = recipe_hash(recipe, source_sha256=source_sha256)
    final = cache.model_directory(cache_dir, key)
    if not rebuild and cache.is_complete(final):
        logger.debug("using cached demo model %s", final)
        return DemoModel.open(final)
    with cache.build_lock(cache_dir, key):
        if not rebuild and cache.is_complete(final):  # built by another process while we waited
            return DemoModel.open(final)
        with cache.staging_directory(cache_dir, key) as staging:
            logger.info("building demo model %s (recipe %r) in %s", key, recipe.name, cache_dir)
            threads = num_threads if num_threads is not None else available_cores()
            _build_into(
                staging,
                recipe,
                files,
                key=key,
                source_sha256=source_sha256,
                num_threads=threads,
                progress=progress,
            )
            cache.publish(staging, final)
    logger.info("demo model ready in %s", final)
    return DemoModel.open(final)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _build_into(
    staging: Path,
    recipe: DemoRecipe,
    files: Sequence[Path],
    *,
    key: str,
    source_sha256: str,
    num_threads: int,
    progress: bool,
) -> None:
    documents = corpus.extract_documents(files[:: recipe.module_stride], min_chars=recipe.min_docstring_chars)
    shards = corpus.split_into_shards(
        documents, n_shards=recipe.n_shards, heldout_fraction=recipe.heldout_fraction
    )
    train_texts = [shard.train_text() for shard in shards]
    heldout_texts = [shard.heldout_text() for shard in shards]
    eval_text = corpus.DOCUMENT_SEPARATOR.join(heldout_texts)
    for shard, train_text, heldout_text in zip(shards, train_texts, heldout_texts, strict=True):
        _write_text(staging / SHARDS_DIR / shard_file_name(shard.index), train_text)
        _write_text(staging / HELDOUT_DIR / shard_file_name(shard.index), heldout_text)
    _write_text(staging / EVAL_FILE, eval_text)
    _write_text(staging / CENTRALIZED_FILE, corpus.DOCUMENT_SEPARATOR.join(train_texts))
    # The texts (and the model) derive from Python; the PSF License asks that its notice travel with them.
    license_file = corpus.stdlib_root() / "LICENSE.txt"
    if license_file.is_file():
        shutil.copyfile(license_file, staging / PSF_LICENSE_FILE)

    tokenizer = train_tokenizer(train_texts, vocab_size=recipe.vocab_size)
    backend = tokenizer.backend_tokenizer
    eos_id = tokenizer.eos_token_id
    shard_ids = [torch.tensor(backend.encode(text).ids, dtype=torch.long) for text in train_texts]
    heldout_counts = [len(backend.encode(text).ids) for text in heldout_texts]
    eos = torch.tensor([eos_id], dtype=torch.long)
    train_ids = torch.cat([piece for ids in shard_ids for piece in (ids, eos)])
    eval_ids = torch.tensor(backend.encode(eval_text).ids, dtype=torch.long)

    config = training.model_config(recipe, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id)
    model, report = training.train_language_model(
        config, train_ids, recipe, num_threads=num_threads, progress=progress
    )
    model.save_pretrained(staging / MODEL_DIR)
    tokenizer.save_pretrained(staging / MODEL_DIR)

    started = time.perf_counter()
    dense = measure_perplexity(model, eval_ids, seq_len=recipe.seq_len)
    unigram = training.unigram_perplexity(
        train_ids, eval_ids, vocab_size=recipe.vocab_size, seq_len=recipe.seq_len
    )
    logger.info(
        "eval perplexity: dense model %.2f, unigram %.2f (%.0f s)",
        dense,
        unigram,
        time.perf_counter() - started,
    )

    manifest = {
        "cache_key": key,
        "recipe": recipe.as_dict(),
        "python": f"{platform.python_implementation()}-{platform.python_version()}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "stdlib_sources_sha256": source_sha256,
        "corpus_sha256": _sha256(corpus.DOCUMENT_SEPARATOR.join(train_texts + heldout_texts)),
        "corpus": {
            "source": "docstrings of the Python standard library (PSF License)",
            "stdlib_files": len(files[:: recipe.module_stride]),
            "documents": len(documents),
            "characters": sum(len(document.text) for document in documents),
            "topics": [topic.value for topic in corpus.Topic],
        },
        "shards": [
            {
                "index": shard.index,
                "file": f"{SHARDS_DIR}/{shard_file_name(shard.index)}",
                "heldout_file": f"{HELDOUT_DIR}/{shard_file_name(shard.index)}",
                "topic_chars": shard.topic_chars(),
                "modules": sorted({document.module for document in shard.train}),
                "train_documents": len(shard.train),
                "heldout_documents": len(shard.heldout),
                "train_tokens": int(ids.numel()),
                "heldout_tokens": heldout_count,
                "calibration_windows": int(ids.numel()) // recipe.seq_len,
            }
            for shard, ids, heldout_count in zip(shards, shard_ids, heldout_counts, strict=True)
        ],
        "eval": {
            "file": EVAL_FILE,
            "tokens": int(eval_ids.numel()),
            "windows": int(eval_ids.numel()) // recipe.seq_len,
            "dense_perplexity": dense,
            "unigram_perplexity": unigram,
        },
        "training": {
            "train_tokens": int(train_ids.numel()),
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": report.steps,
            "tokens_seen": report.tokens_seen,
            "seconds": round(report.seconds, 1),
            "threads": report.threads,
            "final_loss": report.final_loss,
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Written last: its presence is what marks the directory as a finished build.
    _write_text(staging / cache.MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def measure_perplexity(model: torch.nn.Module, token_ids: torch.Tensor, *, seq_len: int) -> float:
    """Return the perplexity of ``model`` over non-overlapping ``seq_len`` windows of 1-D ``token_ids`` (CPU)."""
    from pruning.perplexity import perplexity

    result = perplexity(model, token_ids, seqlen=seq_len, device=torch.device("cpu"), batch_size=16)
    return result.perplexity


def participant_files(demo: DemoModel, n_participants: int, *, heldout: bool = False) -> list[Path]:
    """Return ``n_participants`` non-IID text files: the shards merged into contiguous, topic-coherent groups.

    Group ``g`` joins shards ``round(g * S / n)`` to ``round((g + 1) * S / n) - 1`` of the ``S`` shards, so
    with 4 of 16 each participant holds four neighbouring shards (one or two topic areas). With ``n == S``
    the shard files themselves are returned. Merged files are written once into the build directory
    (``participants-NN/``); ``heldout=True`` gives the matching held-out tails instead.
    """
    n_shards = demo.n_shards
    if not 1 <= n_participants <= n_shards:
        raise ValueError(f"n_participants must be between 1 and {n_shards}, got {n_participants}")
    sources = demo.heldout_files if heldout else demo.shard_files
    if n_participants == n_shards:
        return sources
    kind = HELDOUT_DIR if heldout else SHARDS_DIR
    out_dir = demo.directory / f"participants-{n_participants:02d}" / kind
    paths = []
    for group in range(n_participants):
        first = round(group * n_shards / n_participants)
        stop = round((group + 1) * n_shards / n_participants)
        path = out_dir / shard_file_name(group)
        if not path.is_file():
            text = corpus.DOCUMENT_SEPARATOR.join(
                source.read_text(encoding="utf-8") for source in sources[first:stop]
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            # Write then rename: a concurrent reader never sees half a file.
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
        paths.append(path)
    return paths


def participant_document_files(demo: DemoModel, n_participants: int) -> list[Path]:
    """Return the participants' training files as ``.jsonl``, one document (docstring) per line.

    Record-level privacy protects one document; a ``.txt`` file is one document unless it marks its
    boundaries, so the participants' calibration data are handed over with one line per document.
    """
    import json

    paths = []
    for source in participant_files(demo, n_participants):
        path = source.with_suffix(".jsonl")
        if not path.is_file():
            documents = [
                d for d in source.read_text(encoding="utf-8").split(corpus.DOCUMENT_SEPARATOR) if d.strip()
            ]
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
            os.replace(partial, path)
        paths.append(path)
    return paths
