"""The record of record-level DP is a document: all of its windows move each block release by at most 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from privacy.calibration_dp import DPStatisticAggregator
from pruning.calibration import BlockRunner
from pruning.data import (
    DOCUMENT_SEPARATOR,
    MIN_WINDOW_TOKENS,
    CalibrationSet,
    calibration_records,
    read_documents,
)
from pruning.methods import Method
from tests.tiny import VOCAB, build_tiny_model, build_word_tokenizer, random_text

SEQLEN = 16


class _NoNoise:
    """A stand-in for the CSPRNG that keeps every record and adds no noise (exposes the raw sums)."""

    def bernoulli(self, count: int, rate: float):
        import numpy as np

        return np.ones(count, dtype=bool)

    def standard_normal(self, count: int):
        import numpy as np

        return np.zeros(count)


def _corpus(tmp_path: Path, documents: int = 12) -> Path:
    path = tmp_path / "notes.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(documents):
            # Documents from one to five windows long: a long document must not count more than a short one.
            words = 12 + 14 * (i % 5) + i
            handle.write(json.dumps({"text": random_text(words, seed=100 + i)}) + "\n")
    return path


def _block_sums(model: torch.nn.Module, calibration: CalibrationSet, method: Method) -> list[torch.Tensor]:
    """Return each block's noiseless joint statistic; blocks stay dense, so both corpora share a history."""
    sums = []
    for step in BlockRunner(model, calibration, device=torch.device("cpu")):
        aggregator = DPStatisticAggregator(noise_multiplier=1.0, rng=_NoNoise())  # type: ignore[arg-type]
        step.collect(method.statistic, aggregator)
        sums.append(aggregator.joint_sum())
    return sums


@pytest.mark.parametrize("method", [Method.WANDA, Method.SPARSEGPT])
def test_removing_one_document_moves_each_block_release_by_at_most_one(
    tmp_path: Path, method: Method
) -> None:
    model = build_tiny_model("llama")
    calibration = calibration_records(
        _corpus(tmp_path), build_word_tokenizer(), seqlen=SEQLEN, vocab_size=VOCAB
    )
    longest = max(set(calibration.record_of_window), key=calibration.record_of_window.count)
    assert calibration.record_of_window.count(longest) >= 3  # the removed document spans several windows
    full = _block_sums(model, calibration, method)
    # Wanda's unit vectors have norm exactly 1; a Gram record's upper triangle has norm at most 1.
    floor = 0.99 if method is Method.WANDA else 0.0
    for removed in (longest, calibration.record_of_window[0]):
        neighbour = _block_sums(model, calibration.without_record(removed), method)
        for block, (a, b) in enumerate(zip(full, neighbour, strict=True)):
            moved = float(torch.linalg.vector_norm(a - b))
            assert floor < moved <= 1.0 + 1e-9, f"block {block}: removing document {removed} moved {moved}"


def test_windows_as_records_would_move_a_release_by_more_than_one(tmp_path: Path) -> None:
    """Why the document is the unit: counted window by window, a long document moves the sum by ~sqrt(windows)."""
    model = build_tiny_model("llama")
    calibration = calibration_records(
        _corpus(tmp_path), build_word_tokenizer(), seqlen=SEQLEN, vocab_size=VOCAB
    )
    longest = max(set(calibration.record_of_window), key=calibration.record_of_window.count)
    as_windows = CalibrationSet(
        windows=calibration.windows,
        record_of_window=tuple(range(len(calibration.windows))),
        documents=len(calibration.windows),
    )
    kept = tuple(i for i, r in enumerate(calibration.record_of_window) if r != longest)
    without = CalibrationSet(
        windows=tuple(calibration.windows[i] for i in kept), record_of_window=kept, documents=len(kept)
    )
    a = _block_sums(model, as_windows, Method.WANDA)[0]
    b = _block_sums(model, without, Method.WANDA)[0]
    assert float(torch.linalg.vector_norm(a - b)) > 1.2


def test_every_jsonl_line_is_a_document_with_consecutive_windows(tmp_path: Path) -> None:
    calibration = calibration_records(
        _corpus(tmp_path), build_word_tokenizer(), seqlen=SEQLEN, vocab_size=VOCAB
    )
    assert calibration.documents == 12
    assert list(calibration.record_of_window) == sorted(calibration.record_of_window)
    assert all(MIN_WINDOW_TOKENS <= w.numel() <= SEQLEN for w in calibration.windows)
    capped = calibration_records(
        _corpus(tmp_path), build_word_tokenizer(), seqlen=SEQLEN, vocab_size=VOCAB, max_windows_per_record=2
    )
    assert max(capped.record_of_window.count(r) for r in set(capped.record_of_window)) == 2


def test_txt_documents_are_split_only_at_separator_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    first, second = random_text(20, seed=1), random_text(30, seed=2)
    path.write_text(f"{first}\n\n\n{first}\n{DOCUMENT_SEPARATOR}\n{second}\n", encoding="utf-8")
    documents = read_documents(path, build_word_tokenizer())
    assert len(documents) == 2  # blank lines never split a document
    single = tmp_path / "one.txt"
    single.write_text(f"{first}\n\n\n{second}\n", encoding="utf-8")
    assert len(read_documents(single, build_word_tokenizer())) == 1


def test_a_document_whose_windows_are_not_consecutive_is_refused() -> None:
    aggregator = DPStatisticAggregator(noise_multiplier=1.0, rng=_NoNoise())  # type: ignore[arg-type]
    from pruning.statistics import StatisticKind

    aggregator.begin_block(block_index=0, kind=StatisticKind.COLUMN_SQUARES, sublayers={"fc": 4})
    aggregator.add("fc", torch.ones(4), record=0)
    aggregator.add("fc", torch.ones(4), record=1)
    with pytest.raises(Exception, match="consecutive"):
        aggregator.add("fc", torch.ones(4), record=0)
