"""Calibration and evaluation data from local files.

Formats:
- ``.txt``: plain text, tokenized with the model's tokenizer.
- ``.jsonl`` with a ``text`` field per line: the texts joined by blank lines, then as ``.txt``.
- ``.jsonl`` with an ``input_ids`` list per line: token ids used as they are, one sample per line, in file
  order; for calibration all lines must have the same length.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from pruning.errors import PruningInputError

logger = logging.getLogger(__name__)


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
        return LoadedData(stream=_tokenize(path, path.read_text(encoding="utf-8"), tokenizer), samples=None)
    if suffix != ".jsonl":
        raise PruningInputError(f"data file {str(path)!r} must be .txt or .jsonl")
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
    if id_lines:
        return LoadedData(stream=None, samples=id_lines)
    if not texts:
        raise PruningInputError(f"data file {str(path)!r} holds no records")
    return LoadedData(stream=_tokenize(path, "\n\n".join(texts), tokenizer), samples=None)


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
    of the text (no token is in two samples), which record-level differential privacy needs: there, one
    sample is one protected record. ``input_ids`` lines are taken as they are: the first ``nsamples``
    lines, all of one length (``seqlen`` does not apply).
    """
    if nsamples < 1:
        raise PruningInputError(f"--nsamples must be at least 1, got {nsamples}")
    path = Path(path)
    data = read_data(path, tokenizer)
    if data.samples is not None:
        if len(data.samples) < nsamples:
            logger.warning(
                "%s has %d input_ids lines; using all of them (--nsamples %d)",
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
        raise PruningInputError(f"--seqlen must be at least 2, got {seqlen}")
    stream = data.stream
    if stream.numel() < seqlen:
        raise PruningInputError(
            f"{path} has {stream.numel()} tokens, fewer than one window of --seqlen {seqlen}"
        )
    _check_vocabulary(path, stream, vocab_size)
    generator = torch.Generator().manual_seed(seed)
    if disjoint:
        chunks = stream.numel() // seqlen
        if nsamples > chunks:
            raise PruningInputError(
                f"{path} holds {chunks} disjoint windows of {seqlen} tokens, fewer than --nsamples {nsamples}"
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
