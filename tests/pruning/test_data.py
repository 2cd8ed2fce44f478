"""Calibration files: text windows by seed, disjoint windows, jsonl formats (documents: test_document_unit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruning.data import calibration_samples, evaluation_stream
from pruning.errors import PruningInputError
from tests.tiny import build_word_tokenizer, random_text


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(random_text(400, seed=3), encoding="utf-8")
    return path


def test_text_windows_are_slices_of_the_tokenized_file_chosen_by_seed(text_file: Path) -> None:
    tokenizer = build_word_tokenizer()
    stream = evaluation_stream(text_file, tokenizer, vocab_size=96)
    samples = calibration_samples(text_file, tokenizer, nsamples=5, seqlen=20, seed=1, vocab_size=96)
    assert samples.shape == (5, 20)
    for row in samples:
        assert any(torch.equal(row, stream[s : s + 20]) for s in range(stream.numel() - 19))
    again = calibration_samples(text_file, tokenizer, nsamples=5, seqlen=20, seed=1, vocab_size=96)
    other = calibration_samples(text_file, tokenizer, nsamples=5, seqlen=20, seed=2, vocab_size=96)
    assert torch.equal(samples, again) and not torch.equal(samples, other)


def test_disjoint_windows_share_no_token_position(text_file: Path) -> None:
    tokenizer = build_word_tokenizer()
    stream = evaluation_stream(text_file, tokenizer, vocab_size=96)
    samples = calibration_samples(
        text_file, tokenizer, nsamples=20, seqlen=20, seed=0, vocab_size=96, disjoint=True
    )
    chunks = stream[: (stream.numel() // 20) * 20].reshape(-1, 20)
    picked = [next(i for i in range(chunks.shape[0]) if torch.equal(chunks[i], row)) for row in samples]
    assert len(set(picked)) == 20
    with pytest.raises(PruningInputError, match="disjoint windows"):
        calibration_samples(
            text_file, tokenizer, nsamples=21, seqlen=20, seed=0, vocab_size=96, disjoint=True
        )


def test_jsonl_text_records_are_joined_and_tokenized(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"text": random_text(30, seed=i)}) + "\n" for i in range(4)), encoding="utf-8"
    )
    stream = evaluation_stream(path, build_word_tokenizer(), vocab_size=96)
    assert stream.numel() == 120


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"text": "w1"}\n{"input_ids": [1]}\n', "mixes"),
        ("not json\n", "not valid JSON"),
        ('{"other": 1}\n', "needs a 'text' or an 'input_ids'"),
        ('{"input_ids": [1, "a"]}\n', "list of integers"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PruningInputError, match=message):
        calibration_samples(path, build_word_tokenizer(), nsamples=1, seqlen=2, seed=0, vocab_size=96)
