"""The embedded demo model: a small Llama trained on stdlib docstrings, cached, with non-IID shards.

These tests build the TINY recipe (seconds) into a temporary cache; DEFAULT takes minutes and is built by
``fedprune demo-model``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import fedprune.demo
from fedprune.cli import main
from fedprune.demo import (
    DOCUMENT_SEPARATOR,
    TINY,
    DemoModel,
    build_demo_model,
    cache,
    corpus,
    locate_demo_model,
    locate_or_build,
    participant_files,
    recipe_hash,
    training,
)
from fedprune.demo.corpus import Topic


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fedprune-cache")


@pytest.fixture(scope="module")
def demo(cache_dir: Path) -> DemoModel:
    return locate_or_build(TINY, cache_dir=cache_dir, progress=False, num_threads=1)


def _documents(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split(DOCUMENT_SEPARATOR)


def test_build_writes_checkpoint_texts_and_manifest(demo: DemoModel, cache_dir: Path) -> None:
    assert demo.directory.parent == cache_dir
    assert demo.directory.name.startswith("demo-model-")
    assert (demo.model_dir / "model.safetensors").is_file()
    assert len(demo.shard_files) == TINY.n_shards == len(demo.heldout_files)
    for path in [*demo.shard_files, *demo.heldout_files, demo.eval_file, demo.centralized_file]:
        assert path.read_text(encoding="utf-8").strip()
    manifest = json.loads((demo.directory / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"] == dataclasses.asdict(TINY)
    assert manifest["eval"]["dense_perplexity"] > 1 and manifest["eval"]["unigram_perplexity"] > 1
    assert manifest["training"]["seconds"] >= 0
    assert [shard["train_tokens"] > 0 for shard in manifest["shards"]] == [True] * TINY.n_shards


def test_checkpoint_loads_with_plain_transformers(demo: DemoModel) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token == "</s>" and tokenizer.bos_token == "<s>"
    text = demo.eval_file.read_text(encoding="utf-8")[:200]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == text  # byte-level BPE round-trips any text
    logits = model(input_ids=ids[:, : TINY.seq_len]).logits
    assert logits.shape[-1] == TINY.vocab_size


def test_second_call_reuses_the_cache_without_training(
    demo: DemoModel, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(training, "train_language_model", must_not_train)
    again = locate_or_build(TINY, cache_dir=cache_dir, progress=False)
    assert again.directory == demo.directory
    assert again.manifest == demo.manifest
    located = locate_demo_model(TINY, cache_dir=cache_dir)
    assert located is not None and located.directory == demo.directory


def test_eval_text_is_the_union_of_heldout_tails_and_disjoint_from_training(demo: DemoModel) -> None:
    tails = [path.read_text(encoding="utf-8") for path in demo.heldout_files]
    assert demo.eval_file.read_text(encoding="utf-8") == DOCUMENT_SEPARATOR.join(tails)
    training_documents = {doc for path in demo.shard_files for doc in _documents(path)}
    assert not training_documents & set(_documents(demo.eval_file))
    pooled = DOCUMENT_SEPARATOR.join(path.read_text(encoding="utf-8") for path in demo.shard_files)
    assert demo.centralized_file.read_text(encoding="utf-8") == pooled


def test_shards_are_non_iid_by_topic(demo: DemoModel) -> None:
    def distribution(shard: dict[str, object]) -> dict[str, float]:
        chars = shard["topic_chars"]
        assert isinstance(chars, dict)
        total = sum(chars.values())
        return {topic: count / total for topic, count in chars.items()}

    shards = [distribution(shard) for shard in demo.manifest["shards"]]
    dominant = [max(shard, key=shard.__getitem__) for shard in shards]
    assert len(set(dominant)) == len(dominant)  # every shard is led by a different topic
    first, last = shards[0], shards[-1]
    total_variation = 0.5 * sum(abs(first.get(t, 0.0) - last.get(t, 0.0)) for t in {*first, *last})
    assert total_variation > 0.9


def test_participant_files_merge_neighbouring_shards(demo: DemoModel) -> None:
    assert participant_files(demo, TINY.n_shards) == demo.shard_files
    pairs = participant_files(demo, 2)
    assert len(pairs) == 2
    shard_texts = [path.read_text(encoding="utf-8") for path in demo.shard_files]
    assert pairs[0].read_text(encoding="utf-8") == DOCUMENT_SEPARATOR.join(shard_texts[:2])
    assert pairs[1].read_text(encoding="utf-8") == DOCUMENT_SEPARATOR.join(shard_texts[2:])
    assert participant_files(demo, 2) == pairs  # written once, found again
    assert len(participant_files(demo, 3, heldout=True)) == 3
    with pytest.raises(ValueError, match="n_participants"):
        participant_files(demo, TINY.n_shards + 1)


def test_recipe_hash_changes_with_recipe_and_stdlib() -> None:
    key = recipe_hash(TINY, source_sha256="a" * 64)
    assert key == recipe_hash(dataclasses.replace(TINY), source_sha256="a" * 64)
    assert key != recipe_hash(dataclasses.replace(TINY, seed=1), source_sha256="a" * 64)
    assert key != recipe_hash(dataclasses.replace(TINY, n_shards=3), source_sha256="a" * 64)
    assert key != recipe_hash(TINY, source_sha256="b" * 64)


def test_recipe_rejects_bad_fields_naming_them() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        dataclasses.replace(TINY, n_heads=3)
    with pytest.raises(ValueError, match="heldout_fraction"):
        dataclasses.replace(TINY, heldout_fraction=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.seed = 3  # type: ignore[misc]


def test_interrupted_build_leaves_no_complete_looking_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_language_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_demo_model(TINY, tmp_path, False, num_threads=1)
    assert [path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")] == []
    assert locate_demo_model(TINY, cache_dir=tmp_path) is None


def test_unigram_perplexity_scores_the_tokens_the_model_scores() -> None:
    # Add-one counts over vocab {0, 1}: token 0 -> 3, token 1 -> 2, so p(1) = 0.4. Windows of 2 score
    # only their second token: [1, 1] scores one 1, the partial tail [0] scores nothing.
    train_ids = torch.tensor([0, 0, 1])
    eval_ids = torch.tensor([1, 1, 0])
    assert math.isclose(training.unigram_perplexity(train_ids, eval_ids, vocab_size=2, seq_len=2), 2.5)


def test_docstrings_are_read_in_source_order_deduplicated_and_tests_skipped(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "__init__.py").write_text(
        '"""JSON encoder and decoder."""\n'
        "class Decoder:\n"
        '    """Decode JSON documents."""\n'
        "    def decode(self):\n"
        '        """Return the Python object."""\n'
        "def f():\n"
        '    """Decode JSON documents."""\n'
        "def g():\n"
        '    """Tiny."""\n'
    )
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_json.py").write_text('"""Tests that must not be read."""\n')
    files = corpus.stdlib_source_files(tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path in files] == ["json/__init__.py"]
    documents = corpus.extract_documents(files, root=tmp_path, min_chars=8)
    assert [document.text for document in documents] == [
        "JSON encoder and decoder.",
        "Decode JSON documents.",
        "Return the Python object.",
    ]
    assert {(document.module, document.topic) for document in documents} == {("json", Topic.DATA_FORMATS)}


def test_demo_model_command_prints_location_and_perplexities(
    demo: DemoModel, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fedprune.demo, "DEFAULT", TINY)  # the cached tiny build stands in for DEFAULT
    assert main(["demo-model", "--trained", "--cache-dir", str(cache_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["directory"] == str(demo.directory)
    assert summary["dense_perplexity"] == demo.manifest["eval"]["dense_perplexity"]
    assert summary["shipped"] is False
    assert main(["demo-model", "--trained", "--cache-dir", str(cache_dir)]) == 0
    text = capsys.readouterr().out
    assert str(demo.directory) in text and "unigram" in text


def test_demo_model_command_opens_the_shipped_model_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-model", "--cache-dir", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shipped"] is True
    assert Path(summary["directory"]).parent == tmp_path
    assert summary["dense_perplexity"] == pytest.approx(136.12, abs=0.01)


def test_demo_model_command_rejects_a_file_as_cache_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("")
    assert main(["demo-model", "--cache-dir", str(not_a_dir)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_default_recipe_gives_16_shards_and_128_token_windows() -> None:
    assert fedprune.demo.DEFAULT.n_shards == 16
    assert fedprune.demo.DEFAULT.seq_len == 128


def test_a_corpus_too_small_for_the_shard_count_is_refused() -> None:
    documents = [corpus.Document(module="json", topic=Topic.DATA_FORMATS, text="x" * 40)] * 3
    with pytest.raises(ValueError, match="corpus too small"):
        corpus.split_into_shards(documents, n_shards=2, heldout_fraction=0.1)


def test_leftovers_of_killed_builds_are_removed_unless_that_build_is_running(tmp_path: Path) -> None:
    killed = tmp_path / ".demo-model-00000000deadbeef.staging-abc"
    running = tmp_path / ".demo-model-1111111111111111.staging-xyz"
    killed.mkdir()
    running.mkdir()
    with cache.build_lock(tmp_path, "1111111111111111"):
        assert cache.remove_abandoned_builds(tmp_path) == [killed.name]
    assert not killed.exists() and running.exists()
