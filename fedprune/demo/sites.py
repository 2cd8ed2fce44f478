"""The demo's sites: each a local corpus of whole documents drawn from its topic-coherent shards."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fedprune.demo.build import DemoModel, participant_files
from fedprune.demo.corpus import DOCUMENT_SEPARATOR


def site_documents(demo: DemoModel, participants: int, documents: int | None) -> list[list[str]]:
    """Return each site's documents: ``documents`` of them evenly spread over its shards (None: all).

    Sites hold neighbouring shards (non-IID by topic, ``participant_files``); spreading the choice over
    the whole file keeps every topic of the site in its corpus.
    """
    if documents is not None and documents < 1:
        raise ValueError(f"documents must be at least 1, got {documents}")
    sites = []
    for index, path in enumerate(participant_files(demo, participants)):
        texts = [d for d in path.read_text(encoding="utf-8").split(DOCUMENT_SEPARATOR) if d.strip()]
        if documents is None:
            sites.append(texts)
            continue
        if len(texts) < documents:
            raise ValueError(
                f"documents: site {index} holds {len(texts)} documents, fewer than the {documents} asked for"
            )
        sites.append([texts[int(i * len(texts) / documents)] for i in range(documents)])
    return sites


def write_site_files(
    sites: list[list[str]], directory: Path, *, names: Sequence[str] | None = None
) -> list[Path]:
    """Return the paths of ``NAME.jsonl`` written to ``directory``: one document per line (one record).

    ``names`` default to ``site-1`` .. ``site-N``.
    """
    names = [f"site-{i + 1}" for i in range(len(sites))] if names is None else list(names)
    if len(names) != len(sites):
        raise ValueError(f"names: {len(names)} names for {len(sites)} sites")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, texts in zip(names, sites, strict=True):
        path = directory / f"{name}.jsonl"
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
        os.replace(partial, path)
        paths.append(path)
    return paths
