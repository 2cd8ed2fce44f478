"""The demo model shipped inside the package: fixed weights, their SHA-256 checked before any use.

Training the demo model takes minutes and is not reproducible across machines (thread counts and CPU
kernels change the floating-point sums), so fedprune ships one build of the DEFAULT recipe: its weights in
float16 safetensors, its tokenizer and the corpus-derived texts it needs (each participant shard's training
text and held-out tail, gzip-compressed), with the PSF notice of the source text. Every file's SHA-256 is
pinned in :data:`ASSET_SHA256`, in this source file rather than beside the assets, and checked each time the
model is opened; a corrupted or replaced file is refused naming it. ``open_packaged`` unpacks the assets
once into the cache in the layout of a trained build (float32 weights, so every tool reads an ordinary
checkpoint), and the rest of the demo code uses it like one. ``fedprune demo-model --rebuild`` still trains
the recipe from the standard library on the local machine (``docs/DEMO_MODEL.md``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import fedprune.demo.cache as cache
from fedprune.demo.build import (
    CENTRALIZED_FILE,
    EVAL_FILE,
    HELDOUT_DIR,
    MODEL_DIR,
    PSF_LICENSE_FILE,
    SHARDS_DIR,
    DemoModel,
    shard_file_name,
)
from fedprune.demo.corpus import DOCUMENT_SEPARATOR
from fedprune.errors import CommandError

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().with_name("assets")
MODEL_WEIGHTS = "model.safetensors"
TEXTS_FILE = "texts.json.gz"
ASSET_MANIFEST = "manifest.json"
# Files of the checkpoint copied as they are (the weights are converted to float32 on the way).
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")

# SHA-256 of every shipped file, relative to ASSETS_DIR. Written by ``export_assets`` (which prints them)
# and pinned here by hand, so that a file and its fingerprint cannot be replaced together by accident.
ASSET_SHA256: dict[str, str] = {
    "LICENSE-PSF.txt": "3b2f81fe21d181c499c59a256c8e1968455d6689d269aa85373bfb6af41da3bf",
    "manifest.json": "71a24aafd3799b97817009a6e0e5e5595636a116d2ce6b8e8c24a9a968bae5b2",
    "model/config.json": "761c81deb2bc14dd92011ba15927c9324fdfbc530bf0191298266078e5678019",
    "model/generation_config.json": "d3ec13762e525726fbe691f2f108c849a22b931af47e9131dd7558be4ebc451a",
    "model/model.safetensors": "92f366b277e84bc761b21301e8ac77f40fc099814b37cecc1aff812e8cc15a27",
    "model/tokenizer.json": "9c2baf293c61dcc5a1cbc834d227492a237153f4c936ef39309b2ca2fc81e396",
    "model/tokenizer_config.json": "d9f784ad1d2fa2079b734d2470f1fbff319f6d9d1591c2306451c8f977c43626",
    "texts.json.gz": "1c0a91c4804bc472db5dec1f92440d55ca8b9c3a27f26e7af0dcff14ce13f132",
}


class DemoAssetError(CommandError):
    """A shipped demo asset is missing or does not match its pinned SHA-256 fingerprint."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_fingerprint(expected: dict[str, str] | None = None) -> str:
    """Return the SHA-256 over the pinned file fingerprints: one name for the whole shipped build."""
    pinned = ASSET_SHA256 if expected is None else expected
    payload = json.dumps(pinned, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()


def verify_assets(assets_dir: Path = ASSETS_DIR, *, expected: dict[str, str] | None = None) -> str:
    """Return the shipped build's fingerprint after checking every file's SHA-256; raise DemoAssetError.

    ``expected`` defaults to the fingerprints pinned in this module.
    """
    pinned = ASSET_SHA256 if expected is None else expected
    if not pinned:
        raise DemoAssetError("this fedprune has no pinned demo assets (ASSET_SHA256 is empty)")
    for name, sha256 in sorted(pinned.items()):
        path = assets_dir / name
        if not path.is_file():
            raise DemoAssetError(
                f"demo asset {name} is missing from {assets_dir}: reinstall fedprune, or train the model "
                "locally with `fedprune demo-model --rebuild`"
            )
        actual = _sha256_file(path)
        if actual != sha256:
            raise DemoAssetError(
                f"demo asset {path} is corrupted or was replaced: its SHA-256 is {actual}, fedprune "
                f"expects {sha256}; refusing to use it. Reinstall fedprune, or train the model locally "
                "with `fedprune demo-model --rebuild`"
            )
    return packaged_fingerprint(pinned)


def _materialize(assets_dir: Path, staging: Path, *, fingerprint: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model_dir = staging / MODEL_DIR
    model_dir.mkdir(parents=True)
    for name in _CHECKPOINT_FILES:
        shutil.copyfile(assets_dir / MODEL_DIR / name, model_dir / name)
    # float16 on disk halves the package; float32 in the cache is what every tool expects to load.
    tensors = load_file(str(assets_dir / MODEL_DIR / MODEL_WEIGHTS))
    save_file(
        {name: tensor.to(torch.float32).contiguous() for name, tensor in tensors.items()},
        str(model_dir / MODEL_WEIGHTS),
        metadata={"format": "pt"},
    )
    texts = json.loads(gzip.decompress((assets_dir / TEXTS_FILE).read_bytes()).decode("utf-8"))
    train: list[str] = texts["train"]
    heldout: list[str] = texts["heldout"]
    for index, (train_text, heldout_text) in enumerate(zip(train, heldout, strict=True)):
        for kind, text in ((SHARDS_DIR, train_text), (HELDOUT_DIR, heldout_text)):
            path = staging / kind / shard_file_name(index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    (staging / EVAL_FILE).write_text(DOCUMENT_SEPARATOR.join(heldout), encoding="utf-8")
    (staging / CENTRALIZED_FILE).write_text(DOCUMENT_SEPARATOR.join(train), encoding="utf-8")
    shutil.copyfile(assets_dir / PSF_LICENSE_FILE, staging / PSF_LICENSE_FILE)
    manifest = json.loads((assets_dir / ASSET_MANIFEST).read_text(encoding="utf-8"))
    manifest["packaged"] = {
        **manifest.get("packaged", {}),
        "fingerprint": fingerprint,
        "float32_weights_sha256": _sha256_file(model_dir / MODEL_WEIGHTS),
    }
    # Written last: its presence marks the directory as a finished build.
    (staging / cache.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def packaged_directory(cache_dir: Path, fingerprint: str) -> Path:
    """Return where the shipped build with ``fingerprint`` is unpacked in ``cache_dir``."""
    return cache.model_directory(cache_dir, f"packaged-{fingerprint[:16]}")


def open_packaged(
    *,
    cache_dir: Path | str | None = None,
    assets_dir: Path = ASSETS_DIR,
    expected: dict[str, str] | None = None,
) -> DemoModel:
    """Return the shipped demo model, unpacked in the cache; its fingerprints are checked every time.

    Raises DemoAssetError when a shipped file does not match its pinned SHA-256. An unpacked copy whose
    weights no longer match what was unpacked is unpacked again.
    """
    root = cache.default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    fingerprint = verify_assets(assets_dir, expected=expected)
    final = packaged_directory(root, fingerprint)
    key = final.name.removeprefix("demo-model-")
    if cache.is_complete(final) and _unpacked_intact(final):
        return DemoModel.open(final)
    with cache.build_lock(root, key):
        if cache.is_complete(final) and _unpacked_intact(final):
            return DemoModel.open(final)
        with cache.staging_directory(root, key) as staging:
            logger.info("unpacking the shipped demo model into %s", final)
            _materialize(assets_dir, staging, fingerprint=fingerprint)
            cache.publish(staging, final)
    return DemoModel.open(final)


def _unpacked_intact(directory: Path) -> bool:
    manifest = json.loads((directory / cache.MANIFEST_NAME).read_text(encoding="utf-8"))
    expected = manifest.get("packaged", {}).get("float32_weights_sha256")
    weights = directory / MODEL_DIR / MODEL_WEIGHTS
    if expected is None or not weights.is_file() or _sha256_file(weights) != expected:
        logger.warning("the unpacked demo model in %s was modified; unpacking it again", directory)
        return False
    return True


def export_assets(build: DemoModel, out: Path, *, dense_perplexity: float | None = None) -> dict[str, str]:
    """Return the SHA-256 of each file written to ``out``: ``build`` as shippable assets.

    The weights go to float16; texts are the shards' training texts and held-out tails (gzip, fixed
    header so the bytes are reproducible). ``dense_perplexity`` is the float16 model's measured
    perplexity on the evaluation text, recorded in the manifest (the build's own figure is float32).
    """
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_DIR).mkdir(exist_ok=True)
    for name in _CHECKPOINT_FILES:
        source = build.model_dir / name
        if source.is_file():
            shutil.copyfile(source, out / MODEL_DIR / name)
    tensors = load_file(str(build.model_dir / MODEL_WEIGHTS))
    save_file(
        {name: tensor.to(torch.float16).contiguous() for name, tensor in sorted(tensors.items())},
        str(out / MODEL_DIR / MODEL_WEIGHTS),
        metadata={"format": "pt"},
    )
    texts = {
        "train": [path.read_text(encoding="utf-8") for path in build.shard_files],
        "heldout": [path.read_text(encoding="utf-8") for path in build.heldout_files],
    }
    encoded = json.dumps(texts, ensure_ascii=False).encode("utf-8")
    (out / TEXTS_FILE).write_bytes(gzip.compress(encoded, compresslevel=9, mtime=0))
    shutil.copyfile(build.directory / PSF_LICENSE_FILE, out / PSF_LICENSE_FILE)
    manifest: dict[str, Any] = dict(build.manifest)
    manifest["packaged"] = {
        "source_build": build.directory.name,
        "weights_dtype": "float16",
        "float32_dense_perplexity": build.manifest["eval"]["dense_perplexity"],
    }
    if dense_perplexity is not None:
        manifest["eval"] = {**manifest["eval"], "dense_perplexity": dense_perplexity}
    (out / ASSET_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    names = [f"{MODEL_DIR}/{name}" for name in (*_CHECKPOINT_FILES, MODEL_WEIGHTS)]
    names += [TEXTS_FILE, PSF_LICENSE_FILE, ASSET_MANIFEST]
    return {name: _sha256_file(out / name) for name in names if (out / name).is_file()}
