"""Shared fixtures: tiny locally built models (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tiny import build_tiny_model, build_word_tokenizer


@pytest.fixture
def model_dir(tmp_path: Path) -> Callable[..., Path]:
    """Return a factory that saves a tiny model (with a tokenizer) and returns its directory."""

    def make(architecture: str = "llama", *, name: str | None = None, **sizes: int) -> Path:
        path = tmp_path / (name or f"{architecture}-model")
        build_tiny_model(architecture, **sizes).save_pretrained(path)
        build_word_tokenizer().save_pretrained(path)
        return path

    return make


@pytest.fixture(autouse=True)
def _private_signing_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the long-term report key of commands run by tests out of the user's home directory."""
    monkeypatch.setenv("FEDPRUNE_SIGNING_KEY", str(tmp_path_factory.mktemp("keys") / "signing.key"))
