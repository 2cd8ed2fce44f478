"""Calibration and evaluation data from local files.

Formats:
- ``.txt``: plain text, tokenized with the model's tokenizer.
- ``.jsonl`` with a ``text`` field per line: the texts joined by blank lines, then as ``.txt``.
- ``.jsonl`` with an ``input_ids`` list per line: token ids used as they are, one sample per line, in file
  order; for calibration all lines must have the same length.

Documents (the unit of record-level privacy, :func:`calibration_records`): one ``.jsonl`` line (``text`` or
``input_ids``) is one document; a ``.txt`` file is split into documents at lines that hold only
``<|endoftext|>`` (:data:`DOCUMENT_SEPARATOR`); a ``.txt`` file without such a line is one document.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from pruning.errors import PruningInputError

logger = logging.getLogger(__name__)

DOCUMENT_SEPARATOR = "<|endoftext|>"
"""A line holding only this string separates two documents of a ``.txt`` calibration file."""

MIN_WINDOW_TOKENS = 8
"""A document's last window (or a whole short document) shorter than this is left out: too few tokens to
say anything about the activations, and a one-token window has no attention context at all."""


class Tokenizer(Protocol):
    def __call__(self, text: str, **kwargs: object) -> object: ...


@dataclass(frozen=True)
class LoadedData:
    """A data file read into token ids: either one long stream or a list of fixed samples."""

    stream: torch.Tensor | None
    """1-D token ids of text data (``.txt`` or ``.jsonl`` with ``text``)."""
    samples: list[list[int]] | None
    """Token-id lines of ``.jsonl`` with ``input_ids``."""


def read_data(path: str | Path, tokenizer: Tokenizer | None) -> LoadedData:
    """Return the token ids in a ``.txt`` or ``.jsonl`` data file."""
    path = Path(path)
    if not path.is_file():
        raise PruningInputError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # Document separators are markup, not text: the stream joins the documents by a blank line.
        text = "\n\n".join(_split_txt_documents(path.read_text(encoding="utf-8")))
        return LoadedData(stream=_tokenize(path, text, tokenizer), samples=None)
    if suffix != ".jsonl":
        raise PruningInputError(f"data file {str(path)!r} must be .txt or .jsonl")
    lines = _read_jsonl_lines(path)
    if lines and isinstance(lines[0], list):
        return LoadedData(stream=None, samples=lines)  # type: ignore[arg-type]
    texts: list[str] = lines  # type: ignore[assignment]
    return LoadedData(stream=_tokenize(path, "\n\n".join(texts), tokenizer), samples=None)


def _read_jsonl_lines(path: Path) -> list[str] | list[list[int]]:
    """Return the ``text`` strings or the ``input_ids`` lists of a ``.jsonl`` file (never both)."""
    texts: list[str] = []
    id_lines: list[list[int]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PruningInputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or ("text" not in record and "input_ids" not in record):
                raise PruningInputError(f"{path}:{number}: each line needs a 'text' or an 'input_ids' field")
            if "input_ids" in record:
                ids = record["input_ids"]
                if not isinstance(ids, list) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids
                ):
                    raise PruningInputError(f"{path}:{number}: 'input_ids' must be a list of integers")
                id_lines.append(ids)
            else:
                if not isinstance(record["text"], str):
                    raise PruningInputError(f"{path}:{number}: 'text' must be a string")
                texts.append(record["text"])
            if texts and id_lines:
                raise PruningInputError(f"{path}:{number}: mixes 'text' and 'input_ids' lines")
    if not texts and not id_lines:
        raise PruningInputError(f"data file {str(path)!r} holds no records")
    return id_lines if id_lines else texts


def _tokenize(path: Path, text: str, tokenizer: Tokenizer | None) -> torch.Tensor:
    if tokenizer is None:
        raise PruningInputError(
            f"{path} is text but the model directory has no tokenizer; give .jsonl with 'input_ids' instead"
        )
    if not text.strip():
        raise PruningInputError(f"data file {str(path)!r} is empty")
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)
    return encoded["input_ids"].reshape(-1).to(torch.long)  # type: ignore[index]


def _check_vocabulary(path: Path, ids: torch.Tensor, vocab_size: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise PruningInputError(f"{path}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def calibration_samples(
    path: str | Path,
    tokenizer: Tokenizer | None,
    *,
    nsamples: int,
    seqlen: int,
    seed: int,
    vocab_size: int,
    disjoint: bool = False,
) -> torch.Tensor:
    """Return ``[nsamples, seqlen]`` calibration token ids drawn from a data file.

    Text is cut into ``nsamples`` windows of ``seqlen`` tokens at start positions drawn uniformly with
    ``seed`` (as Wanda draws C4 windows). With ``disjoint`` the windows are distinct non-overlapping chunks
    of the text (no token is in two samples). This is the input of exact statistics; record-level DP
    takes every document instead (:func:`calibration_records`), since a fixed number of drawn windows
    would make its neighbouring relation replace-one. ``input_ids`` lines are taken as they are: the first
    ``nsamples`` lines, all of one length (``seqlen`` does not apply).
    """
    if nsamples < 1:
        raise PruningInputError(f"nsamples must be at least 1, got {nsamples}")
    path = Path(path)
    data = read_data(path, tokenizer)
    if data.samples is not None:
        if len(data.samples) < nsamples:
            logger.warning(
                "%s has %d input_ids lines; using all of them (nsamples %d)",
                path,
                len(data.samples),
                nsamples,
            )
        lines = data.samples[:nsamples]
        lengths = {len(line) for line in lines}
        if len(lengths) > 1:
            raise PruningInputError(
                f"{path}: input_ids lines have different lengths ({', '.join(map(str, sorted(lengths)))}); "
                "calibration samples must all have one length"
            )
        if lengths == {0}:
            raise PruningInputError(f"{path}: input_ids lines are empty")
        samples = torch.tensor(lines, dtype=torch.long)
        _check_vocabulary(path, samples, vocab_size)
        return samples
    assert data.stream is not None
    if seqlen < 2:
        raise PruningInputError(f"seqlen must be at least 2, got {seqlen}")
    stream = data.stream
    if stream.numel() < seqlen:
        raise PruningInputError(
            f"{path} has {stream.numel()} tokens, fewer than one window of seqlen {seqlen}"
        )
    _check_vocabulary(path, stream, vocab_size)
    generator = torch.Generator().manual_seed(seed)
    if disjoint:
        chunks = stream.numel() // seqlen
        if nsamples > chunks:
            raise PruningInputError(
                f"{path} holds {chunks} disjoint windows of {seqlen} tokens, fewer than nsamples {nsamples}"
            )
        picked = torch.randperm(chunks, generator=generator)[:nsamples]
        return stream[: chunks * seqlen].reshape(chunks, seqlen)[picked]
    starts = torch.randint(0, stream.numel() - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([stream[start : start + seqlen] for start in starts.tolist()])


def evaluation_stream(path: str | Path, tokenizer: Tokenizer | None, *, vocab_size: int) -> torch.Tensor:
    """Return the whole data file as one 1-D stream of token ids (``input_ids`` lines concatenated)."""
    path = Path(path)
    data = read_data(path, tokenizer)
    stream = (
        data.stream
        if data.stream is not None
        else torch.tensor([token for line in data.samples or [] for token in line], dtype=torch.long)
    )
    _check_vocabulary(path, stream, vocab_size)
    return stream


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration windows grouped by the record (document) each came from.

    Record-level privacy protects a record: every window of a document is tagged with the document's id,
    so a private aggregator can turn all of them into one bounded contribution. Windows of one record are
    consecutive; they may differ in length (a document's tail, a short document).
    """

    windows: tuple[torch.Tensor, ...]
    """1-D token-id tensors, each at most ``seqlen`` long."""
    record_of_window: tuple[int, ...]
    """For each window, the index of its document in the file (non-decreasing)."""
    documents: int
    """Documents in the file, including those too short to give a window."""

    def __post_init__(self) -> None:
        if len(self.windows) != len(self.record_of_window):
            raise ValueError("every calibration window needs a record id")
        if any(b < a for a, b in zip(self.record_of_window, self.record_of_window[1:], strict=False)):
            raise ValueError("windows of one record must be consecutive (record ids non-decreasing)")

    @property
    def records(self) -> int:
        """Return the number of documents that contribute at least one window."""
        return len(set(self.record_of_window))

    @property
    def tokens(self) -> int:
        """Return the number of tokens over all windows."""
        return sum(int(window.numel()) for window in self.windows)

    @property
    def longest(self) -> int:
        """Return the length of the longest window (0 when there is none)."""
        return max((int(window.numel()) for window in self.windows), default=0)

    def without_record(self, record: int) -> CalibrationSet:
        """Return the set with every window of document ``record`` removed (its neighbour in DP terms)."""
        kept = [(w, r) for w, r in zip(self.windows, self.record_of_window, strict=True) if r != record]
        return CalibrationSet(
            windows=tuple(w for w, _ in kept),
            record_of_window=tuple(r for _, r in kept),
            documents=self.documents - 1,
        )


def as_windows(samples: torch.Tensor | CalibrationSet) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Return the windows and their record ids; each row of a ``[n, seqlen]`` tensor is its own record."""
    if isinstance(samples, CalibrationSet):
        if not samples.windows:
            raise PruningInputError("the calibration set holds no window")
        return list(samples.windows), samples.record_of_window
    if samples.ndim != 2:
        raise PruningInputError(f"calibration samples must be [nsamples, seqlen], got {tuple(samples.shape)}")
    return list(samples), tuple(range(samples.shape[0]))


def read_documents(path: str | Path, tokenizer: Tokenizer | None) -> list[torch.Tensor]:
    """Return the token ids of each document of a data file, in file order (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PruningInputError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = _split_txt_documents(path.read_text(encoding="utf-8"))
        if not any(t.strip() for t in texts):
            raise PruningInputError(f"data file {str(path)!r} is empty")
        return [_tokenize_document(path, t, tokenizer) for t in texts]
    if suffix != ".jsonl":
        raise PruningInputError(f"data file {str(path)!r} must be .txt or .jsonl")
    data = _read_jsonl_lines(path)
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [torch.tensor(ids, dtype=torch.long) for ids in data]
    return [_tokenize_document(path, t, tokenizer) for t in data]  # type: ignore[arg-type]


def _split_txt_documents(text: str) -> list[str]:
    """Return the documents of a ``.txt`` file: the text between lines holding only the separator."""
    documents: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.strip() == DOCUMENT_SEPARATOR:
            documents.append("".join(current).strip("\n"))
            current = []
        else:
            current.append(line)
    documents.append("".join(current).strip("\n"))
    return documents


def _tokenize_document(path: Path, text: str, tokenizer: Tokenizer | None) -> torch.Tensor:
    if not text.strip():
        return torch.zeros(0, dtype=torch.long)
    return _tokenize(path, text, tokenizer)


def document_windows(document: torch.Tensor, *, seqlen: int, max_windows: int | None) -> list[torch.Tensor]:
    """Return a document's disjoint windows of ``seqlen`` tokens (the tail as a shorter one).

    Pieces shorter than :data:`MIN_WINDOW_TOKENS` are left out. With ``max_windows`` only that many,
    evenly spread over the document, are kept: which ones depends on this document alone.
    """
    windows = [
        document[start : start + seqlen]
        for start in range(0, document.numel(), seqlen)
        if document[start : start + seqlen].numel() >= MIN_WINDOW_TOKENS
    ]
    if max_windows is not None and len(windows) > max_windows:
        step = len(windows) / max_windows
        windows = [windows[int(i * step)] for i in range(max_windows)]
    return windows


def calibration_records(
    path: str | Path,
    tokenizer: Tokenizer | None,
    *,
    seqlen: int,
    vocab_size: int,
    max_windows_per_record: int | None = None,
) -> CalibrationSet:
    """Return every document of a data file as calibration windows tagged with the document's id.

    This is the input of record-level DP: every document of the file is a candidate (the private
    aggregator Poisson-samples documents), so no document's presence changes which others are used, and
    the number of windows is not a public constant.
    """
    if seqlen < MIN_WINDOW_TOKENS:
        raise PruningInputError(f"seqlen must be at least {MIN_WINDOW_TOKENS}, got {seqlen}")
    if max_windows_per_record is not None and max_windows_per_record < 1:
        raise PruningInputError(f"max_windows_per_record must be at least 1, got {max_windows_per_record}")
    path = Path(path)
    documents = read_documents(path, tokenizer)
    windows: list[torch.Tensor] = []
    records: list[int] = []
    for index, document in enumerate(documents):
        _check_vocabulary(path, document, vocab_size)
        own = document_windows(document, seqlen=seqlen, max_windows=max_windows_per_record)
        windows.extend(own)
        records.extend([index] * len(own))
    if not windows:
        raise PruningInputError(
            f"{path}: none of its {len(documents)} documents has {MIN_WINDOW_TOKENS} or more tokens"
        )
    calibration = CalibrationSet(
        windows=tuple(windows), record_of_window=tuple(records), documents=len(documents)
    )
    logger.info(
        "%s: %d documents, %d with a window, %d windows (%d tokens)",
        path,
        calibration.documents,
        calibration.records,
        len(windows),
        calibration.tokens,
    )
    return calibration


def pooled(sets: Sequence[torch.Tensor | CalibrationSet]) -> torch.Tensor | CalibrationSet:
    """Return the calibration data of several sites as one (records renumbered so they stay distinct)."""
    if all(isinstance(s, torch.Tensor) for s in sets):
        return torch.cat(list(sets), dim=0)  # type: ignore[arg-type]
    windows: list[torch.Tensor] = []
    records: list[int] = []
    offset = 0
    for s in sets:
        own_windows, own_records = as_windows(s)
        windows.extend(own_windows)
        records.extend(offset + r for r in own_records)
        offset += s.documents if isinstance(s, CalibrationSet) else len(own_windows)
    return CalibrationSet(windows=tuple(windows), record_of_window=tuple(records), documents=offset)
